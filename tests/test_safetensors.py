"""Shareable weights: `hmpe export format=safetensors` / save_pretrained and Detector.from_pretrained."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from test_export import make_checkpoint


def _images(folder, n=2):
    from hmpe.data.synthetic import SyntheticDataset

    folder.mkdir()
    data = SyntheticDataset(n, imgsz=(72, 96), seed=3)
    for i in range(n):
        Image.fromarray(data.render(i)).save(folder / f"im{i}.png")
    return folder


def test_safetensors_round_trip_same_predictions(tmp_path, monkeypatch):
    from hmpe.api import Detector
    from hmpe.cli import main

    ckpt = make_checkpoint(tmp_path / "tiny.pt", imgsz=64)
    out = tmp_path / "shared"
    assert main(["export", f"weights={ckpt}", "format=safetensors", f"out={out}"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["names"] == ["circle", "square", "triangle", "cross", "ring"] and "model_cfg" in config

    from safetensors import safe_open  # any safetensors reader gets the tensors

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "decoder.dec_score_head.0.weight" in f.keys()

    images = _images(tmp_path / "images")
    ref = Detector(weights=str(ckpt), device="cpu").predict(images, conf=0.0, save=False)

    def no_pickle(*a, **k):
        raise AssertionError("torch.load (pickle) used to read a pretrained folder")

    monkeypatch.setattr(torch, "load", no_pickle)
    for det in (Detector.from_pretrained(out, device="cpu"), Detector(str(out), device="cpu")):
        got = det.predict(images, conf=0.0, save=False)
        assert det.names == ref[0].names
        for a, b in zip(ref, got):
            assert len(a.scores) > 0
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.scores, b.scores)
            np.testing.assert_array_equal(a.labels, b.labels)
    # the Python API writes the same folder
    monkeypatch.undo()
    again = Detector(weights=str(ckpt), device="cpu").save_pretrained(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_half_safetensors_half_the_size_and_fp32_model(tmp_path):
    """half=true: floating tensors in fp16 (integer buffers kept), about half the file; the loaded model is
    fp32 with the fp16-rounded weights, so its raw outputs stay within fp16 rounding of the original's."""
    import pytest
    from safetensors import safe_open

    from hmpe.api import Detector
    from hmpe.cli import main
    from hmpe.engine.checkpoint import load_for_inference

    ckpt = make_checkpoint(tmp_path / "tiny.pt", imgsz=64)
    full, half = tmp_path / "full", tmp_path / "half"
    assert main(["export", f"weights={ckpt}", "format=safetensors", f"out={full}"]) == 0
    assert main(["export", f"weights={ckpt}", "format=safetensors", f"out={half}", "half=true"]) == 0
    assert json.loads((half / "config.json").read_text())["dtype"] == "float16"
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55, ratio
    with safe_open(str(half / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    x = torch.rand(1, 3, 64, 64)
    ref, _, _ = load_for_inference(ckpt, torch.device("cpu"))
    got, _, _ = load_for_inference(half, torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in got.parameters())
    with torch.no_grad():
        a, b = ref(x), got(x)
    assert torch.allclose(a["pred_boxes"], b["pred_boxes"], atol=2e-2)
    assert torch.allclose(a["pred_logits"].sigmoid(), b["pred_logits"].sigmoid(), atol=2e-2)
    (pred, *_) = Detector(str(half), device="cpu").predict(_images(tmp_path / "images"), conf=0.0, save=False)
    assert len(pred.scores) > 0
    with pytest.raises(ValueError, match="half=true applies to format=safetensors"):
        Detector(weights=str(ckpt), device="cpu").export(format="onnx", half=True)
