"""The gate of eq. 4 learns through the masked position encoding (``heatmap.mask_grad: ste``, issue 34 item 2):
the straight-through mask leaves every forward value as it was and gives ``heatmap.gate`` a gradient from the
detection losses even with MOHFE and HIDQ off, where the hard mask gives it none."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import tiny_model_cfg
from hmpe.models.detector import build_criterion, build_model
from hmpe.models.heatmap.maps import MaskFilter
from hmpe.models.heatmap.mask_stats import straight_through_mask, threshold_mask

NC = 5


def _heat_only_cfg(**heat) -> dict:
    """The heatmap embedding alone (no MOHFE, no HIDQ): the gate's only consumer is the mask of eq. 6-7."""
    cfg = tiny_model_cfg()
    cfg["heatmap"] = {"enabled": True, "tau": 0.3, **heat}
    return cfg


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 128, 128, generator=g)
    targets = [{"boxes": torch.tensor([[0.3, 0.3, 0.1, 0.12], [0.7, 0.6, 0.2, 0.1]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[0.5, 0.4, 0.15, 0.15]]), "labels": torch.tensor([2])}]
    return images, targets


def _gate_grad_and_outputs(cfg: dict):
    torch.manual_seed(0)
    model = build_model(copy.deepcopy(cfg), NC).train()
    images, targets = _batch()
    torch.manual_seed(1)  # the same denoising queries for every config
    out = model(images, targets)
    losses = build_criterion(cfg, NC)(out, targets)  # detection losses only: no probe loss reaches the gate
    sum(losses.values()).backward()
    return model.heatmap.gate.grad, out


@pytest.mark.parametrize("tau_mode,tau", [("absolute", 0.3), ("quantile", 0.3)])
def test_ste_gives_the_gate_a_gradient_and_keeps_the_forward(tau_mode, tau):
    grad_none, out_none = _gate_grad_and_outputs(_heat_only_cfg(tau_mode=tau_mode, tau=tau))
    grad_ste, out_ste = _gate_grad_and_outputs(_heat_only_cfg(tau_mode=tau_mode, tau=tau, mask_grad="ste"))
    assert grad_none is None or torch.count_nonzero(grad_none) == 0  # today's mask: the gate learns nothing
    assert grad_ste is not None and torch.isfinite(grad_ste).all() and torch.count_nonzero(grad_ste) > 0
    assert torch.equal(out_none["pred_logits"], out_ste["pred_logits"])
    assert torch.equal(out_none["pred_boxes"], out_ste["pred_boxes"])
    for a, b in zip(out_none["heatmap"].mask, out_ste["heatmap"].mask):
        assert torch.equal(a, b.detach())


def test_straight_through_values_and_gradient():
    h = torch.tensor([[[[0.0, 0.2, 0.29, 0.31, 0.9]]]], requires_grad=True)
    hard = threshold_mask(h, 0.3)
    m = straight_through_mask(h, hard, 0.3, "absolute", 0.05)
    assert torch.equal(m.detach(), torch.tensor([[[[0.0, 0.0, 0.0, 1.0, 1.0]]]]))
    m.sum().backward()
    g = h.grad.flatten()
    assert g[2] > g[1] > g[0] > 0 and g[3] > g[4]  # largest next to the threshold, fading away from it
    assert torch.allclose(g[2], g[3], rtol=1e-5)  # symmetric around tau


def test_ste_only_in_training_and_checked():
    h = torch.rand(1, 1, 4, 4, requires_grad=True)
    f = MaskFilter(0.5, grad="ste").eval()
    assert not f(h).requires_grad  # inference: the plain hard mask
    assert f.train()(h).requires_grad
    with pytest.raises(ValueError, match="mask_grad"):
        MaskFilter(0.5, grad="soft")
    with pytest.raises(ValueError, match="temperature"):
        MaskFilter(0.5, grad="ste", temperature=0.0)


def test_paper_literal_config_is_the_equations_as_written():
    from hmpe.utils.config import load_model_config

    cfg = load_model_config("ablation/paper-literal")
    heat = cfg["heatmap"]
    assert (heat["cam_weights"], heat["score_pool"], heat["fuse_levels"], heat["tau"], heat["tau_mode"], heat["pe"],
            heat["mask_grad"]) == ("design", "sum", "max", 0.0, "absolute", "paper", "none")
    assert (cfg["hidq"]["score"], cfg["hidq"]["tie_break"]) == ("heat", 0.0)
    assert cfg["decoder"]["num_layers"] == 3 and cfg["mohfe"]["enabled"]
    torch.manual_seed(0)
    model = build_model(cfg, NC).train()
    assert model.encoder.position.mode == "paper" and model.heatmap.cam_weights == "design"
    images, targets = _batch()
    out = model(images, targets)
    losses = build_criterion(cfg, NC)(out, targets)
    losses.update(out["aux_losses"])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
