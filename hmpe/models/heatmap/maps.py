"""Normalisation, resizing and fusion of the per-level heatmaps, and the mask filter (eqs. 4, 6).

The masked position encoding (eq. 7) is :func:`hmpe.models.rtdetr.position.masked_position_encoding`, the one
the hybrid encoder applies.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from hmpe.models.heatmap.mask_stats import TAU_MODES, straight_through_mask, threshold_mask

__all__ = ["MaskFilter", "fuse_levels", "minmax_per_image", "resize_map"]


def minmax_per_image(maps: Sequence[Tensor], eps: float = 1e-12) -> list[Tensor]:
    """Min-max normalise [B,1,H_l,W_l] maps to [0,1] per image, jointly over the levels."""
    lo = torch.stack([m.amin((1, 2, 3)) for m in maps], 0).amin(0)[:, None, None, None]
    hi = torch.stack([m.amax((1, 2, 3)) for m in maps], 0).amax(0)[:, None, None, None]
    den = (hi - lo).clamp(min=eps)
    return [(m - lo) / den for m in maps]


def resize_map(m: Tensor, size: Sequence[int]) -> Tensor:
    """Resize [B,1,h,w] to ``size``: max pooling when shrinking (a one-cell hot spot of a small object
    survives), bilinear (align_corners=False) when enlarging."""
    size = (int(size[0]), int(size[1]))
    if tuple(m.shape[-2:]) == size:
        return m
    if size[0] <= m.shape[-2] and size[1] <= m.shape[-1]:
        h, w = int(m.shape[-2]), int(m.shape[-1])  # Python ints: static kernel sizes in a trace
        kh, kw = h // size[0], w // size[1]
        if kh * size[0] == h and kw * size[1] == w:
            # whole factors (strides 8/16/32): the same bins as adaptive pooling, and an ONNX export with a
            # dynamic batch axis works (adaptive_max_pool2d's exporter needs fully static input shapes)
            return Fn.max_pool2d(m, (kh, kw))
        return Fn.adaptive_max_pool2d(m, size)
    return Fn.interpolate(m, size=size, mode="bilinear", align_corners=False)


def fuse_levels(maps: Sequence[Tensor], mode: str = "max") -> list[Tensor]:
    """"Three upsampled masks": combine the per-level maps [B,1,H_l,W_l] (finest level first).

    ``"max"``: every level's map resized to every level's H_l x W_l, fused by per-pixel max;
    ``"down"``: only finer levels are max-pooled into coarser ones (a level keeps its own sharp map and
    also shows every smaller object); ``"none"``: each level keeps its own map.
    """
    if mode == "none":
        return list(maps)
    if mode not in ("max", "down"):
        raise ValueError(f"fuse mode must be 'max', 'down' or 'none', got {mode!r}")
    out = []
    for l, target in enumerate(maps):
        size = target.shape[-2:]
        fused = target
        for m in (maps if mode == "max" else maps[:l]):
            if m is not target:
                fused = torch.maximum(fused, resize_map(m, size))
        out.append(fused)
    return out


MASK_GRADS = ("none", "ste")


class MaskFilter(nn.Module):
    """Eq. 6: ``Mask(i,j) = 1[H_mixed(i,j) > tau]`` (tau = 0 is eq. 6 literally), or with
    ``mode="quantile"`` the cells at or below the per-image tau-quantile masked
    (:func:`~hmpe.models.heatmap.mask_stats.threshold_mask`).

    ``grad``: ``"none"`` (the mask is a constant of the backward pass) or ``"ste"`` (in training, a straight-through
    estimator: the same hard mask forward, the gradient of a sigmoid of width ``temperature`` around the threshold
    backward, :func:`~hmpe.models.heatmap.mask_stats.straight_through_mask`), which gives the gate of eq. 4 a gradient
    from the masked position encoding."""

    def __init__(self, tau: float = 0.05, mode: str = "absolute", grad: str = "none", temperature: float = 0.05):
        super().__init__()
        if mode not in TAU_MODES:
            raise ValueError(f"tau_mode must be one of {TAU_MODES}, got {mode!r}")
        if mode == "quantile" and not 0.0 <= float(tau) < 1.0:
            raise ValueError(f"tau_mode=quantile takes tau in [0, 1) (the fraction of cells masked), got {tau}")
        if grad not in MASK_GRADS:
            raise ValueError(f"mask_grad must be one of {MASK_GRADS}, got {grad!r}")
        if not float(temperature) > 0:
            raise ValueError(f"mask_grad_temperature must be > 0, got {temperature}")
        self.tau, self.mode, self.grad, self.temperature = float(tau), mode, grad, float(temperature)

    def forward(self, h: Tensor) -> Tensor:
        return self.with_grad(h, threshold_mask(h, self.tau, self.mode))

    def with_grad(self, h: Tensor, mask: Tensor) -> Tensor:
        """``mask`` of ``h`` with the straight-through gradient in training (``grad="ste"``), else as it is."""
        if self.grad == "ste" and self.training and h.requires_grad:
            return straight_through_mask(h, mask, self.tau, self.mode, self.temperature)
        return mask

    def extra_repr(self) -> str:
        return f"tau={self.tau}, mode={self.mode!r}, grad={self.grad!r}, temperature={self.temperature}"
