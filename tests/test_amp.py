"""Mixed precision: bf16 (the default on CUDA and on CPUs with native bf16) and fp16 with a grad scaler;
heads, losses and the heatmap arithmetic stay fp32.

Every preset and every HMPE switch is trained a few iterations under torch's CPU autocast (bf16 and fp16),
so the AMP code paths are checked on every CI run; the CUDA test runs when a GPU is present.
"""

import math

import pytest
import torch

from helpers import tiny_data, tiny_model_cfg, tiny_train_cfg
from hmpe.engine.train.trainer import Trainer
from hmpe.models.detector import build_criterion, build_model
from hmpe.utils.config import apply_overrides, load_model_config, model_presets
from hmpe.utils.runtime import amp_dtype

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("native_bf16", [False, True])
def test_amp_auto_is_bf16_where_native_explicit_amp_on_any_device(native_bf16, monkeypatch):
    from hmpe.utils import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_bf16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("auto", cpu) is (torch.bfloat16 if native_bf16 else None) and amp_dtype(False, cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16 and amp_dtype("fp16", cpu) is torch.float16
    assert amp_dtype("auto", cuda) is torch.bfloat16 and amp_dtype("bf16", cuda) is torch.bfloat16
    assert amp_dtype("fp16", cuda) is torch.float16 and amp_dtype(False, cuda) is None
    with pytest.raises(ValueError):
        amp_dtype("fp8", cuda)


def test_cpu_bf16_probe_agrees_with_the_cpu_flags():
    from pathlib import Path

    from hmpe.utils.runtime import cpu_has_native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo (not Linux)")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_tile" in flags)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP runs on CUDA only (no GPU here)")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_with_finite_losses_and_fp32_heads(amp, tmp_path):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = tiny_train_cfg(tmp_path, name=amp, amp=amp, device="cuda", epochs=2, batch=2, val_interval=1,
                         data=tiny_data(num_train=6, num_val=2, overfit=False), warmup_iters=2)
    trainer = Trainer(cfg, tiny_model_cfg())
    expected = torch.bfloat16 if amp == "bf16" else torch.float16
    assert trainer.amp_dtype is expected
    assert trainer.scaler.is_enabled() == (amp == "fp16")  # the grad scaler only for fp16

    # one step by hand: autocast body, fp32 heads, fp32 losses
    images, targets = next(iter(trainer.train_loader))
    images = images.cuda()
    targets = [{k: (v.cuda() if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    trainer.model.train()
    with torch.autocast("cuda", dtype=expected):
        out = trainer.model(images, targets)
    assert out["pred_logits"].dtype == torch.float32 and out["pred_boxes"].dtype == torch.float32
    assert out["enc_outputs"]["pred_logits"].dtype == torch.float32
    assert all(o["pred_boxes"].dtype == torch.float32 for o in out["aux_outputs"])
    losses = trainer.criterion(out, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    trainer.optimizer.zero_grad(set_to_none=True)

    # a few real iterations through the trainer (2 epochs x 3 steps)
    for epoch in range(2):
        stats = trainer.train_one_epoch(epoch)
        assert math.isfinite(stats["loss"]) and stats["loss"] > 0, stats
    assert trainer.nan_count == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    metrics = trainer.validate()  # evaluation under autocast too
    assert 0.0 <= metrics["mAP50"] <= 1.0


def _batch(imgsz: int = 64, n: int = 2):
    from hmpe.data.dataset import build_dataset, collate_fn
    from hmpe.data.formats import load_data_config
    from hmpe.data.transforms import build_transforms

    ds = build_dataset(load_data_config(tiny_data(num_train=n, imgsz=imgsz)), "train",
                       transforms=build_transforms(False, imgsz))
    return collate_fn([ds[i] for i in range(n)])


def _train_steps(model_cfg: dict, dtype: torch.dtype, steps: int = 2) -> list[float]:
    """``steps`` optimiser steps under CPU autocast; asserts fp32 heads/losses and finite gradients."""
    torch.manual_seed(0)
    images, targets = _batch()
    model, criterion = build_model(model_cfg, 5), build_criterion(model_cfg, 5)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # fp16: a modest initial loss scale, so that a non-finite gradient means an fp16 overflow in the model
    # (the default 2**16 overflows on purpose at first and the scaler backs off, skipping those steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, enabled=dtype == torch.float16)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=dtype):
            out = model(images, targets)
        assert out["pred_logits"].dtype == torch.float32 and out["pred_boxes"].dtype == torch.float32
        ld = criterion(out, targets)
        ld.update(out.get("aux_losses", {}))
        assert all(v.dtype == torch.float32 for v in ld.values()), {k: v.dtype for k, v in ld.items()}
        if "heatmap" in out:  # eqs. 1-4 in fp32 whatever the autocast dtype, then back to the features' dtype
            heat = out["heatmap"]
            assert all(torch.isfinite(h).all() and 0 <= float(h.min()) <= float(h.max()) <= 1 for h in heat.h_class)
        loss = sum(ld.values())
        assert torch.isfinite(loss), {k: float(v) for k, v in ld.items()}
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        bad = [k for k, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, bad[:5]
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


# bf16 for every preset; fp16 (CPU fp16 autocast is several times slower) for the full HMPE model (heatmap +
# MOHFE + HIDQ + LSConv), whose graph contains the baseline's; the trainer test runs fp16 end to end too
PRESET_AMP = [(p, "bf16") for p in model_presets()] + [("hmpe-n", "fp16")]


@pytest.mark.parametrize("preset,amp", PRESET_AMP)
def test_every_preset_trains_under_cpu_autocast(preset, amp):
    cfg = apply_overrides(load_model_config(preset), {"decoder.num_queries": 30, "decoder.num_denoising": 10})
    losses = _train_steps(cfg, DTYPES[amp], steps=1)
    assert all(math.isfinite(v) and v > 0 for v in losses)


HMPE_SWITCHES = [
    {},
    {"heatmap.score_pool": "mean", "heatmap.tau_mode": "quantile", "heatmap.tau": 0.3},
    {"heatmap.cam_weights": "design", "hidq.score": "heat"},
    {"heatmap.fuse_levels": "max", "heatmap.pe": "paper", "heatmap.mask_pe": False},
    {"mohfe.enabled": False, "hidq.enabled": False},
    {"backbone.strip_conv": {"kind": "dsconv", "stages": [3, 4], "kernel_size": 5}},
]
# (heatmap.closed_form=false, the autograd reference, runs in the same autocast-free fp32 region as the closed
# form: tests/test_heatmap.py compares the two; it is left out here because it costs 2K backward passes.)


# fp16 for the full model is test_every_preset_trains_under_cpu_autocast[hmpe-n-fp16] and the trainer test
SWITCH_AMP = [(s, "bf16") for s in HMPE_SWITCHES]


@pytest.mark.parametrize("switch,amp", SWITCH_AMP,
                         ids=[(",".join(f"{k}={v}" for k, v in d.items())[:40] or "hmpe") + f"-{a}" for d, a in SWITCH_AMP])
def test_every_hmpe_switch_trains_under_cpu_autocast(switch, amp):
    base = {**tiny_model_cfg(num_denoising=10, num_layers=2), "heatmap": {"enabled": True}, "mohfe": {"enabled": True},
            "hidq": {"enabled": True}, "backbone": {"name": "B0", "strip_conv": {"kind": "lsconv", "stages": [3, 4],
                                                                               "kernel_size": 5}}}
    losses = _train_steps(apply_overrides(base, switch), DTYPES[amp], steps=1)
    assert math.isfinite(losses[0])


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_trainer_amp_on_cpu_finite_losses(amp, tmp_path):
    cfg = tiny_train_cfg(tmp_path, name=amp, amp=amp, device="cpu", epochs=1, batch=2, imgsz=64,
                         data=tiny_data(num_train=4, num_val=2, imgsz=64), warmup_iters=1)
    trainer = Trainer(cfg, {**tiny_model_cfg(num_denoising=10), "heatmap": {"enabled": True}})
    assert trainer.amp_dtype is DTYPES[amp] and trainer.scaler.is_enabled() == (amp == "fp16")
    stats = trainer.train_one_epoch(0)
    assert math.isfinite(stats["loss"]) and stats["loss"] > 0 and trainer.nan_count == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert 0.0 <= trainer.validate()["mAP50"] <= 1.0


def test_validation_runs_in_fp32_after_training_under_autocast(tmp_path):
    """The trainer's figures are the ones ``hmpe val`` (fp32) reproduces: no autocast in validation."""
    cfg = tiny_train_cfg(tmp_path, name="val32", amp="bf16", device="cpu", epochs=1, batch=2, imgsz=64,
                         data=tiny_data(num_train=2, num_val=2, imgsz=64), warmup_iters=1)
    trainer = Trainer(cfg, {**tiny_model_cfg(num_denoising=10), "heatmap": {"enabled": True}})
    seen = []
    hook = trainer.eval_model().register_forward_hook(
        lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o["pred_logits"].dtype)))
    trainer.validate()
    hook.remove()
    assert seen and all(s == (False, torch.float32) for s in seen)


def test_backbone_activations_stay_bf16_under_cpu_autocast():
    """HGNetv2's learnable affine blocks (scalar scale and bias, fp32 parameters) keep the activation's dtype:
    a [1]-shaped fp32 parameter would promote every later bf16 activation of the backbone to fp32."""
    from hmpe.models.rtdetr.backbone import HGNetv2, LearnableAffineBlock

    lab = LearnableAffineBlock(scale=1.5, bias=0.25)
    x = torch.randn(2, 4, 8, 8, dtype=torch.bfloat16)
    assert lab(x).dtype is torch.bfloat16
    torch.testing.assert_close(lab(x).float(), 1.5 * x.float() + 0.25, rtol=1e-2, atol=1e-2)  # bf16 rounding
    backbone = HGNetv2(name="B0", use_lab=True, return_idx=[1, 2, 3]).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = backbone(torch.randn(2, 3, 64, 64))
    assert [f.dtype for f in feats] == [torch.bfloat16] * 3
    sum(f.float().sum() for f in feats).backward()
    assert backbone.stem.stem1.lab.scale.grad.dtype is torch.float32  # fp32 master parameter, fp32 gradient


def test_decoder_self_attention_in_fp32_under_cpu_autocast():
    """The queries' self-attention leaves CPU autocast (the CPU attention kernel is faster in fp32 at head
    size 16) and gives what the same layer gives without autocast."""
    from hmpe.models.rtdetr.decoder_layers import TransformerDecoderLayer

    torch.manual_seed(0)
    layer = TransformerDecoderLayer(d_model=32, n_head=2, dim_feedforward=64, n_levels=1, n_points=2)
    q = torch.randn(2, 7, 32)
    mask = torch.zeros(7, 7, dtype=torch.bool)
    mask[:3, 3:] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer.query_self_attention(q, q, q, mask)
    assert out.dtype is torch.float32
    torch.testing.assert_close(out, layer.query_self_attention(q, q, q, mask))
