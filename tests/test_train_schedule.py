"""Short-schedule training switches: augmentation by epoch (augment_epochs), warm-up and EMA ramp sized in
epochs, the fused AdamW step."""

import math

import pytest

from conftest import tiny_model_cfg, tiny_train_cfg
from hmpe.engine.trainer import Trainer
from hmpe.utils.keys import UsageError, check_task_args

FLIP = {"photometric": False, "zoom_out": False, "iou_crop": False, "hflip": True}


class Record:
    """Callback: the training pipeline and the last learning rate of every epoch."""

    def __init__(self):
        self.pipelines, self.lrs = [], []

    def on_epoch_end(self, trainer, epoch, metrics):
        strong, _, plain = trainer.pipelines
        t = trainer.train_set.transforms
        self.pipelines.append("strong" if t is strong else "plain" if t is plain else "?")
        self.lrs.append(trainer.train_stats["lr"])


def _fit(tmp_path, **over):
    rec = Record()
    cfg = tiny_train_cfg(tmp_path, **{"epochs": 4, "imgsz": 64, "batch": 2, "val_interval": 10_000, **over})
    trainer = Trainer(cfg, tiny_model_cfg(), callbacks=[rec])
    trainer.fit()
    return trainer, rec


def test_augment_epochs_switches_the_pipeline_by_epoch(tmp_path):
    trainer, rec = _fit(tmp_path, augment=FLIP, augment_epochs=[0.25, 0.75])
    assert rec.pipelines == ["plain", "strong", "strong", "plain"]
    _, rec_all = _fit(tmp_path / "all", augment=FLIP)  # no window: augmentation every epoch
    assert rec_all.pipelines == ["strong"] * 4


def test_warmup_and_ema_ramp_in_epochs(tmp_path):
    trainer, rec = _fit(tmp_path, warmup_epochs=1.0, ema=True, ema_warmup_epochs=0.5)
    n = len(trainer.train_loader)  # 2 iterations per epoch
    assert rec.lrs[0] == pytest.approx(trainer.cfg["lr"])  # warm-up over after exactly one epoch
    assert trainer.ema.warmup == max(1, round(0.5 * n))
    _, rec_iters = _fit(tmp_path / "iters", warmup_iters=100)  # capped at half the run: 4 of 8 iterations
    assert rec_iters.lrs[0] == pytest.approx(trainer.cfg["lr"] * n / 4)


def test_fused_adamw(tmp_path):
    trainer = Trainer(tiny_train_cfg(tmp_path, epochs=1, imgsz=64, batch=2), tiny_model_cfg())
    assert trainer.optimizer.defaults["fused"] is True


@pytest.mark.parametrize("bad", [[0.8, 0.2], [0.1], "early", [0, 1.5]])
def test_augment_epochs_is_checked(bad):
    with pytest.raises(UsageError, match="augment_epochs"):
        check_task_args("train", {"augment_epochs": bad})
    check_task_args("train", {"augment_epochs": [0, 1]})


def test_time_limit_sizes_the_run_in_iterations(tmp_path, monkeypatch):
    """time_limit: after the first epoch the budget is sized in iterations at the measured pace; the last epoch
    stops part-way, the cosine ends on the last iteration, and the checkpoint carries the budget for a resume."""
    import hmpe.engine.trainer as trainer_mod
    from hmpe.engine.checkpoint import load_checkpoint

    paces = []

    def five_iterations(budget_s, elapsed_s, done_iters, min_iters=1):
        paces.append((budget_s, done_iters))
        return 5  # 2.5 epochs of 2 iterations

    monkeypatch.setattr(trainer_mod, "iterations_for_budget", five_iterations)
    trainer, rec = _fit(tmp_path, time_limit=0.5, epochs=1000, warmup_iters=1, final_lr_factor=0.1)
    n = len(trainer.train_loader)
    assert n == 2 and paces == [(30.0, 2)]
    assert trainer.epochs == 3 and trainer.iteration == 5 and trainer.total_iters == 5
    assert rec.lrs[-1] == pytest.approx(trainer.cfg["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 4))))
    ckpt = load_checkpoint(trainer.weights_dir / "last.pt")
    assert ckpt["budget_iters"] == 5 and ckpt["epochs"] == 3
