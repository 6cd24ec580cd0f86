"""No absolute path of the machine that made them: in committed files (results, shipped weights, docs), in
checkpoints and pretrained folders (paths relative to their own folder, shipped datasets and weights by
name); and outputs land under the working directory (``runs/``), never a folder the checkpoint names."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from helpers import REPO, tiny_data, tiny_model_yaml, tiny_train_cfg
from test_export import make_checkpoint

# a machine's folder, as the development machine's runs wrote them (under root, home, work, tmp or check)
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(root|home|work|tmp|check)/[\w.-]")
CHECKED = re.compile(r"^(benchmarks/|hmpe/weights/[^/]+/[^/]+\.json$|docs/|README\.md$|BENCHMARKS\.md$)")
TEXT_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".py", ".txt", ".csv")


def _absolute_strings(tree, where: str = "") -> list[str]:
    """``where: value`` of every string in the nested dicts / lists ``tree`` that is an absolute path (POSIX or
    a Windows drive)."""
    if isinstance(tree, dict):
        return [hit for k, v in tree.items() for hit in _absolute_strings(v, f"{where}.{k}")]
    if isinstance(tree, (list, tuple)):
        return [hit for i, v in enumerate(tree) for hit in _absolute_strings(v, f"{where}[{i}]")]
    if isinstance(tree, str) and (tree.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", tree)):
        return [f"{where}: {tree}"]
    return []


def test_committed_files_carry_no_machine_path():
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [f for f in listed.stdout.splitlines() if CHECKED.match(f) and f.endswith(TEXT_SUFFIXES)]
    assert any(f.startswith("benchmarks/results/") for f in files) and "BENCHMARKS.md" in files
    found = [f"{f}:{n}: {line.strip()[:120]}" for f in files if (REPO / f).is_file()
             for n, line in enumerate((REPO / f).read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if MACHINE_PATH.search(line)]
    assert not found, "absolute paths of a machine (write RUNS/..., runs/..., the dataset name):\n" + "\n".join(found)
    for f in files:
        if f.endswith(".json"):
            json.loads((REPO / f).read_text(encoding="utf-8"))  # still valid after the paths were replaced


def test_shipped_weights_record_the_dataset_by_name():
    config = json.loads((REPO / "hmpe" / "weights" / "hmpe-n-nwpu" / "config.json").read_text(encoding="utf-8"))
    assert not _absolute_strings(config)
    assert config["data_cfg"]["_source"] == "nwpu-vhr10" and "path" not in config["data_cfg"]


def test_checkpoint_records_relative_paths_and_val_writes_under_the_working_directory(tmp_path, monkeypatch):
    """A run on a dataset YAML of the user's: the checkpoint and its pretrained folder carry no absolute path;
    from another working directory val still finds the dataset (relative to the checkpoint's folder) and
    writes to ``./runs/val``, not into the training run's ``project``."""
    from hmpe.api import Detector
    from hmpe.data.tools import data_convert
    from hmpe.engine.train.trainer import Trainer

    work = tmp_path / "work"
    data_convert(tiny_data(num_train=2, num_val=2, imgsz=64), "yolo", work / "ds")
    monkeypatch.chdir(work)
    tiny_model_yaml(work)
    cfg = tiny_train_cfg(tmp_path, data="ds/data.yaml", model="tiny.yaml", epochs=1, imgsz=64, batch=2,
                         val_interval=1, heatmaps_per_epoch=0)
    Trainer(cfg).fit()
    weights = tmp_path / "runs" / "train" / "t" / "weights" / "last.pt"
    raw = torch.load(weights, map_location="cpu", weights_only=False)
    stored = {k: raw[k] for k in ("train_cfg", "data_cfg", "model_cfg")}
    assert not _absolute_strings(stored)
    assert raw["data_cfg"]["_source"] == "../../../../work/ds/data.yaml"  # from runs/train/t/weights
    assert raw["train_cfg"]["project"] == "../../.." and raw["train_cfg"]["model"] == "../../../../work/tiny.yaml"
    shared = Detector(weights=str(weights), device="cpu").save_pretrained(tmp_path / "shared")
    assert not _absolute_strings(json.loads((shared / "config.json").read_text()))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for source in (weights, shared):
        det = Detector(weights=str(source), device="cpu")
        assert "mAP50" in det.val()
        assert det.run_dir.resolve().parent == elsewhere / "runs" / "val"
        assert (det.run_dir / "metrics.json").is_file()
    assert not (tmp_path / "runs" / "val").exists()


def test_val_ignores_the_project_recorded_in_the_checkpoint(tmp_path, monkeypatch, capsys):
    """A checkpoint whose training ``project`` is a folder that cannot be created here (another machine's):
    val writes under ``./runs/val``; an output folder that cannot be created is an error after the figures
    were printed."""
    from hmpe.api import Detector

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    ckpt = make_checkpoint(tmp_path / "tiny.pt", imgsz=64)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["train_cfg"]["project"] = str(blocked / "runs")  # mkdir fails there, whoever runs the test
    torch.save(state, ckpt)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    det = Detector(weights=str(ckpt), device="cpu")
    det.val(batch=2)
    assert det.run_dir.resolve() == cwd / "runs" / "val" / "exp" and (det.run_dir / "metrics.json").is_file()
    capsys.readouterr()
    with pytest.raises(OSError):
        det.val(batch=2, project=str(blocked / "runs"))
    assert "AP50-95" in capsys.readouterr().out  # the summary table came first


def test_shipped_dataset_and_weights_are_recorded_by_name(tmp_path, monkeypatch):
    """nwpu-vhr10 by its name (and its folder relative to the checkpoint), the shipped weights by theirs; a
    checkpoint whose recorded folder is missing (another machine) finds this machine's copy by the name."""
    from hmpe.data.formats import load_data_config
    from hmpe.engine.checkpoint import checkpoint_data_config, load_checkpoint, stored_paths
    from hmpe.utils.shipped import WEIGHTS_DIR

    monkeypatch.setenv("HMPE_DATASETS", str(tmp_path / "there"))
    (tmp_path / "there" / "nwpu-vhr10").mkdir(parents=True)
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "tiny.pt", imgsz=64))
    ckpt["data_cfg"] = load_data_config("nwpu-vhr10")
    ckpt["train_cfg"]["weights"] = str(WEIGHTS_DIR / "hmpe-n-nwpu")
    stored = stored_paths(ckpt, tmp_path / "run" / "weights")
    assert stored["data_cfg"]["_source"] == "nwpu-vhr10" and stored["data_cfg"]["path"] == "../../there/nwpu-vhr10"
    assert stored["train_cfg"]["weights"] == "hmpe-n-nwpu" and not _absolute_strings(stored)
    torch.save(stored, tmp_path / "run.pt")  # beside the run folder: its recorded relative path misses
    monkeypatch.setenv("HMPE_DATASETS", str(tmp_path / "here"))
    (tmp_path / "here" / "nwpu-vhr10").mkdir(parents=True)
    assert checkpoint_data_config(load_checkpoint(tmp_path / "run.pt"))["path"] == str(tmp_path / "here" / "nwpu-vhr10")


def test_ship_weights_writes_no_machine_path(tmp_path, monkeypatch):
    from benchmarks.ship_weights import ship
    from hmpe.utils import shipped

    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path / "weights")
    (tmp_path / "elsewhere" / "train" / "run" / "weights").mkdir(parents=True)
    ckpt = make_checkpoint(tmp_path / "elsewhere" / "train" / "run" / "weights" / "last.pt", imgsz=64)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "ship_weights.py"), "--ckpt", str(ckpt)])
    record = ship(ckpt, "tiny-shipped", "random tiny detector (test)")
    config = json.loads((tmp_path / "weights" / "tiny-shipped" / "config.json").read_text())
    assert not _absolute_strings(config) and not _absolute_strings(record), (config, record)
    assert record["source_checkpoint"] == "RUNS/elsewhere/train/run/weights/last.pt"
    assert record["command"] == "python -m benchmarks.ship_weights --ckpt RUNS/elsewhere/train/run/weights/last.pt"
