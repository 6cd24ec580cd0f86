"""Dense (FCOS-style) target assignment of the probe head over all levels' locations."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["assign_dense_targets", "default_scale_ranges"]


def default_scale_ranges(strides: Sequence[int]) -> list[tuple[float, float]]:
    """Box max-side ranges (input pixels) per level: ``(hi_{l-1}, hi_l]`` with ``hi_l = 8 * stride_l``
    and the last level open-ended. Strides (8,16,32) -> (0,64], (64,128], (128,inf)."""
    his = [8.0 * s for s in strides[:-1]] + [math.inf]
    los = [0.0] + his[:-1]
    return list(zip(los, his))


def _locations(sizes: Sequence[tuple[int, int]], strides: Sequence[int], device, dtype):
    """Centres of all locations of all levels, concatenated level after level (h-major within a level).

    Returns xy [P,2] pixels, stride [P], level [P], row [P], col [P], level height [P], width [P]."""
    xy, st, lv, rows, cols, hs, ws = [], [], [], [], [], [], []
    for l, ((h, w), s) in enumerate(zip(sizes, strides)):
        ii, jj = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        ii, jj = ii.reshape(-1), jj.reshape(-1)
        xy.append(torch.stack([(jj.to(dtype) + 0.5) * s, (ii.to(dtype) + 0.5) * s], 1))
        n = h * w
        st.append(torch.full((n,), float(s), device=device, dtype=dtype))
        lv.append(torch.full((n,), l, device=device, dtype=torch.long))
        rows.append(ii), cols.append(jj)
        hs.append(torch.full((n,), h, device=device, dtype=torch.long))
        ws.append(torch.full((n,), w, device=device, dtype=torch.long))
    cat = lambda t: torch.cat(t, 0)  # noqa: E731
    return cat(xy), cat(st), cat(lv), cat(rows), cat(cols), cat(hs), cat(ws)


def _hw(image_size: int | Sequence[int]) -> tuple[float, float]:
    if isinstance(image_size, (int, float)):
        return float(image_size), float(image_size)
    h, w = image_size
    return float(h), float(w)


def assign_dense_targets(
    boxes: Tensor,
    sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    image_size: int | Sequence[int],
    radius: float = 1.5,
    scale_ranges: Sequence[tuple[float, float]] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Dense (FCOS-style) assignment of one image over all levels' locations.

    boxes [N,4] normalised cxcywh; sizes [(H_l, W_l)]; image_size (h, w) pixels of the network input.
    A location of level l is positive for box n when
      - the box's max side (pixels) lies in level l's range (``default_scale_ranges``), and
      - the location centre lies in the centre region ``|x - cx| < radius * s``, ``|y - cy| < radius * s``
        and inside the box, or it is the cell that contains the box centre (so that every box,
        however small, has at least one positive at its level).
    Ties (a location positive for several boxes) go to the smallest box.
    Returns pos [P] bool, gt index [P] long (valid where pos), ltrb [P,4] in stride units (>= 0).
    """
    device, dtype = boxes.device, torch.float32 if boxes.dtype != torch.float64 else torch.float64
    xy, st, lv, rows, cols, hs, ws = _locations(sizes, strides, device, dtype)
    P, N = xy.shape[0], boxes.shape[0]
    if N == 0:
        return (torch.zeros(P, dtype=torch.bool, device=device), torch.zeros(P, dtype=torch.long, device=device),
                torch.zeros(P, 4, dtype=dtype, device=device))
    H, W = _hw(image_size)
    b = boxes.to(dtype) * torch.tensor([W, H, W, H], device=device, dtype=dtype)
    cx, cy, bw, bh = b.unbind(-1)  # [N]
    x1, y1, x2, y2 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
    ranges = torch.tensor(list(scale_ranges or default_scale_ranges(strides)), device=device, dtype=dtype)
    lo, hi = ranges[lv, 0], ranges[lv, 1]  # [P]
    side = torch.maximum(bw, bh)
    in_range = (side[None] > lo[:, None]) & (side[None] <= hi[:, None])  # [P,N]
    x, y = xy[:, 0:1], xy[:, 1:2]  # [P,1]
    ltrb = torch.stack([x - x1[None], y - y1[None], x2[None] - x, y2[None] - y], -1)  # [P,N,4] pixels
    in_box = ltrb.amin(-1) > 0
    r = radius * st[:, None]
    in_centre = ((x - cx[None]).abs() < r) & ((y - cy[None]).abs() < r)
    ci = torch.minimum(torch.floor(cy[None] / st[:, None]).long().clamp(min=0), hs[:, None] - 1)  # [P,N]
    cj = torch.minimum(torch.floor(cx[None] / st[:, None]).long().clamp(min=0), ws[:, None] - 1)
    centre_cell = (rows[:, None] == ci) & (cols[:, None] == cj)
    pos_pn = in_range & ((in_centre & in_box) | centre_cell)
    area = (bw * bh)[None].expand(P, N)
    cost = torch.where(pos_pn, area, torch.full_like(area, math.inf))
    _, gt = cost.min(1)  # smallest box wins ties
    pos = pos_pn.any(1)
    sel = ltrb[torch.arange(P, device=device), gt] / st[:, None]
    return pos, gt, sel.clamp(min=0)

