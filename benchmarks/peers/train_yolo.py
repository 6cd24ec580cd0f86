"""Part B's YOLO11n row: ultralytics' own trainer, schedule and mosaic, on a YOLO-format copy of the data.

A FIXED epoch count that fits the minutes (so its schedule and close_mosaic are not cut short):
``--yolo-epochs N``, or calibrated by timing a two-epoch run first (its second epoch; not counted).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import yaml

from hmpe.data.tools import data_convert
from hmpe.utils.config import load_yaml
from benchmarks.peers.models import require
from benchmarks.peers.curve import yolo_curve
from benchmarks.peers.scoring import score_yolo


def ultralytics_data_yaml(data, workdir: Path) -> Path:
    """A YOLO-format copy (``hmpe data convert``) and an ultralytics data YAML with an absolute path."""
    out = workdir / "yolo-data"
    if not (out / "data.yaml").exists():
        data_convert(data, "yolo", out, splits=["train", "val"])
    cfg = load_yaml(out / "data.yaml")
    ul = {"path": str(out.resolve()), "train": cfg["train"], "val": cfg["val"],
          "names": {i: n for i, n in enumerate(cfg["names"])}}
    path = workdir / "ultralytics-data.yaml"
    path.write_text(yaml.safe_dump(ul, sort_keys=False))
    return path


def _ultralytics_no_font_fetch() -> None:
    """ultralytics' dataset check fetches a plotting font from the web even with plots off
    (``check_det_dataset`` -> ``check_font``); nothing is plotted here, so that check is a no-op."""
    import ultralytics.data.utils as data_utils
    import ultralytics.utils.checks as checks

    def no_font(*_args, **_kwargs):
        return None

    data_utils.check_font = no_font
    checks.check_font = no_font


def _ultralytics_threads(n: int) -> None:
    """ultralytics' select_device sets torch threads to min(8, cores - 1) on CPU (1 on a 2-core box);
    give it the same thread count as the other models."""
    import ultralytics.utils.torch_utils as tu

    tu.NUM_THREADS = n


def _fitted_epochs(args, common: dict, workdir: Path) -> tuple[int, float | None]:
    """``--yolo-epochs``, 1 for a smoke run, else as many epochs as one timed epoch says fit the minutes."""
    from ultralytics import YOLO

    if args.yolo_epochs:
        return args.yolo_epochs, None
    if args.smoke:
        return 1, None
    t0 = time.time()
    YOLO("yolo11n.yaml").train(epochs=2, name="yolo11n-calibration", **common)
    calib = time.time() - t0
    with open(workdir / "ultralytics" / "yolo11n-calibration" / "results.csv", newline="") as f:
        clock = [float(r["time"]) for r in csv.DictReader(f) if r.get("time")]  # seconds since the start
    # the second epoch alone: the first carries the one-off setup (data cache, first-call overheads), which made
    # a one-epoch calibration fit ~10 % fewer epochs than the minutes allowed (30.8 / 33.9 of 35 min, 2026-12-02)
    epoch_s = clock[1] - clock[0] if len(clock) >= 2 else calib / 2
    epochs = max(1, int(args.minutes * 60 // epoch_s))
    print(f"yolo11n: its second calibration epoch took {epoch_s:.0f} s -> {epochs} epochs in {args.minutes} min",
          flush=True)
    return epochs, calib


def yolo_train_args(args, data_yaml: Path, workdir: Path) -> dict:
    """The ultralytics train keys of a peers run (calibration and the timed run share them). ``project`` is
    absolute: ultralytics nests a relative one under its own runs folder, where a relative ``--workdir`` lost the
    calibration's results.csv. ``deterministic=False``: ultralytics' default switches torch's deterministic
    algorithms on process-wide."""
    return dict(data=str(data_yaml), imgsz=args.imgsz, batch=args.batch, device="cpu", workers=args.workers,
                pretrained=False, amp=False, plots=False, val=False, exist_ok=True, seed=args.seed,
                deterministic=False, verbose=False, project=str((workdir / "ultralytics").resolve()))


def train_yolo(args, data, workdir: Path) -> dict:
    require("ultralytics")
    from ultralytics import YOLO

    _ultralytics_no_font_fetch()
    _ultralytics_threads(args.threads[0])

    common = yolo_train_args(args, ultralytics_data_yaml(data, workdir), workdir)
    epochs, calib = _fitted_epochs(args, common, workdir)
    t0 = time.time()
    model = YOLO("yolo11n.yaml")
    model.train(epochs=epochs, name="yolo11n", save_period=args.curve_every or -1, **common)
    minutes = (time.time() - t0) / 60
    weights = workdir / "ultralytics" / "yolo11n" / "weights" / "last.pt"
    metrics = score_yolo(weights, data, args.imgsz, args.batch)
    params = sum(p.numel() for p in YOLO(str(weights)).model.parameters())
    out = {"metrics": metrics, "epochs": epochs, "train_min": minutes, "params": params,
           "run_dir": str(weights.parent.parent), "calibration_s": calib}
    if args.curve_every:
        out["curve"] = yolo_curve(weights.parent.parent, data, args.imgsz, args.batch, metrics)
    return out
