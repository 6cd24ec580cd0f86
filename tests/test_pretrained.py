"""backbone.pretrained: timm / D-FINE and RT-DETRv2 HGNetv2 files give exactly timm's stage outputs.

timm builds the reference networks with random weights (``pretrained=False``: nothing is downloaded); the
BatchNorm statistics and the learnable-affine scalars are randomised too, so that equality means the graph
(stem padding, layer order, light blocks, aggregation, lab) is the same, not that everything is at init.
"""

from __future__ import annotations

import pytest
import timm  # a dev dependency (pyproject.toml): the reference implementation, so never skipped
import torch

from hmpe.models.rtdetr.backbone import HGNetv2
from hmpe.models.rtdetr.pretrained import load_pretrained_backbone


def _timm_hgnet(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    model = timm.create_model(f"hgnetv2_{variant}", pretrained=False).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif name.endswith("running_var") or name.endswith("bn.weight") or name.endswith("lab.scale"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


def _assert_same_stages(ref, ours: HGNetv2, size=(64, 96)):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref.forward_intermediates(x, intermediates_only=True)
        got = ours.eval()(x)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant, suffix", [("b0", ".pth"), ("b1", ".safetensors")])
def test_timm_layout_matches_timm_outputs(tmp_path, variant, suffix):
    ref = _timm_hgnet(variant)
    state = ref.state_dict()
    path = tmp_path / f"hgnetv2_{variant}{suffix}"
    if suffix == ".safetensors":  # timm's hub format
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a D-FINE-style training checkpoint: the EMA weights win over the wrapper's others
        torch.save({"ema": {"module": state, "updates": 3}, "model": {"junk": torch.zeros(1)}}, path)
    ours = HGNetv2(variant.upper(), return_idx=(0, 1, 2, 3), use_lab=True)
    report = load_pretrained_backbone(ours, path)
    _assert_same_stages(ref, ours)
    head = [k for k in state if k.startswith("head.")]
    body = [k for k in state if not k.startswith("head.") and not k.endswith("num_batches_tracked")]
    assert report.loaded == len(body) and report.layout == "timm/D-FINE"
    assert report.left_at_init == {} and list(report.unused) == ["ImageNet classifier head.*"]
    assert sorted(report.unused["ImageNet classifier head.*"]) == sorted(head)
    line = str(report)
    assert f"{len(body)} tensors loaded" in line and "left at init: 0" in line and f"head.*: {len(head)}" in line


def _to_rtdetrv2_layout(state: dict) -> dict:
    """timm key names -> the official RT-DETRv2 PyTorch HGNetv2's (the inverse of what the loader does)."""
    out = {}
    for k, v in state.items():
        if k.startswith("head."):
            continue  # RT-DETRv2's files hold the backbone only
        k = k.replace(".aggregation.0.", ".aggregation_squeeze_conv.").replace(
            ".aggregation.1.", ".aggregation_excitation_conv.")
        for stem in ("stem.stem2a.conv.", "stem.stem2b.conv."):
            k = stem + "1." + k[len(stem):] if k.startswith(stem) else k
        out[k] = v
    return out


def test_rtdetrv2_layout_b4(tmp_path):
    ref = _timm_hgnet("b4")
    state = _to_rtdetrv2_layout(ref.state_dict())
    assert "stem.stem2a.conv.1.weight" in state and "stages.0.blocks.0.aggregation_squeeze_conv.conv.weight" in state
    path = tmp_path / "PPHGNetV2_L_ssld_pretrained_from_paddle.pth"
    torch.save(state, path)
    ours = HGNetv2("B4", return_idx=(0, 1, 2, 3))
    report = load_pretrained_backbone(ours, path)
    assert report.layout == "RT-DETRv2" and report.unused == {} and report.left_at_init == {}
    _assert_same_stages(ref, ours, size=(32, 32))
    # a model with lab blocks takes the file too: they stay at init (identity), so the outputs do not change
    lab = HGNetv2("B4", return_idx=(0, 1, 2, 3), use_lab=True)
    report = load_pretrained_backbone(lab, path)
    assert list(report.left_at_init) == ["lab (file has none)"] and "left at init: " in str(report)
    _assert_same_stages(ref, lab, size=(32, 32))


def test_wrong_variant_or_option_names_key_and_shapes(tmp_path):
    path = tmp_path / "hgnetv2_b1.pth"
    torch.save({"model": _timm_hgnet("b1").state_dict()}, path)
    with pytest.raises(ValueError) as err:
        load_pretrained_backbone(HGNetv2("B0", use_lab=True), path)
    msg = str(err.value)
    assert "stem.stem1.conv.weight" in msg and "(24, 3, 3, 3)" in msg and "(16, 3, 3, 3)" in msg and str(path) in msg
    with pytest.raises(ValueError, match="set backbone.use_lab=true"):  # lab tensors, model without them
        load_pretrained_backbone(HGNetv2("B1"), path)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no tensor of the file matches"):
        load_pretrained_backbone(HGNetv2("B1", use_lab=True), tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained_backbone(HGNetv2("B0"), tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="backbone.width=0.5 makes other layers"):  # before reading the file
        load_pretrained_backbone(HGNetv2("B0", width=0.5, use_lab=True), tmp_path / "nope.pth")


def test_cli_wrong_variant_exits_nonzero(tmp_path, capsys):
    from hmpe.cli import main

    path = tmp_path / "hgnetv2_b1.pth"
    torch.save(_timm_hgnet("b1").state_dict(), path)
    rc = main(["train", "model=rtdetr-n", f"backbone.pretrained={path}", "imgsz=64", "epochs=1",
               f"project={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "stem.stem1.conv.weight" in err[0] and "(24, 3, 3, 3)" in err[0] and "(16, 3, 3, 3)" in err[0]


def test_trainer_recipe_with_pretrained_backbone(tmp_path, capsys):
    """backbone.pretrained in the model config: loaded once by the trainer, backbone at 0.1 x lr, freezes."""
    from torch import nn

    from helpers import tiny_model_cfg, tiny_train_cfg
    from hmpe.engine.train.trainer import Trainer

    ref = _timm_hgnet("b0")
    path = tmp_path / "hgnetv2_b0.pth"
    torch.save(ref.state_dict(), path)
    cfg = tiny_model_cfg()
    cfg["backbone"] = {"name": "B0", "use_lab": True, "pretrained": str(path), "freeze_at": 0, "freeze_norm": True}
    trainer = Trainer(tiny_train_cfg(tmp_path, epochs=1, imgsz=64, lr=1e-3), cfg)
    assert "270 tensors loaded" in capsys.readouterr().out
    bb = trainer.model.backbone
    torch.testing.assert_close(bb.stages[1].blocks[0].layers[0].conv.weight, ref.stages[1].blocks[0].layers[0].conv.weight)
    torch.testing.assert_close(bb.stem.stem1.bn.running_var, ref.stem.stem1.bn.running_var)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    assert not any(p.requires_grad for p in bb.stem.parameters())
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(1e-4) and lrs["head"] == pytest.approx(1e-3)
