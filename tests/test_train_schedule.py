"""Short-schedule training switches: augmentation by epoch (augment_epochs), warm-up and EMA ramp sized in
epochs, the fused AdamW step, time_limit sizing (re-sized after every epoch under a fake clock)."""

import math
from contextlib import nullcontext

import pytest
import torch

from helpers import tiny_model_cfg, tiny_train_cfg
from hmpe.engine.train.trainer import Trainer
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
    """time_limit: after every epoch until the budget is spent, the run is sized in iterations at the measured
    pace; the last epoch stops part-way, the cosine ends on the last iteration, and the checkpoint carries the
    budget for a resume."""
    import hmpe.engine.train.optim as optim
    from hmpe.engine.checkpoint import load_checkpoint

    paces = []

    def five_iterations(budget_s, elapsed_s, done_iters, min_iters=1, pace_s=None):
        paces.append((budget_s, done_iters))
        return 5  # 2.5 epochs of 2 iterations

    monkeypatch.setattr(optim, "iterations_for_budget", five_iterations)
    trainer, rec = _fit(tmp_path, time_limit=0.5, epochs=1000, warmup_iters=1, final_lr_factor=0.1)
    n = len(trainer.train_loader)
    assert n == 2 and paces == [(30.0, 2), (30.0, 4)]  # not after the third epoch: the budget is spent
    assert trainer.epochs == 3 and trainer.iteration == 5 and trainer.total_iters == 5
    # re-sized at iteration 2 from 2000 iterations (warm-up 1): the progress runs on from 1/1999 to 1 at 5
    p0 = 1 / 1999
    progress = p0 + (1 - p0) * (4 - 2) / (5 - 2)
    assert rec.lrs[-1] == pytest.approx(trainer.cfg["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))
    ckpt = load_checkpoint(trainer.weights_dir / "last.pt")
    assert ckpt["budget_iters"] == 5 and ckpt["epochs"] == 3 and ckpt["time_budget"]["lr_anchor"] == [2, p0]


class IterationClock:
    """``time`` for hmpe.engine.train.optim whose ``perf_counter`` reads the trainer's progress: the first iteration
    (the first epoch: one batch of 4 images) takes ``first`` seconds, every later one ``later`` (the rest: no time)."""

    def __init__(self, first: float, later: float):
        self.first, self.later, self.trainer = first, later, None

    def perf_counter(self) -> float:
        n = self.trainer.iteration if self.trainer is not None else 0
        return self.first * min(n, 1) + self.later * max(0, n - 1)


def _timed_fit(tmp_path, monkeypatch, clock, stop_after=None, **over):
    """A time_limit run of 30 s under ``clock``: (trainer, the lr of every step, the sizes it logged)."""
    import hmpe.engine.train.optim as optim

    lrs, sizes = [], []
    set_lr = Trainer._set_lr

    def recording_set_lr(self, total_iters):
        set_lr(self, total_iters)
        lrs.append(self.optimizer.param_groups[0]["lr"])

    def recording_log(msg):
        if msg.startswith("time_limit"):
            sizes.append(int(msg.split("-> ")[1].split()[0]))

    def interrupt(self, epoch, *a, **k):
        if epoch + 1 == stop_after:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(optim, "time", clock)
        m.setattr(Trainer, "_set_lr", recording_set_lr)
        m.setattr(Trainer, "log", staticmethod(recording_log))
        if stop_after is not None:
            m.setattr(Trainer, "log_epoch", interrupt)
        cfg = tiny_train_cfg(tmp_path, **{"epochs": 1000, "imgsz": 64, "batch": 4, "val_interval": 10_000,
                                          "time_limit": 0.5, "warmup_iters": 1, **over})
        trainer = clock.trainer = Trainer(cfg, None if "resume" in over else tiny_model_cfg())
        assert len(trainer.train_loader) == 1
        with pytest.raises(KeyboardInterrupt) if stop_after is not None else nullcontext():
            trainer.fit()
    return trainer, lrs, sizes


def test_time_limit_sizes_up_when_later_epochs_are_faster_and_resumes_exactly(tmp_path, monkeypatch):
    """A slow first epoch (10 s, a busy machine) sizes a 30 s budget to 3 iterations; the second (5 s) re-sizes it
    to 5, which fill the budget, and the lr never jumps back up. Interrupted after epoch 2 and resumed, the
    checkpoint's time_budget (seconds used, pace reference, lr anchor) gives the same sizes, lr at every step and
    weights."""
    from hmpe.engine.checkpoint import load_checkpoint

    clock = IterationClock(first=10.0, later=5.0)
    straight, lrs, sizes = _timed_fit(tmp_path / "a", monkeypatch, clock)
    assert sizes == [3, 5]  # after epoch 1: 1 + 20 s / 10; after epoch 2: 2 + 15 s / 5; then unchanged
    assert straight.iteration == 5 and straight.epochs == 5 and clock.perf_counter() == pytest.approx(30.0)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(lrs, lrs[1:])), lrs  # re-sizing stretches the schedule
    assert lrs[-1] < 0.2 * straight.cfg["lr"]  # which still ends near its final factor

    first, lrs_first, _ = _timed_fit(tmp_path / "b", monkeypatch, IterationClock(10.0, 5.0), stop_after=2)
    last = first.weights_dir / "last.pt"
    assert load_checkpoint(last)["time_budget"]["elapsed_s"] == pytest.approx(15.0)
    resumed, lrs_rest, _ = _timed_fit(tmp_path / "b", monkeypatch, IterationClock(10.0, 5.0), resume=str(last))
    assert (resumed.iteration, resumed.epochs) == (5, 5)
    assert lrs_first + lrs_rest == pytest.approx(lrs, rel=1e-12)
    a = load_checkpoint(straight.weights_dir / "last.pt")["model"]
    b = load_checkpoint(last)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_limit_sizes_down_when_later_epochs_are_slower(tmp_path, monkeypatch):
    """A fast first epoch (5 s) sizes a 30 s budget to 6 iterations; at 10 s each after it, the second epoch
    re-sizes the run to 3 (it ends after 25 s, not after 55)."""
    clock = IterationClock(first=5.0, later=10.0)
    trainer, lrs, sizes = _timed_fit(tmp_path, monkeypatch, clock)
    assert sizes == [6, 3] and trainer.iteration == 3 and trainer.epochs == 3
    assert clock.perf_counter() == pytest.approx(25.0)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(lrs, lrs[1:])), lrs
