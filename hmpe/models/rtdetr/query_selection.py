"""Query selection of the RT-DETR decoder: anchors, the encoder output head and the selectors.

Where the encoder output head lives: ``EncoderOutputHead`` (``enc_output`` = Linear + LayerNorm,
``enc_score_head``, ``enc_bbox_head``) is owned by the query selector (``QuerySelector.head``, also
reachable as ``RTDETRDecoder.enc_head``). Every selector computes the per-token class logits and
anchor-relative boxes with it, because the encoder loss (``enc_outputs``) needs them at the selected
tokens and the reference boxes come from them. A heatmap-based selector (HIDQ) subclasses
``QuerySelector``, reuses ``self.head`` for boxes / class confidence, reads its heatmap from ``extra``
and is passed to ``RTDETRDecoder(query_selector=...)``; nothing else changes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor, nn

from hmpe.models.rtdetr.common import MLP, bias_init_with_prob, gather_tokens, run_fp32

__all__ = ["EncoderOutputHead", "QuerySelector", "ScoreQuerySelector", "generate_anchors"]


def generate_anchors(
    spatial_shapes: Sequence[tuple[int, int]],
    grid_size: float = 0.05,
    eps: float = 0.01,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """RT-DETR anchors for the given level sizes.

    Per level ``l`` of size ``(h, w)``: centres at pixel centres ``((j+0.5)/w, (i+0.5)/h)``, h-major
    (row index outer, matching ``flatten(2)`` of a ``[B,D,h,w]`` map), size ``w = h = grid_size * 2^l``.
    Returns ``anchors [1,N,4]`` in logit space (``inf`` where invalid) and ``valid_mask [1,N,1]``
    bool (all four values inside ``(eps, 1-eps)``; border anchors whose logit would blow up).
    """
    per_level = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=device),
            torch.arange(w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        cx = (xs + 0.5) / w
        cy = (ys + 0.5) / h
        wh = torch.full_like(cx, grid_size * (2.0**lvl))
        per_level.append(torch.stack([cx, cy, wh, wh], -1).reshape(-1, 4))
    anchors = torch.cat(per_level, 0).unsqueeze(0)  # [1, N, 4]
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    anchors = torch.where(valid, anchors, torch.full_like(anchors, float("inf")))
    return anchors, valid



class EncoderOutputHead(nn.Module):
    """Per-token head on the encoder memory: class logits and anchor-relative boxes (logit space)."""

    def __init__(self, hidden_dim: int, num_classes: int):
        super().__init__()
        self.enc_output = nn.Sequential(
            OrderedDict([("proj", nn.Linear(hidden_dim, hidden_dim)), ("norm", nn.LayerNorm(hidden_dim))])
        )
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.enc_output.proj.weight)
        nn.init.constant_(self.enc_score_head.bias, bias_init_with_prob(0.01))
        nn.init.zeros_(self.enc_bbox_head.layers[-1].weight)
        nn.init.zeros_(self.enc_bbox_head.layers[-1].bias)

    def project(self, memory: Tensor, valid_mask: Tensor) -> Tensor:
        """memory [B,N,D], valid_mask [1,N,1] -> output_memory [B,N,D]."""
        # zero the border tokens whose anchors are invalid (their anchor logit is inf)
        return self.enc_output(memory * valid_mask.to(memory.dtype))

    def classify(self, output_memory: Tensor) -> Tensor:
        """output_memory [B,N,D] -> class logits [B,N,C] (fp32)."""
        return run_fp32(self.enc_score_head, output_memory)

    def regress(self, output_memory: Tensor, anchors: Tensor) -> Tensor:
        """output_memory [B,K,D], anchors [B or 1,K,4] (logit space) -> coord_unact [B,K,4] (fp32).

        Per token, so the selectors call it on the K selected tokens only: the 3-layer box MLP is the
        head's largest part, and the selection needs only K of the N tokens' boxes.
        """
        return run_fp32(self.enc_bbox_head, output_memory) + anchors

    def forward(self, memory: Tensor, anchors: Tensor, valid_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The dense head: memory [B,N,D], anchors [1,N,4], valid_mask [1,N,1] -> (output_memory [B,N,D],
        logits [B,N,C], coord_unact [B,N,4])."""
        output_memory = self.project(memory, valid_mask)
        return output_memory, self.classify(output_memory), self.regress(output_memory, anchors)



class QuerySelector(nn.Module):
    """Base of the query selectors: owns the encoder output head.

    ``forward(memory [B,N,D], anchors [1,N,4], valid_mask [1,N,1], extra: dict | None)
    -> (content [B,K,D], ref_unact [B,K,4] detached, topk_logits [B,K,C], topk_boxes [B,K,4])``
    with ``K = min(num_queries, N)``; ``topk_logits``/``topk_boxes`` (sigmoid) keep their graph
    for the encoder loss.
    """

    def __init__(self, hidden_dim: int, num_classes: int, num_queries: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.head = EncoderOutputHead(hidden_dim, num_classes)

    def num_selected(self, num_tokens: int) -> int:
        return min(self.num_queries, num_tokens)

    def boxes_at(self, selected: Tensor, anchors: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Boxes of the selected tokens only: selected [B,K,D] (projected memory), anchors [1,N,4],
        index [B,K] -> (ref_unact [B,K,4] detached, topk_boxes [B,K,4] sigmoid, with graph)."""
        ref_unact = self.head.regress(selected, gather_tokens(anchors.expand(index.shape[0], -1, -1), index))
        return ref_unact.detach(), ref_unact.sigmoid()

    def select(self, output_memory: Tensor, logits: Tensor, anchors: Tensor, index: Tensor):
        """Gather the selected tokens [B,K] and regress their boxes; shared by every selector so outputs
        stay consistent. output_memory [B,N,D], logits [B,N,C], anchors [1,N,4]."""
        selected = gather_tokens(output_memory, index)  # [B,K,D]
        ref_unact, topk_boxes = self.boxes_at(selected, anchors, index)
        # content and reference are detached as in RT-DETR: the encoder is trained through the
        # encoder loss and the cross-attention values, not through the query initialisation
        return selected.detach(), ref_unact, gather_tokens(logits, index), topk_boxes


class ScoreQuerySelector(QuerySelector):
    """RT-DETR's selection: top-K tokens by their maximum class logit (invalid anchors excluded)."""

    def forward(
        self, memory: Tensor, anchors: Tensor, valid_mask: Tensor, extra: dict | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        output_memory = self.head.project(memory, valid_mask)
        logits = self.head.classify(output_memory)  # [B,N,C]
        score = logits.max(-1).values  # [B, N]
        # RT-DETR relies on zeroed memory to keep border tokens out of the top-K; masking the score
        # makes it certain (an inf anchor would give a degenerate (1,1,1,1) reference box).
        score = score.masked_fill(~valid_mask[..., 0], float("-inf"))
        index = torch.topk(score, self.num_selected(memory.shape[1]), dim=1).indices  # [B, K]
        return self.select(output_memory, logits, anchors, index)

