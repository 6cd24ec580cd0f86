"""Ctrl-C during training (issue 35): the run stops between two steps, leaves a resumable ``last.pt`` (mid-epoch
included, in epoch 1 too) and ends with one line; resuming it trains what the uninterrupted run trained."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
import torch

from helpers import tiny_data, tiny_model_cfg, tiny_model_yaml, tiny_train_cfg
from hmpe.engine.checkpoint import load_checkpoint
from hmpe.engine.train.interrupt import StopFlag
from hmpe.engine.train.trainer import Trainer, TrainingInterrupted

# 4 images in batches of 2: 2 iterations an epoch, 4 in all; augmentation, multi-scale, EMA and a loader
# worker, so that every random stream an epoch draws from has to continue where the interrupted run stopped
OVER = dict(data=tiny_data(num_train=4, num_val=2, imgsz=64, overfit=False), imgsz=64, epochs=2, batch=2,
            augment=True, multi_scale=[32, 64], ema=True, ema_warmup=3, val_interval=2, heatmaps_per_epoch=0,
            workers=1)


def _ctrl_c_after(monkeypatch, iteration: int) -> None:
    """A real SIGINT to this process when the training step that makes ``iteration`` is under way."""
    step = Trainer.train_step

    def pressed(self, images, targets):
        out = step(self, images, targets)
        if self.iteration == iteration:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", pressed)


def _rows(run) -> list[dict]:
    with open(run / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(f)]


def _weights(run) -> dict:
    return load_checkpoint(run / "weights" / "last.pt")


def test_ctrl_c_in_epoch_1_saves_last_pt_and_resume_is_exact(tmp_path, monkeypatch):
    straight = Trainer(tiny_train_cfg(tmp_path, name="straight", **OVER), tiny_model_cfg()).fit()
    with monkeypatch.context() as m:
        _ctrl_c_after(m, 1)
        with pytest.raises(TrainingInterrupted) as e:
            Trainer(tiny_train_cfg(tmp_path, name="stopped", **OVER), tiny_model_cfg()).fit()
    last = tmp_path / "runs" / "train" / "stopped" / "weights" / "last.pt"
    assert str(e.value) == f"interrupted at epoch 1, iteration 1/2; resume with: hmpe train resume={last}"
    saved = load_checkpoint(last)
    assert saved["iteration"] == 1 and saved["epoch_progress"]["batches"] == 1 and "optimizer" in saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    resumed = Trainer(tiny_train_cfg(tmp_path, resume=str(last))).fit()
    a, b = _weights(tmp_path / "runs" / "train" / "straight"), _weights(last.parent.parent)
    assert b["final"] and a["iteration"] == b["iteration"] == 4
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # the EMA weights, bit for bit
    assert resumed["mAP50_95"] == straight["mAP50_95"]
    # results.csv: one row per epoch, the interrupted epoch's mean losses over all its batches
    assert _rows(last.parent.parent) == _rows(tmp_path / "runs" / "train" / "straight")


def test_ctrl_c_at_the_command_line_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from hmpe.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["train", f"model={tiny_model_yaml(tmp_path)}", f"data={json.dumps(tiny_data(num_train=4, imgsz=64))}",
            "imgsz=64", "epochs=2", "batch=2", "workers=0", "amp=false", "val_interval=2", "heatmaps_per_epoch=0"]
    with monkeypatch.context() as m:
        _ctrl_c_after(m, 3)  # mid-epoch 2
        assert main(argv) == 130
        err = capsys.readouterr().err.strip()
        _ctrl_c_after(m, 1)
        with pytest.raises(TrainingInterrupted):  # verbose=true: the traceback
            main(argv + ["verbose=true", "name=verbose"])
    last = os.path.join("runs", "train", "exp", "weights", "last.pt")
    assert err.splitlines()[-1] == (f"hmpe train: interrupted at epoch 2, iteration 1/2; "
                                    f"resume with: hmpe train resume={last}")
    assert "Traceback" not in err
    assert main(["train", f"resume={last}"]) == 0
    assert load_checkpoint(last)["final"] and load_checkpoint(last)["iteration"] == 4


def test_a_second_ctrl_c_interrupts_at_once():
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_another_command_is_one_line(tmp_path, monkeypatch, capsys):
    from hmpe.api import Detector
    from hmpe.cli import main

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Detector, "predict", pressed)
    (tmp_path / "best.pt").write_bytes(b"")  # never read: predict is interrupted first
    assert main(["predict", str(tmp_path), f"weights={tmp_path / 'best.pt'}"]) == 130
    assert capsys.readouterr().err.strip() == "hmpe predict: interrupted"
