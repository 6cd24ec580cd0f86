"""The trainer's extension points: callbacks, an externally built model (ModelParts), the criterion's
declared loss groups, the run log (results.csv appended, cut back on resume) and the runtime helpers."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from helpers import tiny_data, tiny_model_cfg, tiny_train_cfg
from hmpe.engine.checkpoint import load_checkpoint
from hmpe.engine.train.optim import iterations_for_budget
from hmpe.engine.train.run_log import append_row, truncate_rows
from hmpe.engine.train.trainer import ModelParts, Trainer, loss_groups
from hmpe.models.detector import build_criterion
from hmpe.models.rtdetr.postprocess import PostProcessor
from hmpe.utils.runtime import increment_run_dir, select_device

NC = 5


class FakeExternal(nn.Module):
    """Shaped like a HF detector: computes its own loss when given targets, returns named heads."""

    def __init__(self, queries: int = 6):
        super().__init__()
        self.queries = queries
        self.backbone = nn.Conv2d(3, 8, 3, stride=4)  # "backbone.*": the backbone lr group
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, queries * (NC + 4))

    def forward(self, images, targets=None):
        feat = self.bn(self.backbone(images)).mean((2, 3))
        out = self.head(feat).view(len(images), self.queries, NC + 4)
        heads = {"pred_logits": out[..., :NC], "pred_boxes": out[..., NC:].sigmoid()}
        if targets is None:
            return heads
        first = torch.stack([t["boxes"][0] for t in targets])  # every tiny image has an object
        onehot = torch.zeros_like(heads["pred_logits"][:, 0])
        onehot[torch.arange(len(targets)), torch.stack([t["labels"][0] for t in targets])] = 1
        loss = (nn.functional.l1_loss(heads["pred_boxes"][:, 0], first)
                + nn.functional.binary_cross_entropy_with_logits(heads["pred_logits"][:, 0], onehot))
        return {**heads, "loss": loss}


class FakeCriterion:
    loss_groups = {"loss_ext": "external"}

    def __call__(self, outputs, targets):
        return {"loss_ext": outputs["loss"]}


class Recorder:
    def __init__(self):
        self.events = []

    def on_train_start(self, trainer):
        self.events.append(("start", trainer.start_epoch))

    def on_epoch_end(self, trainer, epoch, metrics):
        self.events.append(("epoch", epoch, sorted(metrics)[:1], round(trainer.train_stats["loss"], 6)))

    def on_train_end(self, trainer, metrics):
        self.events.append(("end", "mAP50" in metrics))


def _cfg(tmp_path, **over):
    base = dict(data=tiny_data(num_train=4, num_val=2, imgsz=64), imgsz=64, epochs=2, batch=2, val_interval=2,
                heatmaps_per_epoch=0)
    return tiny_train_cfg(tmp_path, **{**base, **over})


def _rows(run_dir):
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_external_model_trains_through_the_loop_with_callbacks(tmp_path):
    torch.manual_seed(0)
    model = FakeExternal()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parts = ModelParts(model, FakeCriterion(), PostProcessor(NC, 10), {"name": "fake-external"})
    rec = Recorder()
    trainer = Trainer(_cfg(tmp_path, ema=True, ema_warmup=2), model=parts, callbacks=[rec, object()])
    assert trainer.model is model and trainer.model_cfg == {"name": "fake-external"}
    assert {g["name"] for g in trainer.optimizer.param_groups} >= {"backbone", "head"}
    metrics = trainer.fit()
    assert "mAP50" in metrics and trainer.iteration == 4  # 2 epochs x 2 batches
    assert not torch.equal(before["head.weight"], model.state_dict()["head.weight"])
    losses = [e[3] for e in rec.events if e[0] == "epoch"]
    assert rec.events == [("start", 0), ("epoch", 0, [], losses[0]), ("epoch", 1, ["AP_large"], losses[1]),
                          ("end", True)]
    rows = _rows(trainer.run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[0]["train/external"]) == pytest.approx(losses[0])
    last = load_checkpoint(trainer.weights_dir / "last.pt")
    assert last["model_cfg"] == {"name": "fake-external"} and last["final"]
    assert torch.equal(last["model"]["head.weight"], trainer.ema.module.state_dict()["head.weight"])


def test_external_model_refuses_weights(tmp_path):
    parts = ModelParts(FakeExternal(), FakeCriterion(), PostProcessor(NC, 10), {"name": "x"})
    with pytest.raises(ValueError, match="weights="):
        Trainer(_cfg(tmp_path, weights="some.pt"), model=parts)


def test_loss_groups_follow_the_declaration():
    crit = build_criterion(tiny_model_cfg(), NC)
    assert crit.loss_groups == {"loss_vfl": "loss_vfl", "loss_bbox": "loss_bbox", "loss_giou": "loss_giou"}
    crit._weighted({"loss_vfl": torch.tensor(1.0), "loss_bbox": torch.tensor(2.0)}, "_dn_3")
    assert crit.loss_groups["loss_vfl_dn_3"] == "loss_vfl" and crit.loss_groups["loss_bbox_dn_3"] == "loss_bbox"
    host = {"loss_vfl": 1.0, "loss_vfl_dn_3": 2.0, "loss_probe_cls": 4.0}
    assert loss_groups(host, crit.loss_groups) == {"loss_vfl": 3.0, "loss_probe_cls": 4.0}


def test_results_csv_appends_widens_and_truncates(tmp_path):
    append_row(tmp_path, {"epoch": 1, "train/loss": 2.0})
    append_row(tmp_path, {"epoch": 2, "train/loss": 1.5})
    assert (tmp_path / "results.csv").read_text() == "epoch,train/loss\n1,2.0\n2,1.5\n"
    append_row(tmp_path, {"epoch": 3, "train/loss": 1.0, "val/mAP50": 0.5})  # a new column: one rewrite
    assert (tmp_path / "results.csv").read_text().startswith("epoch,train/loss,val/mAP50\n1,2.0,\n2,1.5,\n")
    append_row(tmp_path, {"epoch": 4, "train/loss": 0.5})
    assert [r["val/mAP50"] for r in _rows(tmp_path)] == ["", "", "0.5", ""]
    truncate_rows(tmp_path, 2)
    assert (tmp_path / "results.csv").read_text() == "epoch,train/loss,val/mAP50\n1,2.0,\n2,1.5,\n"


def test_resume_cuts_results_csv_back_to_the_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, epochs=3, val_interval=10)
    def parts(names=None):  # as a factory (names given) and as a built object
        assert names in (None, tiny_data()["names"])
        return ModelParts(FakeExternal(), FakeCriterion(), PostProcessor(NC, 10), {"name": "fake"})

    # a resume state after epoch 1 (0-based 0), as an interrupted run leaves it, with three rows on disk
    first = Trainer(dict(cfg, name="again", epochs=1), model=parts())
    first.fit()
    ckpt = first.checkpoint(0, {})
    ckpt["epochs"] = ckpt["train_cfg"]["epochs"] = 3
    torch.save(ckpt, first.weights_dir / "resume.pt")
    append_row(first.run_dir, {"epoch": 2, "time_s": 0.0})
    append_row(first.run_dir, {"epoch": 3, "time_s": 0.0})
    resumed = Trainer(dict(cfg, resume=str(first.weights_dir / "resume.pt")), model=parts,
                      explicit_keys=("epochs",))
    assert resumed.start_epoch == 1 and [r["epoch"] for r in _rows(first.run_dir)] == ["1"]
    resumed.fit()
    assert [r["epoch"] for r in _rows(first.run_dir)] == ["1", "2", "3"]


def test_runtime_helpers(tmp_path):
    assert select_device("cpu").type == "cpu" and select_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=cuda"):
            select_device("cuda")
    assert increment_run_dir(tmp_path, "train", "a") == tmp_path / "train" / "a"
    (tmp_path / "train" / "a").mkdir(parents=True)
    assert increment_run_dir(tmp_path, "train", "a") == tmp_path / "train" / "a2"
    assert increment_run_dir(tmp_path, "train", "a", exist_ok=True) == tmp_path / "train" / "a"
    assert iterations_for_budget(60, 7, 10) == 85 and iterations_for_budget(5, 7, 10, min_iters=11) == 11
