"""Box conversions and IoU on torch tensors (last dim = 4).

Formats: ``xyxy`` (corners), ``cxcywh`` (centre, size), ``xywh`` (COCO: top-left, size).
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(b: Tensor) -> Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_xywh_to_xyxy(b: Tensor) -> Tensor:
    x, y, w, h = b.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_xyxy_to_xywh(b: Tensor) -> Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def box_area(b: Tensor) -> Tensor:
    """Area of xyxy boxes."""
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes a (N,4) and b (M,4); returns (iou, union), each (N,M)."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-12), union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU of xyxy boxes a (N,4) and b (M,4) -> (N,M)."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=1e-12)


def elementwise_iou_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union of matched xyxy boxes a (N,4), b (N,4); each (N,)."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_a + area_b - inter
    return inter / union.clamp(min=1e-12), union


def elementwise_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matched xyxy boxes a (N,4), b (N,4) -> (N,)."""
    return elementwise_iou_union(a, b)[0]


def elementwise_giou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of matched xyxy boxes a (N,4), b (N,4) -> (N,)."""
    iou, union = elementwise_iou_union(a, b)
    lt = torch.min(a[:, :2], b[:, :2])
    rb = torch.max(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[:, 0] * wh[:, 1]
    return iou - (hull - union) / hull.clamp(min=1e-12)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with x clamped to [eps, 1 - eps]: boxes in [0,1] -> the decoder's unbounded space."""
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
