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
    ref = Detector(weights=str(ckpt), device="cpu").predict(images, conf=0.0)

    def no_pickle(*a, **k):
        raise AssertionError("torch.load (pickle) used to read a pretrained folder")

    monkeypatch.setattr(torch, "load", no_pickle)
    for det in (Detector.from_pretrained(out, device="cpu"), Detector(str(out), device="cpu")):
        got = det.predict(images, conf=0.0)
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
