"""Gather-based bilinear sampling: ``F.grid_sample`` without the GridSample operator.

Some ONNX runtimes (older TensorRT, several NPU / mobile runtimes, opset < 16 consumers) have no
``GridSample``. :func:`grid_sample_gather` computes exactly what
``F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)`` computes, from
``floor``, one ``GatherElements`` per bilinear corner and arithmetic, which every runtime supports.

Switching is a per-module flag, not global state: modules that sample (``MSDeformableAttention`` of the
decoder, ``SnakeConv`` of LSConv/DSConv) are :class:`SamplerSwitch` es and carry a ``sampler`` attribute;
:func:`gather_sampling` is a
context manager that sets it to ``"gather"`` on every such module of one model and restores the
previous values on exit (also on an exception), so nothing leaks to other models or later calls.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SamplerSwitch", "grid_sample_gather", "gather_sampling", "sampling_modules"]


class SamplerSwitch:
    """Mixin of the modules that sample bilinearly: their ``sampler`` attribute is ``"grid_sample"``
    (``F.grid_sample``) or ``"gather"`` (:func:`grid_sample_gather`), which :func:`gather_sampling` switches."""

    sampler: str


def grid_sample_gather(x: Tensor, grid: Tensor) -> Tensor:
    """Bilinear sampling of ``x [N,C,H,W]`` at ``grid [N,Ho,Wo,2]`` ((x, y) in [-1, 1]) -> ``[N,C,Ho,Wo]``.

    Same values (up to float rounding) and gradients as ``F.grid_sample(..., mode="bilinear",
    padding_mode="zeros", align_corners=False)``: ``-1`` / ``+1`` are the outer pixel edges, pixel
    ``i``'s centre is at ``(2i + 1) / size - 1``, samples outside the map read zeros.

    Implementation: the map is zero-padded by one pixel on every side, so every corner that falls
    outside the image is clamped onto the zero border instead of being masked; each of the four
    corners is one ``gather`` over the flattened padded map.
    """
    N, C, H, W = x.shape
    _, Ho, Wo, _ = grid.shape
    # pixel coordinates (centres on integers), shifted by +1 for the zero border
    px = ((grid[..., 0] + 1) * W - 1) * 0.5 + 1
    py = ((grid[..., 1] + 1) * H - 1) * 0.5 + 1
    x0f, y0f = torch.floor(px), torch.floor(py)
    fx, fy = (px - x0f).to(x.dtype), (py - y0f).to(x.dtype)
    Wp, Hp = W + 2, H + 2
    # clamp: anything beyond the border lands on a zero pixel of the padding (exact: the padding is 1
    # pixel wide and a bilinear footprint is 2 pixels, so a clamped corner always reads 0)
    x0 = x0f.clamp(0, Wp - 1).to(torch.int64)
    x1 = (x0f + 1).clamp(0, Wp - 1).to(torch.int64)
    y0 = y0f.clamp(0, Hp - 1).to(torch.int64)
    y1 = (y0f + 1).clamp(0, Hp - 1).to(torch.int64)
    flat = F.pad(x, (1, 1, 1, 1)).reshape(N, C, Hp * Wp)

    def corner(yi: Tensor, xi: Tensor) -> Tensor:
        idx = (yi * Wp + xi).reshape(N, 1, Ho * Wo).expand(N, C, Ho * Wo)
        return flat.gather(2, idx).reshape(N, C, Ho, Wo)

    fx, fy = fx.unsqueeze(1), fy.unsqueeze(1)  # [N,1,Ho,Wo]
    top = corner(y0, x0) * (1 - fx) + corner(y0, x1) * fx
    bottom = corner(y1, x0) * (1 - fx) + corner(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def sampling_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that carry a ``sampler`` switch ("grid_sample" | "gather")."""
    return [m for m in model.modules() if isinstance(m, SamplerSwitch)]


@contextmanager
def gather_sampling(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block every sampling module of ``model`` uses gather-based sampling (no GridSample
    op in a trace / ONNX export); the previous settings come back on exit. ``enabled=False`` is a no-op."""
    mods = sampling_modules(model) if enabled else []
    saved = [m.sampler for m in mods]
    try:
        for m in mods:
            m.sampler = "gather"
        yield model
    finally:
        for m, s in zip(mods, saved):
            m.sampler = s
