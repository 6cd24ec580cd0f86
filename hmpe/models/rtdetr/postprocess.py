"""RT-DETR post-processing: sigmoid scores, top-K over (query, class) pairs, no NMS.

A query may appear several times with different classes (RT-DETR / DETR focal-loss convention);
the one-to-one matching makes duplicates across queries rare, so no NMS is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hmpe.utils.boxes import box_cxcywh_to_xyxy

__all__ = ["PostProcessor"]


class PostProcessor(nn.Module):
    def __init__(self, num_classes: int, num_top_queries: int = 300):
        super().__init__()
        self.num_classes = num_classes
        self.num_top_queries = num_top_queries

    def forward_batched(self, outputs: dict, orig_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """outputs ``pred_logits [B,Q,C]``, ``pred_boxes [B,Q,4]`` (normalised cxcywh); orig_sizes
        ``[B,2]`` as (w, h). Returns ``boxes [B,K,4]`` absolute xyxy, ``scores [B,K]`` (descending),
        ``labels [B,K]`` int64, with ``K = min(num_top_queries, Q*C)``. Static shapes, export-safe."""
        logits, boxes = outputs["pred_logits"].float(), outputs["pred_boxes"].float()
        B, Q, C = logits.shape
        scale = orig_sizes.to(boxes.dtype).repeat(1, 2).unsqueeze(1)  # [B,1,4] = (w,h,w,h)
        xyxy = box_cxcywh_to_xyxy(boxes) * scale
        k = min(self.num_top_queries, Q * C)
        scores, index = torch.topk(logits.sigmoid().flatten(1), k, dim=1)  # [B, K]
        labels = index % C
        query = torch.div(index, C, rounding_mode="floor")
        out_boxes = xyxy.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
        return out_boxes, scores, labels

    def forward(self, outputs: dict, orig_sizes: Tensor) -> list[dict[str, Tensor]]:
        boxes, scores, labels = self.forward_batched(outputs, orig_sizes)
        return [{"boxes": b, "scores": s, "labels": l} for b, s, l in zip(boxes, scores, labels)]
