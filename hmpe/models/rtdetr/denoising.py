"""Contrastive denoising (DN-DETR / DINO / RT-DETR) training group.

During training, noised copies of the ground-truth boxes are fed to the decoder beside the matching
queries. Each *group* holds ``max_gt`` positive queries (small box noise, should reconstruct the GT)
followed by ``max_gt`` negative queries (larger noise, should predict "no object"). Images with fewer
than ``max_gt`` objects are padded; padded queries carry the embedding's padding row and no loss.

Layout of the ``Ndn = 2 * max_gt * num_group`` denoising queries (they come *before* the ``Q``
matching queries in the decoder's sequence)::

    [ g0: pos(max_gt) neg(max_gt) | g1: pos neg | ... | matching queries (Q) ]

The self-attention mask (``True`` = may not attend, PyTorch's boolean convention) keeps the
matching queries from seeing any denoising query (they would otherwise read the answer) and keeps
each group from seeing the other groups (each group is an independent reconstruction problem).
Denoising queries may see the matching queries, as in DINO / RT-DETR.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hmpe.utils.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid

__all__ = ["get_contrastive_denoising_training_group", "dn_matched_indices"]


def get_contrastive_denoising_training_group(
    targets: list[dict],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, dict | None]:
    """Build the denoising queries.

    Args:
        targets: per image ``{'labels' [n] int64, 'boxes' [n,4] normalised cxcywh}``.
        class_embed: ``nn.Embedding(num_classes + 1, D, padding_idx=num_classes)``.
        num_denoising: budget of denoising queries; ``num_group = max(1, num_denoising // max_gt)``.

    Returns:
        ``(dn_query_content [B,Ndn,D], dn_ref_unact [B,Ndn,4] (inverse-sigmoid cxcywh),
        attn_mask [Ndn+Q, Ndn+Q] bool, dn_meta)`` or four ``None`` when ``num_denoising <= 0`` or no
        image of the batch has an object. ``dn_meta`` holds ``dn_positive_idx`` (per image, the
        indices in ``[0, Ndn)`` of its positive queries, group-major, so that the ``k``-th entry
        reconstructs GT ``k % n_i``), ``dn_num_group`` and ``dn_num_split = [Ndn, Q]``.
    """
    if num_denoising <= 0 or len(targets) == 0:
        return None, None, None, None
    num_gts = [int(t["labels"].numel()) for t in targets]
    max_gt = max(num_gts)
    if max_gt == 0:
        return None, None, None, None

    device = targets[0]["labels"].device
    num_group = max(1, num_denoising // max_gt)
    group_size = 2 * max_gt
    Ndn = group_size * num_group

    # One padded group template [B, max_gt], tiled to 2 * num_group copies: [pos, neg] per group.
    labels, boxes, valid = _padded_group(targets, num_gts, max_gt, num_classes, device)
    labels, valid = labels.tile(1, 2 * num_group), valid.tile(1, 2 * num_group)  # [B, Ndn]
    boxes = boxes.tile(1, 2 * num_group, 1)  # [B, Ndn, 4]
    slot = torch.arange(Ndn, device=device)
    is_neg = (slot % group_size) >= max_gt  # [Ndn]
    dn_positive_idx = _positive_indices(num_gts, num_group, group_size, device)

    # the random draws in this order: label flips, new labels, box signs, box magnitudes
    if label_noise_ratio > 0:
        labels = _noise_labels(labels, valid, label_noise_ratio, num_classes)
    if box_noise_scale > 0:
        boxes = _noise_boxes(boxes, is_neg, box_noise_scale)
    ref_unact = inverse_sigmoid(boxes)

    content = class_embed(labels)  # [B, Ndn, D]; padding rows -> zeros of the padding_idx row
    attn_mask = _attention_mask(slot, group_size, num_queries)
    dn_meta = {
        "dn_positive_idx": dn_positive_idx,
        "dn_num_group": num_group,
        "dn_num_split": [Ndn, num_queries],
    }
    return content, ref_unact, attn_mask, dn_meta


def _padded_group(targets: list[dict], num_gts: list[int], max_gt: int, num_classes: int, device
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Labels [B,max_gt] (padding: ``num_classes``), boxes [B,max_gt,4] (padding: 0), valid [B,max_gt]."""
    B = len(targets)
    labels = torch.full((B, max_gt), num_classes, dtype=torch.long, device=device)
    boxes = torch.zeros((B, max_gt, 4), dtype=torch.float32, device=device)
    valid = torch.zeros((B, max_gt), dtype=torch.bool, device=device)
    for i, (t, n) in enumerate(zip(targets, num_gts)):
        if n > 0:
            labels[i, :n] = t["labels"].to(device=device, dtype=torch.long)
            boxes[i, :n] = t["boxes"].to(device=device, dtype=torch.float32)
            valid[i, :n] = True
    return labels, boxes, valid


def _positive_indices(num_gts: list[int], num_group: int, group_size: int, device) -> list[Tensor]:
    """Positive query indices per image, group-major; within a group GT order is kept."""
    out = []
    for n in num_gts:
        g = torch.arange(num_group, device=device).unsqueeze(1) * group_size
        out.append((g + torch.arange(n, device=device).unsqueeze(0)).flatten())
    return out


def _noise_labels(labels: Tensor, valid: Tensor, ratio: float, num_classes: int) -> Tensor:
    # RT-DETR flips half of the ratio (a random label may equal the true one).
    flip = (torch.rand(labels.shape, device=labels.device) < ratio * 0.5) & valid
    new_labels = torch.randint_like(labels, 0, num_classes)
    return torch.where(flip, new_labels, labels)


def _noise_boxes(boxes: Tensor, is_neg: Tensor, scale: float) -> Tensor:
    """Each corner moves by up to half the box side; positives |noise| in [0,1) x that, negatives in
    [1,2) x that, so negatives are always further from the GT than positives."""
    xyxy = box_cxcywh_to_xyxy(boxes)
    half = (boxes[..., 2:] * 0.5).tile(1, 1, 2) * scale
    sign = torch.randint(0, 2, boxes.shape, device=boxes.device).float() * 2.0 - 1.0
    mag = torch.rand(boxes.shape, device=boxes.device) + is_neg.float().view(1, -1, 1)
    xyxy = (xyxy + sign * mag * half).clamp(0.0, 1.0)
    return box_xyxy_to_cxcywh(xyxy)


def _attention_mask(slot: Tensor, group_size: int, num_queries: int) -> Tensor:
    """Self-attention mask over [dn (Ndn) | matching] queries, True = blocked."""
    Ndn = slot.numel()
    T = Ndn + num_queries
    group_id = torch.div(slot, group_size, rounding_mode="floor")
    attn_mask = torch.zeros((T, T), dtype=torch.bool, device=slot.device)
    attn_mask[Ndn:, :Ndn] = True  # matching queries never see denoising queries
    attn_mask[:Ndn, :Ndn] = group_id.unsqueeze(1) != group_id.unsqueeze(0)  # groups are isolated
    return attn_mask


def dn_matched_indices(dn_meta: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
    """Matching of the denoising queries by construction: positive query -> its source GT."""
    out = []
    num_group = int(dn_meta["dn_num_group"])
    for pos_idx, t in zip(dn_meta["dn_positive_idx"], targets):
        n = int(t["labels"].numel())
        device = t["labels"].device
        gt_idx = torch.arange(n, dtype=torch.long, device=device).tile(num_group)
        pos_idx = pos_idx.to(device=device, dtype=torch.long)
        if pos_idx.numel() != gt_idx.numel():
            raise RuntimeError("dn_meta does not fit these targets")
        out.append((pos_idx, gt_idx))
    return out
