"""Box ops vs torchvision, Hungarian matcher vs brute force, set criterion."""

import itertools

import pytest
import torch

from hmpe.models.rtdetr.decoder import RTDETRDecoder
from hmpe.models.rtdetr.loss import SetCriterion, varifocal_loss
from hmpe.models.rtdetr.matcher import HungarianMatcher
from hmpe.utils import boxes as B

tvops = pytest.importorskip("torchvision.ops")


def _rand_xyxy(n, g):
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.7
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.5 + 0.01
    return torch.cat([xy, xy + wh], -1)


def test_box_ops_match_torchvision():
    g = torch.Generator().manual_seed(0)
    a, b = _rand_xyxy(7, g), _rand_xyxy(5, g)
    b[0] = a[0]  # identical pair
    b[1] = torch.tensor([0.9, 0.9, 0.95, 0.95], dtype=torch.float64)  # disjoint from most
    for fmt, to_fn, from_fn in (
        ("cxcywh", B.box_xyxy_to_cxcywh, B.box_cxcywh_to_xyxy),
        ("xywh", B.box_xyxy_to_xywh, B.box_xywh_to_xyxy),
    ):
        conv = to_fn(a)
        torch.testing.assert_close(conv, tvops.box_convert(a, "xyxy", fmt))
        torch.testing.assert_close(from_fn(conv), tvops.box_convert(conv, fmt, "xyxy"))
        torch.testing.assert_close(from_fn(conv), a)
    torch.testing.assert_close(B.box_area(a), tvops.box_area(a))
    torch.testing.assert_close(B.box_iou(a, b)[0], tvops.box_iou(a, b))
    torch.testing.assert_close(B.generalized_box_iou(a, b), tvops.generalized_box_iou(a, b))
    torch.testing.assert_close(B.elementwise_giou(a[:5], b), torch.diag(tvops.generalized_box_iou(a[:5], b)))
    torch.testing.assert_close(B.elementwise_box_iou(a[:5], b), torch.diag(tvops.box_iou(a[:5], b)))
    torch.testing.assert_close(B.inverse_sigmoid(torch.sigmoid(torch.tensor([-3.0, 0.0, 2.0]))), torch.tensor([-3.0, 0.0, 2.0]), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- matcher
def _brute_force(cost: torch.Tensor) -> float:
    Q, T = cost.shape
    best = float("inf")
    for perm in itertools.permutations(range(Q), T):  # Q >= T: each GT gets a distinct prediction
        best = min(best, sum(cost[p, t].item() for t, p in enumerate(perm)))
    return best


@pytest.mark.parametrize("use_focal", [True, False])
def test_matcher_matches_brute_force(use_focal):
    g = torch.Generator().manual_seed(1)
    matcher = HungarianMatcher(use_focal=use_focal)
    num_classes = 3
    for trial in range(12):
        Q = int(torch.randint(1, 6, (1,), generator=g))
        T = int(torch.randint(0, min(Q, 4) + 1, (1,), generator=g))
        logits = torch.randn(1, Q, num_classes, generator=g)
        boxes = torch.rand(1, Q, 4, generator=g) * 0.5 + 0.1
        tgt = {"labels": torch.randint(0, num_classes, (T,), generator=g), "boxes": torch.rand(T, 4, generator=g) * 0.5 + 0.1}
        (ip, it), = matcher({"pred_logits": logits, "pred_boxes": boxes}, [tgt])
        assert ip.dtype == it.dtype == torch.long and len(ip) == len(it) == T
        if T == 0:
            continue
        assert len(set(ip.tolist())) == T and sorted(it.tolist()) == list(range(T))
        cost = matcher.cost_matrix(logits[0], boxes[0], tgt["labels"], tgt["boxes"])
        assert cost[ip, it].sum().item() == pytest.approx(_brute_force(cost), abs=1e-4)


def test_matcher_cost_matches_definition():
    m = HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2, focal_alpha=0.25, focal_gamma=2.0)
    logits = torch.tensor([[0.3, -1.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    tl, tb = torch.tensor([0]), torch.tensor([[0.55, 0.5, 0.2, 0.3]])
    p = torch.sigmoid(torch.tensor(0.3))
    cls = 0.25 * (1 - p) ** 2 * -torch.log(p) - 0.75 * p**2 * -torch.log(1 - p)
    l1 = 0.05 + 0.1
    giou = B.generalized_box_iou(B.box_cxcywh_to_xyxy(boxes), B.box_cxcywh_to_xyxy(tb))[0, 0]
    expected = 2 * cls + 5 * l1 - 2 * giou
    assert m.cost_matrix(logits, boxes, tl, tb)[0, 0].item() == pytest.approx(expected.item(), abs=1e-5)


def test_matcher_empty_and_more_targets_than_queries():
    m = HungarianMatcher()
    out = {"pred_logits": torch.randn(2, 3, 2), "pred_boxes": torch.rand(2, 3, 4) * 0.5 + 0.2}
    tg = [
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([0, 1, 1, 0, 1]), "boxes": torch.rand(5, 4) * 0.5 + 0.2},
    ]
    (p0, t0), (p1, t1) = m(out, tg)
    assert p0.numel() == t0.numel() == 0
    assert len(p1) == 3 and len(set(t1.tolist())) == 3
    out["pred_boxes"][1, 0] = float("nan")  # a diverged prediction must not crash scipy
    m(out, tg)


# --------------------------------------------------------------------------- criterion
class SpyMatcher(HungarianMatcher):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, outputs, targets):
        self.seen.append(outputs["pred_logits"].shape[1])
        return super().forward(outputs, targets)


def _targets():
    return [
        {"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.1, 0.2], [0.6, 0.5, 0.2, 0.2]])},
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]


def _small_decoder(Q=10, layers=2):
    return RTDETRDecoder(3, hidden_dim=16, num_queries=Q, nhead=2, num_layers=layers, dim_feedforward=32, num_points=2, num_denoising=20)


def test_denoising_queries_never_enter_main_matching():
    torch.manual_seed(0)
    Q = 10
    dec = _small_decoder(Q=Q, layers=3).train()
    feats = [torch.randn(2, 16, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 16, 4, 4)]
    out = dec(feats, _targets())
    n_dn = out["dn_meta"]["dn_num_split"][0]
    assert n_dn > 0
    spy = SpyMatcher()
    losses = SetCriterion(3, spy)(out, _targets())
    # main + 2 aux + enc, each with exactly Q predictions; dn layers never call the matcher
    assert spy.seen == [Q] * 4
    assert sum(k.startswith("loss_vfl_dn_") for k in losses) == 3

    # even if a caller hands over the concatenated [dn | matching] sequence, it is split first
    spy.seen.clear()
    cat = lambda a, b: torch.cat([a, b], 1)
    joined = dict(out)
    dn_last = out["dn_outputs"][-1]
    joined["pred_logits"] = cat(dn_last["pred_logits"], out["pred_logits"])
    joined["pred_boxes"] = cat(dn_last["pred_boxes"], out["pred_boxes"])
    joined_losses = SetCriterion(3, spy)(joined, _targets())
    assert spy.seen == [Q] * 4
    torch.testing.assert_close(joined_losses["loss_vfl"], losses["loss_vfl"])


def test_criterion_keys_weights_and_dn_normalisation():
    torch.manual_seed(0)
    Q, C = 4, 3
    logits = torch.randn(2, Q, C)
    boxes = torch.rand(2, Q, 4) * 0.4 + 0.2
    tg = _targets()
    dn_meta = {"dn_positive_idx": [torch.tensor([0, 1, 4, 5]), torch.zeros(0, dtype=torch.long)], "dn_num_group": 2, "dn_num_split": [8, Q]}
    dn = {"pred_logits": torch.randn(2, 8, C), "pred_boxes": torch.rand(2, 8, 4) * 0.4 + 0.2}
    out = {
        "pred_logits": logits,
        "pred_boxes": boxes,
        "aux_outputs": [{"pred_logits": logits, "pred_boxes": boxes}],
        "enc_outputs": {"pred_logits": logits, "pred_boxes": boxes},
        "dn_outputs": [dn, dn],
        "dn_meta": dn_meta,
    }
    w = {"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    crit = SetCriterion(C, HungarianMatcher(), weight_dict=w)
    losses = crit(out, tg)
    expected = {f"{k}{s}" for k in w for s in ("", "_aux_0", "_enc", "_dn_0", "_dn_1")}
    assert set(losses) == expected
    # identical inputs -> identical main/aux/enc terms
    for k in w:
        torch.testing.assert_close(losses[k], losses[k + "_aux_0"])
        torch.testing.assert_close(losses[k], losses[k + "_enc"])

    # dn: fixed matching (query 0,4 -> GT 0; 1,5 -> GT 1), normalised by num_boxes * num_group = 4
    src = dn["pred_boxes"][0, [0, 1, 4, 5]]
    gt = tg[0]["boxes"][[0, 1, 0, 1]]
    l1 = (src - gt).abs().sum() / 4
    torch.testing.assert_close(losses["loss_bbox_dn_0"], 5.0 * l1)
    giou = B.elementwise_giou(B.box_cxcywh_to_xyxy(src), B.box_cxcywh_to_xyxy(gt))
    torch.testing.assert_close(losses["loss_giou_dn_0"], 2.0 * (1 - giou).sum() / 4)


def test_varifocal_loss_formula_and_perfect_boxes():
    logits = torch.tensor([[[2.0, -1.0], [0.5, 0.0]]])
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.1, 0.1]]])
    tg = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])}]
    crit = SetCriterion(2, HungarianMatcher(), weight_dict={"loss_vfl": 1, "loss_bbox": 1, "loss_giou": 1})
    losses = crit({"pred_logits": logits, "pred_boxes": boxes}, tg)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    # manual VFL: query 0 class 0 is positive with IoU target 1, everything else negative
    p = torch.sigmoid(logits)
    t = torch.zeros_like(p)
    t[0, 0, 0] = 1.0
    weight = 0.75 * p.pow(2) * (1 - t) + t
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    assert losses["loss_vfl"].item() == pytest.approx((weight * bce).sum().item(), rel=1e-5)
    pos = t.bool()
    torch.testing.assert_close(varifocal_loss(logits, t, pos), (weight * bce).sum())


def test_criterion_fp16_inputs_give_fp32_losses():
    torch.manual_seed(0)
    out = {"pred_logits": torch.randn(2, 5, 3).half(), "pred_boxes": (torch.rand(2, 5, 4) * 0.4 + 0.2).half()}
    losses = SetCriterion(3, HungarianMatcher())(out, _targets())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_criterion_no_objects_is_finite_and_pushes_scores_down():
    torch.manual_seed(0)
    logits = torch.zeros(1, 4, 3, requires_grad=True)
    out = {"pred_logits": logits, "pred_boxes": torch.rand(1, 4, 4) * 0.4 + 0.2}
    tg = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    losses = SetCriterion(3, HungarianMatcher())(out, tg)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and (logits.grad > 0).all()
