"""The weights shipped in ``hmpe/weights/``: small, self-describing, and reproducing their stated figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmpe.engine.checkpoint import SHIPPED_METRICS, shipped_weights
from hmpe.utils.shipped import WEIGHTS_DIR

SHIPPED = "hmpe-n-nwpu"


def test_shipped_weights_are_small_fp16_and_state_their_figures():
    assert SHIPPED in shipped_weights()
    folder = WEIGHTS_DIR / SHIPPED
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 12 * 2**20
    config = json.loads((folder / "config.json").read_text())
    record = json.loads((folder / SHIPPED_METRICS).read_text())
    assert config["dtype"] == "float16" and config["model_cfg"]["name"] == "hmpe-n"
    assert len(config["names"]) == 10  # NWPU VHR-10
    for key in ("date", "cpu", "versions", "trained", "reproduce", "metrics"):
        assert record[key], key
    assert set(record["metrics"]) >= {"mAP50", "mAP50_95", "AP_small", "precision", "recall"}


def test_shipped_weights_predict_out_of_the_box(tmp_path):
    from PIL import Image

    from hmpe.api import Detector

    image = tmp_path / "aerial.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8)).save(image)
    det = Detector(SHIPPED, device="cpu")
    (result,) = det.predict(image, conf=0.0, save=False)
    assert det.names[0] == "airplane" and len(result.scores) > 0
    assert (result.boxes[:, 2] <= 420 + 1e-3).all() and (result.boxes[:, 3] <= 300 + 1e-3).all()


@pytest.mark.slow
def test_shipped_weights_reproduce_their_figures_on_nwpu(nwpu_root, monkeypatch, tmp_path):
    """``hmpe val weights=hmpe-n-nwpu`` on NWPU VHR-10's val split gives the figures in metrics.json."""
    from hmpe.api import Detector

    monkeypatch.setenv("HMPE_DATASETS", str(nwpu_root.parent))
    record = json.loads((WEIGHTS_DIR / SHIPPED / SHIPPED_METRICS).read_text())
    metrics = Detector(weights=SHIPPED, device="cpu").val(project=str(tmp_path), name="v")
    for key, stated in record["metrics"].items():
        assert metrics[key] == pytest.approx(stated, abs=2e-3), key
