"""Hungarian (one-to-one) matching between predictions and ground truth, as in DETR / RT-DETR."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from hmpe.utils.boxes import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """Cost = cost_class * class + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU).

    With ``use_focal`` the class cost is the focal-loss difference between labelling the prediction
    positive and negative for the GT class (Deformable DETR / RT-DETR); otherwise ``-p(class)``
    with a softmax over classes.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        use_focal: bool = True,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.use_focal = use_focal
        self.alpha = focal_alpha  # the focal loss's alpha and gamma (Lin et al.), in the paper's notation below
        self.gamma = focal_gamma

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor) -> Tensor:
        """Matching cost of one image: logits [Q,C], boxes [Q,4] cxcywh, GT [T], [T,4] -> [Q,T]."""
        logits, boxes, tgt_boxes = logits.float(), boxes.float(), tgt_boxes.float()
        tgt_labels = tgt_labels.long()
        if self.use_focal:
            p = logits.sigmoid()[:, tgt_labels]  # [Q, T]
            neg = (1 - self.alpha) * p.pow(self.gamma) * -(1 - p + 1e-8).log()
            pos = self.alpha * (1 - p).pow(self.gamma) * -(p + 1e-8).log()
            c_class = pos - neg
        else:
            c_class = -F.softmax(logits, -1)[:, tgt_labels]
        c_bbox = torch.cdist(boxes, tgt_boxes, p=1)
        c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
        return self.cost_bbox * c_bbox + self.cost_class * c_class + self.cost_giou * c_giou

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """outputs: ``pred_logits [B,Q,C]``, ``pred_boxes [B,Q,4]``; targets: per image ``labels``,
        ``boxes``. Returns per image ``(idx_pred, idx_tgt)`` int64 on the predictions' device, with
        ``len = min(Q, T_i)``; ``idx_pred`` sorted ascending."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        device = logits.device
        costs = []
        for i, t in enumerate(targets):
            if int(t["labels"].numel()):
                c = self.cost_matrix(logits[i], boxes[i], t["labels"].to(device), t["boxes"].to(device))
                # A NaN/inf cost makes scipy raise; a diverged prediction just becomes a bad match.
                costs.append(torch.nan_to_num(c, nan=1e8, posinf=1e8, neginf=-1e8))
        # one device-to-host copy for the batch (scipy's assignment runs on the host), not one per image
        flat = torch.cat([c.flatten() for c in costs]).cpu().numpy() if costs else np.zeros(0)
        indices, start, k = [], 0, 0
        for t in targets:
            n = int(t["labels"].numel())
            if n == 0:
                empty = torch.zeros(0, dtype=torch.long, device=device)
                indices.append((empty, empty.clone()))
                continue
            q = costs[k].shape[0]
            r, j = linear_sum_assignment(flat[start:start + q * n].reshape(q, n))
            start, k = start + q * n, k + 1
            indices.append((torch.as_tensor(np.asarray(r), dtype=torch.long, device=device),
                            torch.as_tensor(np.asarray(j), dtype=torch.long, device=device)))
        return indices
