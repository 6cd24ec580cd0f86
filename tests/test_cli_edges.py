"""Edges a user meets at the command line: no silent no-ops."""

from __future__ import annotations

from helpers import tiny_data, tiny_model_cfg, tiny_train_cfg
from hmpe.engine.train.trainer import Trainer


def test_resuming_a_complete_run_says_so_and_does_nothing(tmp_path, capsys, monkeypatch):
    over = dict(epochs=1, imgsz=64, batch=2, val_interval=1, data=tiny_data(num_train=2, num_val=2, imgsz=64))
    done = Trainer(tiny_train_cfg(tmp_path, **over), tiny_model_cfg()).fit()
    last = tmp_path / "runs" / "train" / "t" / "weights" / "last.pt"
    stamp = last.stat().st_mtime_ns
    capsys.readouterr()

    def no_training(*args, **kwargs):
        raise AssertionError("a completed run was trained again")

    monkeypatch.setattr(Trainer, "train_one_epoch", no_training)
    again = Trainer(tiny_train_cfg(tmp_path, resume=str(last))).fit()
    out = capsys.readouterr().out
    assert "nothing to resume" in out and "already completed all 1 epochs" in out and "weights=" in out
    assert again["mAP50_95"] == done["mAP50_95"] and last.stat().st_mtime_ns == stamp


def test_version_and_cfg(capsys):
    import hmpe
    from hmpe.cli import main

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"hmpe {hmpe.__version__}"
    assert main(["cfg"]) == 0
    out = capsys.readouterr().out
    assert "# hmpe train" in out and "epochs: 10" in out and "# training epochs" in out  # keys with meanings
    assert main(["cfg", "model=hmpe-n"]) == 0
    out = capsys.readouterr().out
    assert "name: hmpe-n" in out and "heatmap:" in out and "model: rtdetr-n" not in out
    assert main(["cfg", "modle=hmpe-n"]) == 2 and "did you mean 'model'" in capsys.readouterr().err
