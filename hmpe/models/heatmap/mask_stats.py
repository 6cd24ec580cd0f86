"""The mask of eqs. 4 and 6 recomputed from cached maps, and what it keeps and drops.

``HeatmapEmbedding`` mixes and thresholds with :func:`mix_and_mask` (one implementation); the explorer
(``hmpe explore``) calls the same function on the maps it cached for an image when the threshold or the
gate slider moves, so nothing before eq. 4 (backbone, probe, Grad-CAM++) runs again.

Statistics of a mask against the objects of an image (:func:`object_cells`, :func:`mask_statistics`):
- ``background_masked``: the fraction of background cells (no object) whose PE the mask zeroes --
  what the mask is for (eq. 7 silences background positions);
- ``objects_hot``: the fraction of object cells the mask keeps -- what it must not lose.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from hmpe.utils.boxes import box_cxcywh_to_xyxy

__all__ = ["TAU_MODES", "MaskStatsAccumulator", "threshold_mask", "mask_threshold", "straight_through_mask",
           "mix_and_mask", "remask", "object_cells", "mask_statistics", "target_boxes_xyxy", "level_names"]


TAU_MODES = ("absolute", "quantile")


def threshold_mask(h: Tensor, tau: float, mode: str = "absolute") -> Tensor:
    """Eq. 6, same dtype as ``h``, never differentiated. ``h``: [B,1,H,W] (or any [B,...]).

    - ``"absolute"``: ``Mask(i,j) = 1[H_mixed(i,j) > tau]`` (strict); ``tau = 0`` is eq. 6 literally (zero
      exactly where the ReLU'd map is zero);
    - ``"quantile"``: per image, the cells at or below the ``tau``-quantile of ``H_mixed`` are masked: at least
      a fraction ``tau`` of the cells whatever the maps' scale (more where cells tie at the quantile, e.g. the
      ReLU's zeros), the calibration of a threshold on min-max normalised maps (docs/method.md)."""
    h = h.detach()
    return (h > mask_threshold(h, tau, mode)).to(h.dtype)


def mask_threshold(h: Tensor, tau: float, mode: str = "absolute") -> Tensor | float:
    """The value eq. 6 compares ``h`` [B,...] with: ``tau`` itself (``"absolute"``), or per image the
    ``tau``-quantile of ``h`` ([B,1,...,1], a value of the map itself, no gradient) for ``"quantile"``."""
    if mode == "absolute":
        return float(tau)
    if mode != "quantile":
        raise ValueError(f"tau_mode must be one of {TAU_MODES}, got {mode!r}")
    if not 0.0 <= float(tau) < 1.0:
        raise ValueError(f"tau_mode=quantile takes tau in [0, 1) (the fraction of cells masked), got {tau}")
    flat = h.detach().reshape(h.shape[0], -1).float()  # [B, N]
    # torch.quantile(flat, tau, dim=1, interpolation="lower"), the (floor(tau (N-1)) + 1)-th smallest value, as
    # a top-k: ONNX has no quantile operator, TopK exports (N is fixed by the export's input size)
    k = int(float(tau) * (flat.shape[1] - 1)) + 1
    q = torch.topk(flat, k, dim=1, largest=False).values[:, -1]  # [B]
    return q.to(h.dtype).reshape(-1, *([1] * (h.dim() - 1)))


def straight_through_mask(h: Tensor, mask: Tensor, tau: float, mode: str, temperature: float) -> Tensor:
    """``mask`` (eq. 6, hard) in the forward pass, the gradient of ``sigmoid((h - threshold) / temperature)``
    in the backward pass: the same values bit for bit (``soft - soft.detach()`` is exactly zero), but a
    gradient path from the masked position encoding (eq. 7) back to ``h`` and through eq. 4 to the gate.
    ``temperature`` is in units of ``h`` (maps in [0, 1]): cells within a few temperatures of the threshold
    pass gradient, the rest almost none."""
    soft = torch.sigmoid((h - mask_threshold(h, tau, mode)) / float(temperature))
    return mask + (soft - soft.detach()).to(mask.dtype)


def mix_and_mask(h_class: Sequence[Tensor], h_bbox: Sequence[Tensor], lam: Tensor | Sequence[float] | float,
                 tau: float, mode: str = "absolute") -> tuple[list[Tensor], list[Tensor]]:
    """Eq. 4 then eq. 6 per level: ``H_mixed = lam_l H_class + (1 - lam_l) H_bbox``, ``Mask`` by
    :func:`threshold_mask` (``mode``: absolute threshold or per-image quantile).

    h_class, h_bbox: per level maps of one shape each (``[B,1,H_l,W_l]``); lam: one gate value per level
    (``lambda_l = sigmoid(p_l)``, a tensor keeps its gradient) or one float for every level.
    Returns (h_mixed per level, mask per level).
    """
    n = len(h_class)
    if isinstance(lam, (int, float)):
        lam = [float(lam)] * n
    if len(lam) != n:
        raise ValueError(f"{len(lam)} gate values for {n} levels")
    mixed = [lam[l] * hc + (1 - lam[l]) * hb for l, (hc, hb) in enumerate(zip(h_class, h_bbox))]
    return mixed, [threshold_mask(h, tau, mode) for h in mixed]


def remask(out, tau: float, lam: Sequence[float] | float | None = None, mode: str = "absolute"):
    """A :class:`~hmpe.models.heatmap.HeatmapOutput` with ``h_mixed`` and ``mask`` recomputed for another
    threshold ``tau`` and, when given, other gate values ``lam`` (default: the output's own ``gate``).
    ``h_class`` / ``h_bbox`` and everything else are shared with ``out``, so this costs two element-wise ops."""
    lam = out.gate if lam is None else lam
    if isinstance(lam, (int, float)):
        lam = [float(lam)] * out.num_levels
    lam_t = torch.as_tensor(lam, dtype=out.h_class[0].dtype, device=out.h_class[0].device).reshape(-1)
    mixed, mask = mix_and_mask(out.h_class, out.h_bbox, lam_t, tau, mode)
    return dataclasses.replace(out, h_mixed=mixed, mask=mask, gate=lam_t)


def object_cells(boxes_xyxy, image_wh: tuple[float, float], grid_hw: tuple[int, int]) -> np.ndarray:
    """Cells of an ``h x w`` grid laid over a ``W x H`` image that belong to an object: the cells whose centre
    lies inside a box, and each box's centre cell (a box smaller than a cell still owns one, as in the probe's
    dense assignment). boxes: [N,4] xyxy in image pixels. Returns a bool [h,w] array."""
    h, w = int(grid_hw[0]), int(grid_hw[1])
    W, H = float(image_wh[0]), float(image_wh[1])
    cells = np.zeros((h, w), dtype=bool)
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return cells
    sx, sy = w / W, h / H
    cx = (np.arange(w) + 0.5)  # cell centres in grid units
    cy = (np.arange(h) + 0.5)
    for x1, y1, x2, y2 in boxes * np.array([sx, sy, sx, sy]):
        rows = (cy > y1) & (cy < y2)
        cols = (cx > x1) & (cx < x2)
        cells |= rows[:, None] & cols[None, :]
        ci = min(max(int((y1 + y2) / 2), 0), h - 1)
        cj = min(max(int((x1 + x2) / 2), 0), w - 1)
        cells[ci, cj] = True
    return cells


def mask_statistics(mask, objects: np.ndarray) -> dict:
    """What a mask keeps and drops: ``background_masked`` (fraction of non-object cells with Mask = 0),
    ``objects_hot`` (fraction of object cells with Mask = 1), ``hot`` (fraction of all cells with Mask = 1),
    and the cell counts. A fraction is None when it has no cells to count (no objects, or no background).

    mask: [h,w] (any array or tensor, hot where > 0.5); objects: bool [h,w] (:func:`object_cells`)."""
    m = np.asarray(mask.detach().cpu() if isinstance(mask, Tensor) else mask, dtype=np.float32)
    m = m.reshape(m.shape[-2:]) > 0.5
    objects = np.asarray(objects, dtype=bool)
    if objects.shape != m.shape:
        raise ValueError(f"mask {m.shape} and object cells {objects.shape} differ in shape")
    n_obj = int(objects.sum())
    n_bg = int(objects.size - n_obj)
    return {
        "background_masked": float((~m & ~objects).sum() / n_bg) if n_bg else None,
        "objects_hot": float((m & objects).sum() / n_obj) if n_obj else None,
        "hot": float(m.mean()) if m.size else None,
        "cells": int(m.size), "object_cells": n_obj, "background_cells": n_bg,
    }


def target_boxes_xyxy(targets: Sequence[dict], image_hw: tuple[int, int]) -> list[Tensor]:
    """The boxes of dataset targets (cxcywh normalised to the network input) in input pixels, xyxy, per image:
    what :meth:`MaskStatsAccumulator.update` takes."""
    h, w = image_hw
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    return [box_cxcywh_to_xyxy(t["boxes"].float().reshape(-1, 4)) * scale for t in targets]


def level_names(strides: Sequence[int]) -> list[str]:
    """``[8, 16, 32]`` -> ``["S3", "S4", "S5"]``: the names the mask statistics are logged under."""
    return [f"S{int(math.log2(s))}" for s in strides]


class MaskStatsAccumulator:
    """Mask diagnostics over a dataset, per level: the fraction of background cells masked and of object
    cells kept hot, pooled over all images' cells (images without objects count for the background only).

    ``update(masks, boxes_xyxy, image_hw)`` per batch: masks per level ``[B,1,H_l,W_l]``, boxes per image in
    network-input pixels; ``summary(level_names)`` -> ``{"mask_bg_masked/<level>": f, "mask_obj_hot/<level>": f}``
    (a fraction is absent when no cell of its kind was seen)."""

    def __init__(self):
        self.counts: dict[int, np.ndarray] = {}  # level -> [bg masked, bg cells, obj hot, obj cells]

    def update(self, masks: Sequence[Tensor], boxes_xyxy: Sequence, image_hw: tuple[int, int]) -> None:
        for level, m in enumerate(masks):
            hot = m.detach().float().cpu().numpy().reshape(m.shape[0], *m.shape[-2:]) > 0.5
            acc = self.counts.setdefault(level, np.zeros(4, dtype=np.int64))
            for b, boxes in enumerate(boxes_xyxy):
                obj = object_cells(boxes, (image_hw[1], image_hw[0]), hot.shape[-2:])
                acc += [int((~hot[b] & ~obj).sum()), int((~obj).sum()), int((hot[b] & obj).sum()), int(obj.sum())]

    def summary(self, level_names: Sequence[str] | None = None) -> dict[str, float]:
        out = {}
        for level, (bg_masked, bg, obj_hot, obj) in sorted(self.counts.items()):
            name = level_names[level] if level_names is not None else f"L{level}"
            if bg:
                out[f"mask_bg_masked/{name}"] = float(bg_masked / bg)
            if obj:
                out[f"mask_obj_hot/{name}"] = float(obj_hot / obj)
        return out
