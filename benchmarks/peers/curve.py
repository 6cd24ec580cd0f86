"""Learning curves of Part B: val metrics of the checkpoints a run saved every few epochs, against the training
minutes it had spent when it saved them (``--curve-every N``).

Validation does not run during training (it would eat the budget); each library keeps a checkpoint every N
epochs (hmpe: ``save_period``, ``weights/epochE.pt`` after epoch E; ultralytics: ``save_period``,
``weights/epochK.pt`` after epoch K + 1) and, after the run, each one is scored by hmpe's COCOEvaluator on the val
split like the final weights. The minutes come from each trainer's own per-epoch clock (hmpe: the ``time_s``
column of results.csv; ultralytics: the cumulative ``time`` column), so scoring time is not counted.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from benchmarks.peers.scoring import score_yolo

CURVE_METRICS = ("mAP50", "mAP50_95", "AP_small")


def _epoch_files(weights_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in weights_dir.glob("epoch*.pt") if (m := re.fullmatch(r"epoch(\d+)\.pt", p.name))]
    return sorted(found)


def _point(epoch: int, minutes: float, metrics: dict) -> dict:
    return {"epoch": epoch, "train_min": round(minutes, 3), **{k: float(metrics[k]) for k in CURVE_METRICS}}


def hmpe_curve(run_dir: Path, data, imgsz: int, batch: int, final: dict) -> list[dict]:
    """Points of an hmpe run (``save_period`` set): ``epochE.pt`` holds the state after epoch E (EMA weights
    used, as in the final validation); minutes are the sum of results.csv's ``time_s`` up to that epoch. The
    run's ``final`` metrics close the curve at its last epoch."""
    from hmpe.api import Detector

    with open(run_dir / "results.csv", newline="") as f:
        seconds = [float(r["time_s"]) for r in csv.DictReader(f)]
    points = []
    for epoch, path in _epoch_files(run_dir / "weights"):
        metrics = Detector(str(path)).val(data=data, imgsz=imgsz, batch=batch, workers=0)
        points.append(_point(epoch, sum(seconds[:epoch]) / 60, metrics))
    return _closed(points, len(seconds), sum(seconds) / 60, final)


def yolo_curve(run_dir: Path, data, imgsz: int, batch: int, final: dict) -> list[dict]:
    """Points of an ultralytics run (``save_period`` set): ``epochK.pt`` is saved after epoch K + 1 (K counts
    from 0); minutes are results.csv's cumulative ``time`` at that epoch; ``final`` closes the curve."""
    with open(run_dir / "results.csv", newline="") as f:
        cumulative = {int(float(r["epoch"])): float(r["time"]) for r in
                      ({k.strip(): v for k, v in row.items()} for row in csv.DictReader(f))}
    points = []
    for k, path in _epoch_files(run_dir / "weights"):
        epoch = k + 1
        if epoch in cumulative:
            points.append(_point(epoch, cumulative[epoch] / 60, score_yolo(path, data, imgsz, batch)))
    last = max(cumulative)
    return _closed(points, last, cumulative[last] / 60, final)


def _closed(points: list[dict], epochs: int, minutes: float, final: dict) -> list[dict]:
    """The curve ended by the run's final weights (replacing a periodic checkpoint of the same last epoch)."""
    return [p for p in points if p["epoch"] != epochs] + [_point(epochs, minutes, final)]
