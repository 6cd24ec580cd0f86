"""End-to-end training: a tiny detector learns, and resume is exact."""

import pytest
import torch

from helpers import tiny_data, tiny_model_cfg, tiny_train_cfg
from hmpe.engine.checkpoint import load_checkpoint
from hmpe.engine.train.trainer import Trainer


def test_tiny_detector_overfits_four_images(tmp_path):
    metrics = Trainer(tiny_train_cfg(tmp_path, plots=True), tiny_model_cfg()).fit()
    assert metrics["mAP50"] >= 0.9, metrics
    run = tmp_path / "runs" / "train" / "t"
    for f in ("results.csv", "results.png", "args.yaml", "weights/last.pt", "weights/best.pt", "pr_curve.png",
              "confusion_matrix.png"):
        assert (run / f).is_file(), f


FIGURES = ("results.png", "pr_curve.png", "f1_curve.png", "confusion_matrix.png")


def test_plots_false_keeps_the_figures_out_of_val(tmp_path, monkeypatch):
    """``plots=false`` in ``hmpe val`` (training: tests/test_train.py::test_resume_is_exact's runs)."""
    from hmpe.api import Detector
    from test_export import make_checkpoint

    monkeypatch.chdir(tmp_path)
    det = Detector(weights=str(make_checkpoint(tmp_path / "tiny.pt")), device="cpu")
    det.val(name="off", plots=False)
    det.val(name="on")
    assert (tmp_path / "runs/val/off/metrics.json").is_file() and not list((tmp_path / "runs/val/off").glob("*.png"))
    assert all((tmp_path / "runs/val/on" / f).is_file() for f in FIGURES[1:])


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_exact(tmp_path, monkeypatch):
    over = dict(epochs=2, augment=True, ema=True, ema_warmup=5, multi_scale=[96, 128], val_interval=1,
                data=tiny_data(num_train=6, num_val=3, overfit=False))
    straight = Trainer(tiny_train_cfg(tmp_path, name="straight", **over), tiny_model_cfg()).fit()
    run = tmp_path / "runs" / "train" / "straight"  # the helper's plots=False: the run without its figures
    assert (run / "results.csv").is_file() and not [f for f in FIGURES if (run / f).exists()]

    class Interrupt(Exception):
        pass

    def stop_after_first(self, epoch, *a, **k):
        raise Interrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "log_epoch", stop_after_first)
        with pytest.raises(Interrupt):
            Trainer(tiny_train_cfg(tmp_path, name="resumed", **over), tiny_model_cfg()).fit()
    last = tmp_path / "runs" / "train" / "resumed" / "weights" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 0
    resumed = Trainer(tiny_train_cfg(tmp_path, resume=str(last))).fit()

    a = load_checkpoint(tmp_path / "runs" / "train" / "straight" / "weights" / "last.pt")
    b = load_checkpoint(last)
    assert a["epoch"] == b["epoch"] == 1 and a["iteration"] == b["iteration"]
    assert a["final"] and b["final"] and "optimizer" not in a  # a finished run keeps the EMA weights only
    assert _states_equal(a["model"], b["model"])
    assert straight["mAP50_95"] == resumed["mAP50_95"] and straight["mAP50"] == resumed["mAP50"]


def test_channels_last_is_the_same_training_in_another_layout(tmp_path):
    """``channels_last`` (default): NHWC conv weights and images, the same losses up to float rounding, and
    checkpoints that load into a model built in the default layout."""
    from itertools import islice

    from hmpe.models.detector import build_model

    losses = {}
    for layout in (False, True):
        cfg = tiny_train_cfg(tmp_path, name=f"nhwc-{layout}", epochs=1, channels_last=layout, ema=True)
        trainer = Trainer(cfg, tiny_model_cfg())
        convs = [m.weight for m in trainer.model.modules()  # [C_out, C_in/groups > 1, k, k]: the layouts differ
                 if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1 and m.weight.shape[1] > 1]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) == layout for w in convs)
        losses[layout] = [trainer.train_step(images, targets)["loss"]
                          for images, targets in islice(iter(trainer.train_loader), 3)]
        fresh = build_model(tiny_model_cfg(), len(trainer.names))
        fresh.load_state_dict(trainer.ema.module.state_dict())
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
