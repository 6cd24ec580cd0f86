"""Engine pieces that need no model: schedule, parameter groups, EMA, atomic checkpoints, config."""

import math

import pytest
import torch
from torch import nn

from hmpe.engine import checkpoint as ckpt_mod
from hmpe.engine.checkpoint import load_checkpoint, save_atomic
from hmpe.engine.train.optim import ModelEMA, build_param_groups, lr_factor, schedule_progress
from hmpe.utils.config import apply_overrides, load_model_config, parse_overrides, split_overrides


def test_lr_warmup_then_cosine_to_final():
    total, warm = 100, 10
    f = [lr_factor(i, total, warm, "cosine", 0.05) for i in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b - 1e-12 for a, b in zip(f[10:], f[11:]))  # monotone decay after warm-up
    assert lr_factor(total, total, warm, "cosine", 0.05) == pytest.approx(0.05)


def test_lr_step_schedule():
    assert lr_factor(50, 100, 0, "step", milestones=(0.8,), gamma=0.1) == 1.0
    assert lr_factor(90, 100, 0, "step", milestones=(0.8,), gamma=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(50, 100, 0, "poly")


def test_lr_schedule_re_sized_at_an_anchor():
    """time_limit re-sizing: the progress at the anchor carries on to 1 at the new total, without a jump (the
    cosine) and without stepping back (the step schedule, re-sized longer after its milestone)."""
    before = lr_factor(60, 100, 10, "cosine", 0.05)
    anchor = (60, schedule_progress(60, 100, 10))
    assert anchor[1] == pytest.approx(0.5 / 0.9) and schedule_progress(60, 100, 10, (10, 0.0)) == anchor[1]
    assert lr_factor(60, 300, 10, "cosine", 0.05, anchor=anchor) == pytest.approx(before)  # continuous
    assert lr_factor(60, 300, 10, "cosine", 0.05) > 1.5 * before  # recomputed over the new total: a jump
    assert lr_factor(300, 300, 10, "cosine", 0.05, anchor=anchor) == pytest.approx(0.05)
    assert lr_factor(5, 300, 10, "cosine", 0.05, anchor=(2, 0.1)) < 1.0  # no warm-up after an anchor
    late = (90, schedule_progress(90, 100, 0))
    assert lr_factor(91, 200, 0, "step", milestones=(0.8,), anchor=late) == pytest.approx(0.1)
    assert lr_factor(91, 200, 0, "step", milestones=(0.8,)) == 1.0


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)


def test_param_groups_no_decay_on_norms_and_biases():
    m = Tiny()
    groups = build_param_groups(m, lr=1e-3, lr_backbone=1e-4, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == 1e-4 and by_name["backbone"]["weight_decay"] == 0.05
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0
    assert len(by_name["backbone_no_decay"]["params"]) == 3  # conv bias, bn weight, bn bias
    assert by_name["head"]["lr"] == 1e-3 and len(by_name["head"]["params"]) == 1
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(m.parameters()))


def test_ema_ramp_and_update():
    m = nn.Linear(2, 1, bias=False)
    ema = ModelEMA(m, decay=0.9999, warmup=10)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)
    d = 0.9999 * (1 - math.exp(-1 / 10))
    assert ema.updates == 1 and ema.current_decay() == pytest.approx(d)
    # after one update the EMA moved (1-d) of the way towards the new weights
    assert torch.allclose(ema.module.weight, d * w0 + (1 - d) * torch.ones_like(w0))
    assert not ema.module.weight.requires_grad


def test_atomic_save_interrupted_leaves_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(3)}, "epoch": 1}, path)

    def exploding_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt_mod.torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    ck = load_checkpoint(path)
    assert ck["epoch"] == 1 and torch.equal(ck["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)


def test_overrides_and_presets():
    o = parse_overrides(["epochs=3", "decoder.num_layers=3", "lr=1e-3", "multi_scale=[288,320]"])
    assert o == {"epochs": 3, "decoder.num_layers": 3, "lr": 1e-3, "multi_scale": [288, 320]}
    model_o, train_o = split_overrides(o)
    assert model_o == {"decoder.num_layers": 3} and "epochs" in train_o
    cfg = apply_overrides(load_model_config("rtdetr-n"), model_o)
    assert cfg["decoder"]["num_layers"] == 3 and cfg["name"] == "rtdetr-n"
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(ValueError, match="preset"):
        load_model_config("no-such-model")


def test_ema_update_is_the_per_tensor_rule_and_follows_buffers_and_copies():
    """The batched update equals ``v.mul_(d).add_(m, alpha=1-d)`` per tensor, bit for bit; integer buffers are
    copied; a deep copy of the EMA updates its own tensors."""
    import copy

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEMA(m, decay=0.99, warmup=5)
    ref = copy.deepcopy(ema.module)
    for step in range(3):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        m(torch.rand(2, 3, 8, 8))  # BatchNorm running stats and num_batches_tracked move
        ema.update(m)
        d = 0.99 * (1 - math.exp(-(step + 1) / 5))
        msd = m.state_dict()
        for k, v in ref.state_dict().items():
            v.mul_(d).add_(msd[k], alpha=1 - d) if v.dtype.is_floating_point else v.copy_(msd[k])
    for k, v in ref.state_dict().items():
        assert torch.equal(ema.module.state_dict()[k], v), k
    twin = copy.deepcopy(ema)
    twin.update(m)
    assert not torch.equal(twin.module[0].weight, ema.module[0].weight)  # the copy moved, the original did not
