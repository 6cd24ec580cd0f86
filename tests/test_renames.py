"""Renamed keys (hmpe.utils.renames): no key has two meanings; an old name typed by a user still works, as the new
one, with a one-line deprecation warning naming the new key; a stored config with the old names loads silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hmpe.cli import main
from hmpe.utils.config import apply_overrides, load_model_config, parse_overrides
from hmpe.utils.keys import TASKS, UsageError, check_task_args
from hmpe.utils.model_keys import MODEL
from hmpe.utils.renames import RENAMED, upgrade_model_config

MODEL_RENAMES = [r for r in RENAMED if r.task is None]
VALUES = {"heatmap.alpha": "design", "matcher.alpha": 0.3, "matcher.gamma": 1.5, "loss.alpha": 0.6,
          "loss.gamma": 1.0}
FROZEN = Path(__file__).parent / "data" / "resolved_model_configs.json"


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def test_no_model_key_name_has_two_meanings_and_every_rename_lands_on_a_key():
    for r in MODEL_RENAMES:
        section, old = r.old.split(".")
        new_section, new = r.new.split(".")
        assert section == new_section and new in {k.name for k in MODEL[section]}, r
        assert old not in {k.name for k in MODEL[section]}, r  # the old name is not a key any more
    assert set(VALUES) == {r.old for r in MODEL_RENAMES}
    for old in ("alpha", "gamma"):  # each was a key of more than one section, with another meaning in each
        assert not [sec for sec, keys in MODEL.items() if old in {k.name for k in keys}]
    assert next(k for k in TASKS["bench"] if k.name == "sizes").type.kind == "list"


@pytest.mark.parametrize("rename", MODEL_RENAMES, ids=lambda r: r.old)
def test_an_old_model_key_on_the_command_line_warns_once_and_means_the_new_one(rename, capsys):
    value = VALUES[rename.old]
    old = parse_overrides([f"{rename.old}={value}", "epochs=2"], "train")
    assert parse_overrides([f"{rename.old}={value}"], "train")  # read again (check, then run): no second line
    assert _warnings(capsys.readouterr().err) == [f"warning: {rename.old} is deprecated: use {rename.new}"]
    new = parse_overrides([f"{rename.new}={value}", "epochs=2"], "train")
    assert old == new and not capsys.readouterr().err
    section, key = rename.old.split(".")
    assert parse_overrides([f"{section}={{{key}: {value}}}"], "bench") == {section: {rename.new.split(".")[1]: value}}
    base = load_model_config("rtdetr-n-heat")
    assert apply_overrides(base, {rename.old: value}) == apply_overrides(base, {rename.new: value})


@pytest.mark.parametrize("rename", MODEL_RENAMES, ids=lambda r: r.old)
def test_old_and_new_name_together_exit_2_with_one_line(rename, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    value = VALUES[rename.old]
    assert main(["train", f"{rename.old}={value}", f"{rename.new}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{rename.old} and {rename.new} both given" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_model_yaml_with_the_old_names_gives_the_config_of_the_new_names(tmp_path, capsys):
    (tmp_path / "old.yaml").write_text("base: rtdetr-n-heat\nheatmap: {alpha: design}\n"
                                       "matcher: {alpha: 0.3, gamma: 1.5}\nloss: {alpha: 0.6, gamma: 1.0}\n")
    (tmp_path / "new.yaml").write_text("base: rtdetr-n-heat\nheatmap: {cam_weights: design}\n"
                                       "matcher: {focal_alpha: 0.3, focal_gamma: 1.5}\n"
                                       "loss: {vfl_alpha: 0.6, vfl_gamma: 1.0}\n")
    new = load_model_config(str(tmp_path / "new.yaml"))
    assert not capsys.readouterr().err
    old = load_model_config(str(tmp_path / "old.yaml"))
    assert {**old, "name": "new"} == new
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 5 and all("old.yaml" in line for line in lines), lines
    assert [line.split(" is deprecated: use ")[1].split()[0] for line in lines] == [r.new for r in MODEL_RENAMES]

    from hmpe.models.detector import build_criterion, build_model

    model, crit = build_model(old, 3), build_criterion(old, 3)
    assert model.heatmap.cam_weights == "design"
    assert (crit.matcher.alpha, crit.matcher.gamma, crit.alpha, crit.gamma) == (0.3, 1.5, 0.6, 1.0)


def test_a_model_yaml_with_old_and_new_name_is_one_error_naming_the_file(tmp_path):
    (tmp_path / "both.yaml").write_text("base: rtdetr-n-heat\nheatmap: {alpha: design, cam_weights: design}\n")
    with pytest.raises(ValueError, match=r"heatmap\.alpha and heatmap\.cam_weights both given in .*both\.yaml"):
        load_model_config(str(tmp_path / "both.yaml"))


def test_bench_imgsz_list_is_sizes_with_a_warning(capsys):
    assert parse_overrides(["imgsz=[64,96]"], "bench") == {"sizes": [64, 96]}
    assert _warnings(capsys.readouterr().err) == ["warning: imgsz=[64, 96] is deprecated: use sizes=[64, 96]"]
    for argv, task in ((["imgsz=64x96"], "bench"), (["imgsz=[64,96]"], "export"), (["sizes=[64,96]"], "bench")):
        args = parse_overrides(argv, task)
        check_task_args(task, args, files=False)
        assert args == {argv[0].split("=")[0]: yaml.safe_load(argv[0].split("=")[1])}  # taken as typed
    assert not capsys.readouterr().err
    with pytest.raises(UsageError, match="imgsz= and sizes=.*drop imgsz="):
        check_task_args("bench", {"imgsz": 64, "sizes": [64, 96]})
    for bad in ([64, 100], [64, 96, 128], ["64x96"]):  # export: one [h, w]
        with pytest.raises(UsageError, match=r"imgsz=\["):
            check_task_args("export", {"imgsz": bad})


def test_bench_save_file_is_out_with_a_warning(capsys):
    # save is a switch in predict and heatmap; bench's file is out=, as export's
    assert parse_overrides(["save=r.json"], "bench") == {"out": "r.json"}
    assert _warnings(capsys.readouterr().err) == ["warning: save=r.json is deprecated: use out=r.json"]
    assert parse_overrides(["save=false"], "predict") == {"save": False}
    assert _warnings(capsys.readouterr().err) == []


@pytest.mark.parametrize("task", ["train", "val", "predict", "heatmap", "explore"])
def test_imgsz_is_one_size_and_a_list_names_the_keys_that_take_several(task, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main([task, "imgsz=[64,96]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "imgsz=[64, 96]: not an image size" in err, err
    assert "multi_scale=[...] (train)" in err and "sizes=[...] (bench)" in err


def test_export_imgsz_takes_hxw_and_hw_alike():
    from hmpe.engine.deploy.export import export_size

    ckpt = {"train_cfg": {"imgsz": 64}}
    assert export_size(ckpt, "64x96") == export_size(ckpt, [64, 96]) == (64, 96)
    assert export_size(ckpt) == export_size(ckpt, 64) == (64, 64)


def test_a_stored_checkpoint_with_the_old_names_loads_without_a_warning(tmp_path, capsys, recwarn):
    import numpy as np
    from PIL import Image

    from helpers import tiny_model_cfg
    from hmpe.api import Detector
    from test_export import make_checkpoint

    cfg = {**tiny_model_cfg(), "heatmap": {"tau": 0.05, "alpha": "design"},
           "matcher": {"cost_class": 2, "alpha": 0.3, "gamma": 1.5}, "loss": {"alpha": 0.6, "gamma": 1.0}}
    path = make_checkpoint(tmp_path / "old-names.pt", model_cfg=cfg, imgsz=64)
    capsys.readouterr()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    det = Detector(weights=str(path), device="cpu")
    det.predict(tmp_path / "a.png", save=False)
    assert det._ensure_model().heatmap.cam_weights == "design"
    assert "deprecated" not in capsys.readouterr().err and not [w for w in recwarn if "deprecat" in str(w.message)]


def test_stored_configs_of_before_the_rename_upgrade_silently(capsys):
    """The frozen preset configs (tests/data) predate the rename; the shipped weights (since 2026-12-07) carry the
    new name, and both build without a warning."""
    from hmpe.engine.checkpoint import load_checkpoint
    from hmpe.models.detector import build_model

    frozen = json.loads(FROZEN.read_text())
    assert frozen["rtdetr-n-heat"]["heatmap"]["alpha"] == "gradcam++"
    assert upgrade_model_config(frozen["rtdetr-n-heat"])["heatmap"]["cam_weights"] == "gradcam++"
    ckpt = load_checkpoint("hmpe-n-nwpu")
    assert ckpt["model_cfg"]["heatmap"]["cam_weights"] == "gradcam++" and "alpha" not in ckpt["model_cfg"]["heatmap"]
    assert build_model(ckpt["model_cfg"], len(ckpt["names"])).heatmap.cam_weights == "gradcam++"
    assert not capsys.readouterr().err


def test_hmpe_cfg_shows_the_new_names_and_the_renames(capsys):
    assert main(["cfg"]) == 0
    out = capsys.readouterr().out
    keys = [line.split()[0] for line in out.splitlines() if " # " in line and not line.startswith("#")]
    assert "heatmap.cam_weights" in keys and "heatmap.alpha" not in keys and "matcher.focal_alpha" in keys
    assert "heatmap.alpha -> heatmap.cam_weights" in out and "imgsz=[...] -> sizes=[...] (hmpe bench)" in out
    assert "# hmpe data" in out
    assert main(["cfg", "model=rtdetr-n-heat"]) == 0
    assert "cam_weights: gradcam++" in capsys.readouterr().out
