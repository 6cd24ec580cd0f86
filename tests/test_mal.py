"""The matchability-aware classification loss (``loss.cls_loss: mal``) beside the default varifocal loss."""

import pytest
import torch

from hmpe.models.rtdetr.loss import SetCriterion, matchability_aware_loss, varifocal_loss
from hmpe.models.rtdetr.matcher import HungarianMatcher
from hmpe.utils.keys import check_model_config


def test_mal_formula():
    logits = torch.tensor([[[2.0, -1.0], [0.5, 0.0]]])
    pos = torch.zeros_like(logits, dtype=torch.bool)
    pos[0, 0, 0] = True
    iou = torch.zeros_like(logits)
    iou[0, 0, 0] = 0.4
    p = logits.sigmoid()
    t = iou.pow(1.5)
    w = p.pow(1.5) * (~pos) + pos  # positives weight 1, negatives p^gamma
    bce = -(t * p.log() + (1 - t) * (1 - p).log())
    torch.testing.assert_close(matchability_aware_loss(logits, iou, pos, gamma=1.5), (w * bce).sum())


def test_mal_keeps_learning_from_a_poorly_localised_match():
    """VFL weights a positive by its IoU, so a match with IoU 0.1 barely moves its score; MAL keeps weight 1."""
    pos = torch.zeros(1, 1, 2, dtype=torch.bool)
    pos[0, 0, 0] = True
    iou = pos.float() * 0.1
    grads = {}
    for name, fn in (("vfl", lambda x: varifocal_loss(x, iou, pos)), ("mal", lambda x: matchability_aware_loss(x, iou, pos))):
        x = torch.full((1, 1, 2), -4.0, requires_grad=True)  # a confident "no object"
        fn(x).backward()
        grads[name] = -x.grad[0, 0, 0].item()  # how hard the positive's score is pushed up
    assert grads["mal"] > 1.5 * grads["vfl"] > 0


def test_criterion_with_mal_names_its_term_and_takes_the_vfl_weight():
    torch.manual_seed(0)
    out = {"pred_logits": torch.randn(1, 4, 3), "pred_boxes": torch.rand(1, 4, 4) * 0.4 + 0.2}
    tg = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.2]])}]
    w = {"loss_vfl": 3.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    vfl = SetCriterion(3, HungarianMatcher(), weight_dict=w)(out, tg)
    mal = SetCriterion(3, HungarianMatcher(), weight_dict=w, cls_loss="mal")(out, tg)
    assert set(vfl) == {"loss_vfl", "loss_bbox", "loss_giou"}
    assert set(mal) == {"loss_mal", "loss_bbox", "loss_giou"}
    torch.testing.assert_close(mal["loss_bbox"], vfl["loss_bbox"])
    assert mal["loss_mal"].item() != pytest.approx(vfl["loss_vfl"].item())
    unweighted = SetCriterion(3, HungarianMatcher(), weight_dict={**w, "loss_vfl": 1.0}, cls_loss="mal")(out, tg)
    torch.testing.assert_close(mal["loss_mal"], 3.0 * unweighted["loss_mal"])
    with pytest.raises(ValueError, match="cls_loss"):
        SetCriterion(3, HungarianMatcher(), cls_loss="focal")


def test_mal_is_a_model_config_key():
    check_model_config({"loss": {"cls_loss": "mal", "mal_gamma": 1.5}})
