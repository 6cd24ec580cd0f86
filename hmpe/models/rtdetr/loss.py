"""Set criterion of RT-DETR: varifocal loss + L1 + GIoU on every decoder output.

Loss terms (all weighted by ``weight_dict``; the returned values sum to the total loss):
- final output (decoder layer ``eval_idx``):        ``loss_vfl`` (``loss_mal`` with ``cls_loss: mal``), ``loss_bbox``, ``loss_giou``
- other decoder layers, ``outputs['aux_outputs']``:  ``..._aux_{i}``  (own Hungarian matching)
- selected encoder tokens, ``outputs['enc_outputs']``: ``..._enc``   (own Hungarian matching)
- denoising group per layer, ``outputs['dn_outputs']``: ``..._dn_{i}`` (matched by construction
  through ``dn_meta``; normalised by ``num_boxes * dn_num_group``)

Denoising queries never reach the Hungarian matcher: the decoder returns them separately, and if a
caller passes concatenated ``[dn | matching]`` predictions together with ``dn_meta`` the criterion
splits them off first (matching them would let the main queries be trained on reconstruction slots).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from hmpe.models.rtdetr.denoising import dn_matched_indices
from hmpe.utils.boxes import box_cxcywh_to_xyxy, elementwise_box_iou, elementwise_giou

__all__ = ["SetCriterion", "matchability_aware_loss", "varifocal_loss"]


def varifocal_loss(
    logits: Tensor,  # [B, Q, C]
    target_score: Tensor,  # [B, Q, C] IoU at the matched (query, class), 0 elsewhere
    positive: Tensor,  # [B, Q, C] bool one-hot of matched (query, class)
    alpha: float = 0.75,
    gamma: float = 2.0,
) -> Tensor:
    """Summed VFL (Zhang et al. 2021, RT-DETR form): positives are weighted by their IoU target,
    negatives by ``alpha * p^gamma`` (hard-negative focus)."""
    p = logits.sigmoid().detach()
    pos = positive.to(logits.dtype)
    weight = alpha * p.pow(gamma) * (1 - pos) + target_score
    return F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="sum")


def matchability_aware_loss(
    logits: Tensor,  # [B, Q, C]
    target_score: Tensor,  # [B, Q, C] IoU at the matched (query, class), 0 elsewhere
    positive: Tensor,  # [B, Q, C] bool one-hot of matched (query, class)
    gamma: float = 1.5,
) -> Tensor:
    """Summed MAL (DEIM, Huang et al. 2025): the positive target is ``IoU^gamma`` with weight 1, so a matched
    query with a poor box still learns a non-zero score (VFL weights such positives by their small IoU and
    nearly ignores them); negatives keep the focal weight ``p^gamma``."""
    p = logits.sigmoid().detach()
    pos = positive.to(logits.dtype)
    target = target_score.pow(gamma) * pos
    weight = p.pow(gamma) * (1 - pos) + pos
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")


class SetCriterion(nn.Module):
    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: dict[str, float] | None = None,
        vfl_alpha: float = 0.75,
        vfl_gamma: float = 2.0,
        cls_loss: str = "vfl",
        mal_gamma: float = 1.5,
    ):
        super().__init__()
        if cls_loss not in ("vfl", "mal"):
            raise ValueError(f"loss.cls_loss must be vfl or mal, got {cls_loss!r}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict) if weight_dict is not None else {"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
        self.cls_term = f"loss_{cls_loss}"
        if cls_loss == "mal" and "loss_mal" not in self.weight_dict:
            # a config written for VFL (the presets) gives its classification weight to MAL
            self.weight_dict["loss_mal"] = self.weight_dict.pop("loss_vfl", 1.0)
        self.alpha = vfl_alpha  # the varifocal loss's alpha and gamma (varifocal_loss)
        self.gamma = vfl_gamma
        self.mal_gamma = mal_gamma
        # term name -> group, declared for every term forward() returns (loss_vfl_aux_0 -> loss_vfl, ...):
        # the trainer sums its log by these groups
        self.loss_groups: dict[str, str] = {k: k for k in self.weight_dict}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _num_boxes(targets: list[dict], device: torch.device) -> float:
        count = float(sum(int(t["labels"].numel()) for t in targets))  # shapes: known on the host
        if not (dist.is_available() and dist.is_initialized()):
            return max(count, 1.0)  # a single process never touches the device here (no host sync)
        n = torch.tensor([count], device=device)
        dist.all_reduce(n)
        return max(float(n.item()) / dist.get_world_size(), 1.0)

    @staticmethod
    def _split_dn(out: dict, dn_meta: dict | None) -> dict:
        """Keep only the matching queries if a caller left ``[dn | matching]`` concatenated."""
        if dn_meta is None:
            return out
        n_dn, n_q = (int(v) for v in dn_meta["dn_num_split"])
        if n_dn > 0 and out["pred_logits"].shape[1] == n_dn + n_q:
            return {**out, "pred_logits": out["pred_logits"][:, n_dn:], "pred_boxes": out["pred_boxes"][:, n_dn:]}
        return out

    def _single(self, out: dict, targets: list[dict], indices, num_boxes: float) -> dict[str, Tensor]:
        """Unweighted loss terms of one output dict under a given matching."""
        logits = out["pred_logits"].float()  # fp32 even under AMP
        boxes = out["pred_boxes"].float()
        B, Q, C = logits.shape
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)
        tgt_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(device).long()
        tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(device).float()

        src_boxes = boxes[batch_idx, src_idx]  # [M, 4]
        src_xyxy, tgt_xyxy = box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes)

        # IoU-aware classification target (detached: the class head learns localisation quality,
        # the box head is trained by L1/GIoU only)
        iou = elementwise_box_iou(src_xyxy, tgt_xyxy).detach()
        positive = torch.zeros((B, Q, C), dtype=torch.bool, device=device)
        positive[batch_idx, src_idx, tgt_labels] = True
        target_score = torch.zeros((B, Q, C), dtype=logits.dtype, device=device)
        target_score[batch_idx, src_idx, tgt_labels] = iou.to(logits.dtype)
        if self.cls_term == "loss_mal":
            loss_cls = matchability_aware_loss(logits, target_score, positive, self.mal_gamma) / num_boxes
        else:
            loss_cls = varifocal_loss(logits, target_score, positive, self.alpha, self.gamma) / num_boxes

        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
        loss_giou = (1 - elementwise_giou(src_xyxy, tgt_xyxy)).sum() / num_boxes
        return {self.cls_term: loss_cls, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def _weighted(self, terms: dict[str, Tensor], suffix: str) -> dict[str, Tensor]:
        out = {k + suffix: v * self.weight_dict[k] for k, v in terms.items() if k in self.weight_dict}
        self.loss_groups.update({k + suffix: k for k in terms if k in self.weight_dict})
        return out

    def _prepare_targets(self, targets: list[dict], device) -> list[dict]:
        return [
            {**t, "labels": t["labels"].to(device).long(), "boxes": t["boxes"].to(device).float().reshape(-1, 4)}
            for t in targets
        ]

    # ------------------------------------------------------------------ forward
    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        device = outputs["pred_logits"].device
        targets = self._prepare_targets(targets, device)
        num_boxes = self._num_boxes(targets, device)
        dn_meta = outputs.get("dn_meta")
        losses: dict[str, Tensor] = {}

        main = self._split_dn(outputs, dn_meta)
        losses.update(self._weighted(self._single(main, targets, self.matcher(main, targets), num_boxes), ""))

        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            aux = self._split_dn(aux, dn_meta)
            losses.update(self._weighted(self._single(aux, targets, self.matcher(aux, targets), num_boxes), f"_aux_{i}"))

        enc = outputs.get("enc_outputs")
        if enc is not None:
            encs = enc if isinstance(enc, (list, tuple)) else [enc]
            for i, e in enumerate(encs):
                suffix = "_enc" if len(encs) == 1 else f"_enc_{i}"
                losses.update(self._weighted(self._single(e, targets, self.matcher(e, targets), num_boxes), suffix))

        dn_outputs = outputs.get("dn_outputs")
        if dn_outputs and dn_meta is not None:
            indices = dn_matched_indices(dn_meta, targets)
            dn_boxes = num_boxes * max(int(dn_meta["dn_num_group"]), 1)
            for i, d in enumerate(dn_outputs):
                losses.update(self._weighted(self._single(d, targets, indices, dn_boxes), f"_dn_{i}"))
        return losses
