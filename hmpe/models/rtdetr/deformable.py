"""Multi-scale deformable attention (Deformable DETR / RT-DETR) in pure PyTorch.

The sampling runs on ``F.grid_sample`` (bilinear, zero padding, ``align_corners=False``), so there is
no custom CUDA op: the module runs on CPU and exports to ONNX. ``ms_deform_attn_naive`` is a slow,
explicit per-point reference used only by the tests.

Shapes (B batch, Q queries, N = sum_l H_l*W_l value tokens, M heads, Dh head dim, L levels, P points):
- value               [B, N, M, Dh]
- sampling_locations  [B, Q, M, L, P, 2]  normalised (x, y) in [0, 1] of each level's map
- attention_weights   [B, Q, M, L, P]      (softmax over L*P per head)
- output              [B, Q, M*Dh]
``spatial_shapes`` is a list of Python ``(h, w)`` ints (static), level order matching ``value``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmpe.models.rtdetr.sampling import SamplerSwitch, grid_sample_gather

__all__ = ["MSDeformableAttention", "ms_deform_attn_core", "ms_deform_attn_naive"]


def ms_deform_attn_core(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    sampler: str = "grid_sample",
) -> Tensor:
    """Deformable attention sampling via ``F.grid_sample`` -> [B, Q, M*Dh].

    ``sampler="gather"`` uses :func:`hmpe.models.rtdetr.sampling.grid_sample_gather` instead (same values,
    no GridSample op in an ONNX export)."""
    B, _, M, Dh = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    value_list = value.split([int(h) * int(w) for h, w in spatial_shapes], dim=1)
    # grid_sample wants coordinates in [-1, 1]; with align_corners=False, -1/+1 are the outer pixel
    # edges, which is exactly the [0, 1] normalised-image convention of the reference boxes.
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        # [B, h*w, M, Dh] -> [B*M, Dh, h, w]
        v = value_list[lvl].permute(0, 2, 3, 1).reshape(B * M, Dh, int(h), int(w))
        # [B, Q, M, P, 2] -> [B*M, Q, P, 2]
        g = grids[:, :, :, lvl].permute(0, 2, 1, 3, 4).flatten(0, 1)
        if sampler == "gather":
            sampled.append(grid_sample_gather(v, g))
        else:
            sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B*M, Dh, Q, L, P] -> [B*M, Dh, Q, L*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    # autocast runs grid_sample in fp32: weights in the samples' dtype keep the product off the
    # slow mixed-dtype path
    w_ = attention_weights.permute(0, 2, 1, 3, 4).reshape(B * M, 1, Q, L * P).to(stacked.dtype)
    out = (stacked * w_).sum(-1)  # [B*M, Dh, Q]
    return out.reshape(B, M * Dh, Q).permute(0, 2, 1)


def ms_deform_attn_naive(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Reference: explicit loops over batch/head/query/level/point with hand-written bilinear
    interpolation (zero outside the map, pixel centres at (i + 0.5) / size). Test use only."""
    B, _, M, Dh = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    starts = [0]
    for h, w in spatial_shapes:
        starts.append(starts[-1] + h * w)
    out = value.new_zeros(B, Q, M, Dh)
    for b in range(B):
        for m in range(M):
            for q in range(Q):
                acc = value.new_zeros(Dh)
                for lvl, (h, w) in enumerate(spatial_shapes):
                    fmap = value[b, starts[lvl] : starts[lvl + 1], m].reshape(h, w, Dh)
                    for p in range(P):
                        # pixel coordinates with centres on integers
                        x = float(sampling_locations[b, q, m, lvl, p, 0]) * w - 0.5
                        y = float(sampling_locations[b, q, m, lvl, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        sample = value.new_zeros(Dh)
                        for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                            for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample = sample + wy * wx * fmap[yy, xx]
                        acc = acc + attention_weights[b, q, m, lvl, p] * sample
                out[b, q, m] = acc
    return out.reshape(B, Q, M * Dh)


class MSDeformableAttention(nn.Module, SamplerSwitch):
    """Multi-scale deformable attention with RT-DETR's parametrisation and initialisation.

    ``reference_points`` is either ``[B, Q, 1|L, 4]`` normalised cxcywh boxes (offsets are scaled by
    the box size: ``offset / num_points * wh * 0.5``, so the learned points stay inside the box at
    init) or ``[B, Q, 1|L, 2]`` normalised points (offsets in pixels of each level).
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.head_dim = embed_dim // num_heads
        self.sampler = "grid_sample"  # or "gather" (hmpe.models.rtdetr.sampling.gather_sampling switches it)
        total = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dim, total * 2)
        self.attention_weights = nn.Linear(embed_dim, total)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start as a fixed star: head m looks in direction 2*pi*m/M, point k at radius k,
        # so the heads cover all directions before any training (Deformable DETR init).
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.reshape(self.num_heads, 1, 1, 2).tile(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).reshape(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,  # [B, Q, D]
        reference_points: Tensor,  # [B, Q, 1|L, 4 or 2]
        value: Tensor,  # [B, N, D]
        spatial_shapes: Sequence[tuple[int, int]],
        value_mask: Tensor | None = None,  # [B, N] (True/1 = keep)
    ) -> Tensor:
        B, Q, _ = query.shape
        N = value.shape[1]
        M, L, P = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != L:
            raise ValueError(f"expected {L} levels, got spatial_shapes {list(spatial_shapes)}")

        value = self.value_proj(value)
        if value_mask is not None:
            value = value * value_mask.to(value.dtype).unsqueeze(-1)
        value = value.reshape(B, N, M, self.head_dim)

        offsets = self.sampling_offsets(query).reshape(B, Q, M, L, P, 2)
        weights = self.attention_weights(query).reshape(B, Q, M, L * P).softmax(-1).reshape(B, Q, M, L, P)

        ref = reference_points[:, :, None, :, None, :]  # [B, Q, 1, 1|L, 1, 2|4]
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (w, h)
            norm = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
            locs = ref + offsets / norm.reshape(1, 1, 1, L, 1, 2)
        elif reference_points.shape[-1] == 4:
            locs = ref[..., :2] + offsets / P * ref[..., 2:] * 0.5
        else:
            raise ValueError(f"reference_points last dim must be 2 or 4, got {reference_points.shape[-1]}")

        extra = {} if self.sampler == "grid_sample" else {"sampler": self.sampler}  # the default call unchanged
        out = ms_deform_attn_core(value, spatial_shapes, locs, weights, **extra)
        return self.output_proj(out)
