"""HIDQ: HeatMap-Induced high-quality Decoder Queries (paper sec. 3.2.2, eqs. 8-9; docs/method.md).

``HeatmapQuerySelector`` replaces RT-DETR's score-based query selection inside ``RTDETRDecoder``
(``RTDETRDecoder(query_selector=HeatmapQuerySelector(...))``); it reads ``H_mixed`` from the
decoder's ``extra`` argument (``extra["h_mixed"]``: per level ``[B,1,H_l,W_l]``, as
:class:`hmpe.models.heatmap.HeatmapOutput` gives it)::

    h      = H_mixed of all levels, flattened h-major and concatenated   [B,N]   (same order as memory)
    score  = h                     (score="heat")   (+ tie_break * sigmoid(max_c probe logit))
           | h * sigmoid(max_c logit)  (score="heat*cls", encoder head)    invalid anchors -> -inf
    index  = top-K tokens by score                                          K = min(num_queries, N)
    E_mixed = W_m (memory * h)         at those tokens (eq. 8's E_mixed)
    Q_dec   = W'_Q E_mixed             content queries (eq. 8)
    ref     = encoder head's anchors + deltas at those tokens, detached (RT-DETR)
    enc_outputs = encoder head's logits / boxes at those tokens (for the encoder loss)
    (score="heat": the per-token encoder head runs on those K tokens only, not on all N)

Then the decoder's deformable cross-attention to the memory is eq. 9. These are the only matching
queries; the denoising group is prepended by the decoder in training.

Gradients: ``Q_dec`` is not detached, so the decoder losses reach ``W'_Q``, ``W_m`` and, through
``h`` (which keeps the graph of ``H_mixed = lambda H_class + (1-lambda) H_bbox``), the heatmap gate.
``memory`` is detached inside ``E_mixed`` by default (``detach_memory``), as RT-DETR detaches its
selected content: the encoder learns through the encoder loss and the cross-attention values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hmpe.models.rtdetr.common import gather_tokens
from hmpe.models.rtdetr.query_selection import QuerySelector

__all__ = ["HeatmapQuerySelector", "flatten_heatmap", "SCORES"]

SCORES = ("heat", "heat*cls")


def flatten_heatmap(maps: Sequence[Tensor] | Tensor) -> Tensor:
    """Per-level maps ``[B,1,H_l,W_l]`` -> ``[B,N]`` (levels concatenated, h-major within a level, the
    order of the decoder's memory). A ``[B,N]`` or ``[B,N,1]`` tensor passes through."""
    if isinstance(maps, Tensor):
        return maps.reshape(maps.shape[0], -1)
    return torch.cat([m.flatten(1) for m in maps], 1)


class HeatmapQuerySelector(QuerySelector):
    """Top-K tokens by ``H_mixed`` -> content ``W'_Q W_m (memory * H_mixed)``, encoder-head references.

    Args:
        hidden_dim, num_classes, num_queries: as :class:`hmpe.models.rtdetr.query_selection.QuerySelector`.
        score: ``"heat"`` (H_mixed alone, eq. 8) or ``"heat*cls"`` (H_mixed x the encoder head's
            class confidence ``sigmoid(max_c logit)``).
        tie_break: with ``score="heat"``, ``score = h + tie_break * sigmoid(max_c probe logit)`` when
            ``extra["probe_logits"]`` is given (the heatmap probe's dense class logits, per level
            ``[B,C,H_l,W_l]``): tokens of equal heat (the exact zeros of a ReLU heatmap, the plateaus that
            max-pooling makes) are ordered by the probe's class confidence instead of by token index.
            Heat differences larger than ``tie_break`` are never reordered. ``0`` disables it.
        detach_memory: detach the memory inside ``E_mixed`` (default; see the module docstring).

    With ``score="heat"`` the encoder output head runs on the K selected tokens only (it is a per-token
    head, so the values are those of the dense head at those tokens): the selection needs no dense
    class scores, which takes the encoder head's N-token cost out of the decoder. ``"heat*cls"`` needs
    the dense class logits: the projection and class head run on all N tokens, the box MLP (the larger
    part) on the K selected ones.

    Parameters: ``head`` (the encoder output head, same names as the baseline selector's),
    ``mix_proj`` (``W_m``, Linear D -> D) and ``query_proj`` (``W'_Q``, Linear D -> D).
    """

    def __init__(self, hidden_dim: int, num_classes: int, num_queries: int, score: str = "heat",
                 tie_break: float = 1e-4, detach_memory: bool = True):
        super().__init__(hidden_dim, num_classes, num_queries)
        if score not in SCORES:
            raise ValueError(f"hidq score must be one of {SCORES}, got {score!r}")
        self.score = score
        self.tie_break = float(tie_break)
        self.detach_memory = bool(detach_memory)
        self.mix_proj = nn.Linear(hidden_dim, hidden_dim)  # W_m
        self.query_proj = nn.Linear(hidden_dim, hidden_dim)  # W'_Q

    def token_scores(self, heat: Tensor, valid_mask: Tensor, logits: Tensor | None = None,
                     probe_logits: Sequence[Tensor] | Tensor | None = None) -> Tensor:
        """Selection score [B,N] (no gradient): heat [B,N]; logits [B,N,C] (encoder head, for
        ``heat*cls``); probe_logits per level [B,C,H,W] (tie-break of ``heat``); valid_mask [1,N,1]."""
        score = heat.detach().float()
        if self.score == "heat*cls":
            score = score * logits.detach().float().max(-1).values.sigmoid()
        elif self.tie_break > 0 and probe_logits is not None:
            if isinstance(probe_logits, Tensor):
                conf = probe_logits.detach().float().reshape(score.shape)
            else:
                conf = torch.cat([p.detach().float().amax(1).flatten(1) for p in probe_logits], 1)
            score = score + self.tie_break * conf.sigmoid()
        return score.masked_fill(~valid_mask[..., 0], float("-inf"))

    def forward(self, memory: Tensor, anchors: Tensor, valid_mask: Tensor, extra: dict | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if extra is None or extra.get("h_mixed") is None:
            raise ValueError("HeatmapQuerySelector needs extra['h_mixed'] (the heatmap embedding's H_mixed); "
                             "enable `heatmap` in the model config")
        heat = flatten_heatmap(extra["h_mixed"])  # [B,N], keeps the gate's graph
        B, N = memory.shape[:2]
        if heat.shape != (B, N):
            raise ValueError(f"H_mixed has {tuple(heat.shape)} tokens but the memory {(B, N)}: "
                             "the heatmap levels must match the decoder's feature levels")
        K = self.num_selected(N)
        if self.score == "heat":
            score = self.token_scores(heat, valid_mask, probe_logits=extra.get("probe_logits"))
            index = torch.topk(score, K, dim=1).indices  # [B,K]
            mem = gather_tokens(memory, index)  # [B,K,D]
            # the per-token encoder head on the selected tokens only
            selected = self.head.project(mem, gather_tokens(valid_mask.expand(B, -1, -1), index))  # [B,K,D]
            topk_logits = self.head.classify(selected)
        else:
            projected = self.head.project(memory, valid_mask)  # [B,N,D]
            logits = self.head.classify(projected)  # [B,N,C]: heat*cls needs the dense class scores
            score = self.token_scores(heat, valid_mask, logits=logits)
            index = torch.topk(score, K, dim=1).indices  # [B,K]
            selected = gather_tokens(projected, index)
            topk_logits = gather_tokens(logits, index)
            mem = gather_tokens(memory, index)  # [B,K,D]
        ref_unact, topk_boxes = self.boxes_at(selected, anchors, index)  # the box MLP on the K tokens only
        if self.detach_memory:
            mem = mem.detach()
        h = heat.gather(1, index).unsqueeze(-1).to(mem.dtype)  # [B,K,1], differentiable w.r.t. the gate
        e_mixed = self.mix_proj(mem * h)  # E_mixed = W_m (memory * H_mixed), at the selected tokens
        content = self.query_proj(e_mixed)  # Q_dec = W'_Q E_mixed (eq. 8)
        return content, ref_unact, topk_logits, topk_boxes

    def extra_repr(self) -> str:
        return (f"num_queries={self.num_queries}, score={self.score!r}, tie_break={self.tie_break}, "
                f"detach_memory={self.detach_memory}")
