"""The probe head's auxiliary dense losses (docs/method.md, heatmap embedding: the probe)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as Fn
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from hmpe.models.heatmap.targets import assign_dense_targets

__all__ = ["probe_loss"]


def _flat_levels(maps: Sequence[Tensor]) -> Tensor:
    """[B,c,H_l,W_l] per level -> [B,P,c]."""
    return torch.cat([m.flatten(2) for m in maps], 2).transpose(1, 2)



def probe_loss(
    probe_outputs: Sequence[dict[str, Tensor]],
    targets: Sequence[dict[str, Tensor]],
    strides: Sequence[int],
    image_size: int | Sequence[int],
    *,
    radius: float = 1.5,
    scale_ranges: Sequence[tuple[float, float]] | None = None,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    huber_beta: float = 1.0,
    weight_cls: float = 1.0,
    weight_reg: float = 1.0,
    weight_quality: float = 1.0,
) -> dict[str, Tensor]:
    """Auxiliary dense losses of the probe (docs/method.md), normalised by the batch's positives.

    probe_outputs: per level ``{"cls": [B,C,H,W], "reg": [B,4,H,W], "quality": [B,1,H,W]}``.
    - ``loss_probe_cls``: focal loss on all locations, one-hot class target at positives;
    - ``loss_probe_reg``: ``L_reg`` = Huber (smooth-L1, ``huber_beta`` stride units) on l,t,r,b,
      averaged over the 4 sides per positive location, summed over positives;
    - ``loss_probe_quality``: BCE of the quality logit against ``exp(-L_reg)`` (detached) at positives
      and 0 at negatives, summed over all locations (as YOLOX's objectness).
    Each is divided by ``max(#positives in the batch, 1)`` and weighted. Images without objects are
    valid: all their locations are negatives.
    """
    # fp32 whatever the autocast dtype (the probe's losses are losses, see docs/method.md "Mixed precision")
    cls = _flat_levels([o["cls"] for o in probe_outputs]).float()  # [B,P,C]
    reg = _flat_levels([o["reg"] for o in probe_outputs]).float()  # [B,P,4]
    qual = _flat_levels([o["quality"] for o in probe_outputs])[..., 0].float()  # [B,P]
    sizes = [tuple(o["cls"].shape[-2:]) for o in probe_outputs]
    B, P, C = cls.shape
    # Dense targets, no boolean indexing: a mask-select or ``if p.any()`` waits for the device (a host
    # sync per image on CUDA); multiplying by the positive mask gives the same sums without one.
    cls_t, reg_t, pos = [], [], []
    for t in targets:
        boxes, labels = t["boxes"].to(cls.device), t["labels"].to(cls.device).long()
        p, gt, ltrb = assign_dense_targets(boxes, sizes, strides, image_size, radius, scale_ranges)
        onehot = (Fn.one_hot(labels[gt], C).to(cls.dtype) if labels.numel() else cls.new_zeros(P, C))
        cls_t.append(onehot * p[:, None])
        reg_t.append(ltrb.to(reg.dtype))
        pos.append(p)
    cls_t, reg_t, pos = torch.stack(cls_t), torch.stack(reg_t), torch.stack(pos)  # [B,P,C], [B,P,4], [B,P]
    posf = pos.to(cls.dtype)
    num_pos = posf.sum().clamp(min=1)
    loss_cls = sigmoid_focal_loss(cls, cls_t, focal_alpha, focal_gamma, reduction="sum") / num_pos
    l_reg = Fn.smooth_l1_loss(reg, reg_t, beta=huber_beta, reduction="none").mean(-1)  # [B,P]
    loss_reg = (l_reg * posf).sum() / num_pos
    q_t = torch.exp(-l_reg.detach()) * posf  # exp(-L_reg) at positives, 0 elsewhere
    loss_q = Fn.binary_cross_entropy_with_logits(qual, q_t, reduction="sum") / num_pos
    return {
        "loss_probe_cls": weight_cls * loss_cls,
        "loss_probe_reg": weight_reg * loss_reg,
        "loss_probe_quality": weight_quality * loss_q,
    }

