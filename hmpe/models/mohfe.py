"""MOHFE: Multi-scale ObjectBox-Heatmap Fusion Encoder (paper sec. 3.2.1, eq. 5; docs/method.md).

Per selected level ``l`` with projected features ``X_l [B,D,H_l,W_l]`` and the (detached, [0,1])
heatmaps of :class:`hmpe.models.heatmap.HeatmapOutput`::

    E_class = W_c^l (X_l * H_class_l)          1x1 conv D -> D/2 (per-token linear)
    E_bbox  = W_b^l (X_l * H_bbox_l)           1x1 conv D -> D/2
    E_l     = [E_class || E_bbox]              D channels                                (eq. 5)

and the embedding enters the hybrid encoder in one of two ways:

- at an AIFI level (``encoder.use_encoder_idx``, S5 by default) through ``HybridEncoder.encode``'s
  ``embeds`` hook: ``Q = W_Q (E + PE')``, ``K = W_K (E + PE')``, ``V = W_V E`` (eq. 5 with DETR's
  position on queries and keys; ``PE' = Mask * PE``, eq. 7), FFN and residuals on ``X``;
- at every other selected level (S3, S4: no attention there) it is added to the features before
  CCFM, ``X_l <- X_l + E_l`` ("fusion through heatmap embeddings at various scales").

``levels`` (config ``mohfe.levels``) selects the levels; a level not listed is the baseline's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["HeatmapEmbeddingProjection", "MOHFE", "parse_levels"]


def parse_levels(levels: Sequence[int | str] | None, num_levels: int) -> list[int]:
    """Level indices (0-based, 0 = S3) from ints or names ``"S3"``, ``"S4"``, ``"S5"``; None = all."""
    if levels is None:
        return list(range(num_levels))
    out = []
    for lv in levels:
        if isinstance(lv, str):
            name = lv.strip().upper()
            if not (name.startswith("S") and name[1:].isdigit()):
                raise ValueError(f"mohfe level {lv!r}: use 0-based indices or names S3, S4, S5")
            idx = int(name[1:]) - 3
        else:
            idx = int(lv)
        if not 0 <= idx < num_levels:
            raise ValueError(f"mohfe level {lv!r} out of range for {num_levels} levels")
        out.append(idx)
    return sorted(set(out))


class HeatmapEmbeddingProjection(nn.Module):
    """Eq. 5's embeddings: ``E_l = [W_c^l (X_l * H_class_l) || W_b^l (X_l * H_bbox_l)]`` at ``levels``.

    ``W_c^l`` and ``W_b^l`` are 1x1 convs ``D -> D/2`` with bias, one pair per level (the levels'
    statistics differ; 2 x D x D/2 parameters each). Module names: ``w_class.<l>``, ``w_bbox.<l>``.
    ``forward(feats, h_class, h_bbox) -> list`` of ``[B,D,H_l,W_l]`` (None at levels not selected).
    """

    def __init__(self, dim: int, levels: Sequence[int], num_levels: int = 3):
        super().__init__()
        if dim % 2:
            raise ValueError(f"hidden_dim must be even for E_class || E_bbox (D/2 each), got {dim}")
        self.dim, self.num_levels = dim, num_levels
        self.levels = parse_levels(levels, num_levels)
        self.w_class = nn.ModuleDict({str(l): nn.Conv2d(dim, dim // 2, 1) for l in self.levels})
        self.w_bbox = nn.ModuleDict({str(l): nn.Conv2d(dim, dim // 2, 1) for l in self.levels})

    def embed(self, level: int, x: Tensor, h_class: Tensor, h_bbox: Tensor) -> Tensor:
        """x [B,D,H,W], h_* [B,1,H,W] -> E [B,D,H,W]."""
        e_cls = self.w_class[str(level)](x * h_class.to(x.dtype))
        e_box = self.w_bbox[str(level)](x * h_bbox.to(x.dtype))
        return torch.cat((e_cls, e_box), 1)

    def forward(self, feats: Sequence[Tensor], h_class: Sequence[Tensor], h_bbox: Sequence[Tensor]
                ) -> list[Tensor | None]:
        if len(feats) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels, got {len(feats)}")
        return [self.embed(l, feats[l], h_class[l], h_bbox[l]) if l in self.levels else None
                for l in range(self.num_levels)]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, levels={self.levels}"


class MOHFE(nn.Module):
    """Heatmap-embedding fusion into the hybrid encoder (see the module docstring).

    ``forward(feats, heat) -> (feats', embeds)``: ``feats'`` are the projected maps with ``E_l`` added
    at the selected non-attention levels; ``embeds`` (per level, None elsewhere) go to
    ``HybridEncoder.encode(..., embeds=embeds)`` for the selected attention levels.
    ``attention_levels``: the levels where the encoder runs AIFI (``use_encoder_idx`` when it has
    layers); a selected attention level gets the Q/K/V embedding, not the addition.
    """

    def __init__(self, dim: int, levels: Sequence[int | str] | None = None, num_levels: int = 3,
                 attention_levels: Sequence[int] = (2,)):
        super().__init__()
        self.levels = parse_levels(levels, num_levels)
        self.attention_levels = sorted(int(l) for l in attention_levels)
        self.num_levels = num_levels
        self.embed = HeatmapEmbeddingProjection(dim, self.levels, num_levels)

    def forward(self, feats: Sequence[Tensor], heat) -> tuple[list[Tensor], list[Tensor | None]]:
        if heat is None:
            raise ValueError("MOHFE needs the heatmap embedding's output (enable `heatmap` in the model config)")
        emb = self.embed(feats, heat.h_class, heat.h_bbox)
        out = list(feats)
        embeds: list[Tensor | None] = [None] * self.num_levels
        for l, e in enumerate(emb):
            if e is None:
                continue
            if l in self.attention_levels:
                embeds[l] = e  # Q = W_Q(E + PE'), K = W_K(E + PE'), V = W_V E; residual on X
            else:
                out[l] = feats[l] + e  # fusion before CCFM
        return out, embeds

    def extra_repr(self) -> str:
        return f"levels={self.levels}, attention_levels={self.attention_levels}"
