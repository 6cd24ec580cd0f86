"""Mask diagnostics as first-class validation outputs: a heatmap model's results.csv logs, per level, the
fraction of background cells its mask zeroes and of object cells it keeps, and the gate lambda of eq. 4."""

import csv

import pytest
import torch

from helpers import tiny_model_cfg, tiny_train_cfg
from hmpe.engine.train.trainer import Trainer


@pytest.mark.parametrize("tau_mode,tau", [("absolute", 0.05), ("quantile", 0.5)])
def test_results_csv_logs_the_mask_per_level(tmp_path, tau_mode, tau):
    model_cfg = tiny_model_cfg()
    model_cfg["heatmap"] = {"tau": tau, "tau_mode": tau_mode}
    cfg = tiny_train_cfg(tmp_path, epochs=1, imgsz=64, batch=2, heatmaps_per_epoch=0)
    trainer = Trainer(cfg, model_cfg)
    metrics = trainer.fit()
    with open(trainer.run_dir / "results.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    for level in ("S3", "S4", "S5"):
        bg, obj = float(row[f"val/mask_bg_masked/{level}"]), float(row[f"val/mask_obj_hot/{level}"])
        assert 0.0 <= bg <= 1.0 and 0.0 <= obj <= 1.0
        assert metrics[f"mask_bg_masked/{level}"] == pytest.approx(bg, abs=1e-6)
        gate = float(row[f"val/gate/{level}"])  # lambda of eq. 4, the EMA weights' (the model validated)
        lam = torch.sigmoid(trainer.eval_model().heatmap.gate[("S3", "S4", "S5").index(level)]).item()
        assert 0.0 < gate < 1.0 and gate == pytest.approx(lam, abs=1e-6)
    if tau_mode == "quantile":  # at least half of every level's cells masked, most of them background
        assert float(row["val/mask_bg_masked/S3"]) >= 0.45


def test_models_without_heatmap_log_no_mask_columns(tmp_path):
    trainer = Trainer(tiny_train_cfg(tmp_path, epochs=1, imgsz=64, batch=2), tiny_model_cfg())
    metrics = trainer.fit()
    assert not any(k.startswith(("mask_", "gate/")) for k in metrics)
    assert "mask_" not in (trainer.run_dir / "results.csv").read_text()
