"""Weights shipped inside the package (``hmpe/weights/NAME/``): ``weights=NAME`` anywhere weights go."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import tiny_model_cfg
from test_export import make_checkpoint
from test_safetensors import _images


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch):
    """A tiny detector shipped as ``tiny-shipped`` (fp16 pretrained folder) in a stand-in weights folder."""
    from hmpe.engine.checkpoint import load_checkpoint, save_pretrained
    from hmpe.utils import shipped

    weights_dir = tmp_path / "weights"
    ckpt = make_checkpoint(tmp_path / "tiny.pt", imgsz=64)
    save_pretrained(load_checkpoint(ckpt), weights_dir / "tiny-shipped", half=True)
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", weights_dir)  # one place: the command line's check and the loader
    return weights_dir


def test_shipped_name_predicts_like_its_folder(shipped_dir, tmp_path, monkeypatch, capsys):
    from hmpe.api import Detector
    from hmpe.cli import main
    from hmpe.engine.checkpoint import resolve_weights, shipped_weights

    assert shipped_weights() == ["tiny-shipped"]
    assert resolve_weights("tiny-shipped") == shipped_dir / "tiny-shipped"
    images = _images(tmp_path / "images")
    by_folder = Detector(weights=str(shipped_dir / "tiny-shipped"), device="cpu").predict(images, conf=0.0, save=False)
    for det in (Detector("tiny-shipped", device="cpu"), Detector(weights="tiny-shipped", device="cpu")):
        assert det.weights == str(shipped_dir / "tiny-shipped")
        for a, b in zip(by_folder, det.predict(images, conf=0.0, save=False)):
            assert len(a.scores) > 0
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.scores, b.scores)

    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(images), "weights=tiny-shipped", "conf=0.0"]) == 0
    assert "2 images" in capsys.readouterr().out
    # a local file or folder of the same name wins over the shipped one
    (tmp_path / "tiny-shipped").mkdir()
    assert resolve_weights("tiny-shipped") == (tmp_path / "tiny-shipped").relative_to(tmp_path)


def test_unknown_name_lists_the_shipped_ones(shipped_dir, capsys):
    from hmpe.cli import main

    assert main(["val", "weights=no-such-model"]) == 2  # refused before anything loads
    err = capsys.readouterr().err
    assert "no-such-model" in err and "no such file" in err and "shipped: tiny-shipped" in err


def test_export_of_shipped_weights_writes_into_the_working_directory(shipped_dir, tmp_path, monkeypatch):
    from hmpe.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["export", "weights=tiny-shipped", "format=safetensors"]) == 0
    assert (tmp_path / "tiny-shipped_pretrained" / "model.safetensors").is_file()
    assert sorted(p.name for p in shipped_dir.iterdir()) == ["tiny-shipped"]  # nothing written into the package


def test_checkpoint_of_a_shipped_dataset_finds_this_machines_copy(tmp_path, monkeypatch):
    """A checkpoint trained on ``nwpu-vhr10`` elsewhere (its stored folder missing here) reads the data through
    the shipped YAML, i.e. ``HMPE_DATASETS`` on this machine; a user YAML that moved is still an error."""
    from hmpe.data.formats import DataError, load_data_config
    from hmpe.engine.checkpoint import checkpoint_data_config

    monkeypatch.setenv("HMPE_DATASETS", str(tmp_path / "here"))
    (tmp_path / "here" / "nwpu-vhr10").mkdir(parents=True)
    stored = {**load_data_config("nwpu-vhr10"), "path": "/elsewhere/datasets/nwpu-vhr10",
              "_source": "/elsewhere/site-packages/hmpe/configs/datasets/nwpu-vhr10.yaml"}
    cfg = checkpoint_data_config({"data_cfg": stored})
    assert cfg["path"] == str(tmp_path / "here" / "nwpu-vhr10")
    moved = {**stored, "_source": "/elsewhere/my-data/nwpu-vhr10.yaml"}
    with pytest.raises(DataError, match="no longer at"):
        checkpoint_data_config({"data_cfg": moved})


def test_ship_weights_states_figures_that_val_reproduces(tmp_path, monkeypatch):
    """benchmarks/ship_weights.py: fp16 folder + metrics.json measured through ``weights=NAME``; too big: refused."""
    import json

    from benchmarks.ship_weights import ship
    from hmpe.api import Detector
    from hmpe.utils import shipped

    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.chdir(tmp_path)
    heat = {**tiny_model_cfg(), "heatmap": {"enabled": True, "tau_mode": "quantile", "tau": 0.3}}
    ckpt = make_checkpoint(tmp_path / "tiny.pt", model_cfg=heat, imgsz=64)
    record = ship(ckpt, "tiny-shipped", "random tiny detector (test)")
    folder = tmp_path / "weights" / "tiny-shipped"
    assert json.loads((folder / "metrics.json").read_text()) == record
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    assert record["reproduce"] == "hmpe val weights=tiny-shipped" and record["imgsz"] == 64
    assert set(record["metrics"]) >= {"mAP50", "mAP50_95", "AP_small", "precision", "recall", "AP_small_input",
                                      "n_small_input"}
    levels = [k.split("/")[1] for k in record["metrics"] if k.startswith("gate/")]
    assert levels and all(f"mask_bg_masked/{lv}" in record["metrics"] for lv in levels)  # the mask at work, per level
    again = Detector(weights="tiny-shipped", device="cpu").val(name="again")
    for key, stated in record["metrics"].items():
        assert again[key] == pytest.approx(stated, abs=1e-4), key
    with pytest.raises(SystemExit, match="over --max-mb"):
        ship(ckpt, "too-big", "x", max_mb=0.001)
    assert not (tmp_path / "weights" / "too-big").exists()
