"""Fine-tuning from an hmpe checkpoint onto a dataset with other classes (hmpe.engine.train.transfer)."""

from __future__ import annotations

import torch
import yaml

from helpers import tiny_data, tiny_model_cfg
from hmpe.engine.checkpoint import load_checkpoint
from hmpe.engine.train.transfer import transfer_weights
from hmpe.models.detector import build_model
from test_export import make_checkpoint


def _heat_cfg() -> dict:
    """The tiny detector with every class-dependent part: heatmap probe, HIDQ, denoising, class heads."""
    cfg = tiny_model_cfg()
    cfg.update(heatmap={"tau": 0.05}, mohfe={"enabled": True}, hidq={"enabled": True})
    return cfg


def test_finetune_to_other_classes_end_to_end(tmp_path, capsys):
    from hmpe.cli import main

    ckpt_path = make_checkpoint(tmp_path / "src.pt", _heat_cfg(), imgsz=64)  # laid out like the trainer's
    ckpt = load_checkpoint(ckpt_path)

    # the transfer itself: every name-and-shape match kept, the class-dependent tensors fresh
    names3 = ["circle", "square", "triangle"]
    model = build_model(ckpt["model_cfg"], 3)
    report = transfer_weights(model, ckpt, names3, ckpt["model_cfg"], str(ckpt_path))
    state = model.state_dict()
    modules = {k.rsplit(".", 1)[0].split(".")[1] for k in report.reinit}
    assert {"dec_score_head", "denoising_class_embed", "query_selector", "probe"} <= modules, report.reinit
    assert not report.other_init and report.kept == report.total - len(report.reinit)
    kept = [k for k in state if k not in report.reinit and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(state[k], ckpt["model"][k]) for k in kept)
    # same classes (a plain continuation): nothing re-initialised
    same = transfer_weights(build_model(ckpt["model_cfg"], 5), ckpt, ckpt["names"], ckpt["model_cfg"])
    assert same.reinit == [] and same.kept == same.total

    # end to end through the CLI, onto a 3-class dataset
    data = tmp_path / "three.yaml"
    data.write_text(yaml.safe_dump(tiny_data(imgsz=64) | {"classes": 3, "names": names3}))
    capsys.readouterr()
    rc = main(["train", f"weights={ckpt_path}", f"data={data}", "imgsz=64", "epochs=1", "batch=4", "workers=0",
               "heatmaps_per_epoch=0", f"project={tmp_path / 'runs'}", "name=ft"])
    out = capsys.readouterr().out
    assert rc == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("weights "))
    assert "5 -> 3 classes" in line and "re-initialised" in line and "denoising_class_embed" in line, line
    new = load_checkpoint(tmp_path / "runs" / "train" / "ft" / "weights" / "last.pt")
    assert new["names"] == names3 and new["model"]["decoder.denoising_class_embed.weight"].shape[0] == 4
