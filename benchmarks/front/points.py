"""What the sides share: the run's context (work folder, dataset, val samples), the per-step JSON caches, the
interleaved latency run of every file, and the operating points assembled from accuracy and timings."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks._common import mean_spread_of

#: the metrics a point carries (means over the seeds; COCOEvaluator's names)
METRICS = ("mAP50", "mAP50_95", "AP_small", "AP_small_input")
SPREAD = ("mAP50", "AP_small")
COUNTS = ("n_small", "n_small_input")


@dataclass
class Context:
    """Settings every side reads. ``val_indices``: the val samples scored (evenly spaced, as
    :class:`hmpe.engine.deploy.quantize.SplitImages` picks ``val_images`` of them); ``train_images``: the size of
    the train split."""

    workdir: Path
    data: str
    data_cfg: dict
    val_images: int | None  # --val-images (None: the whole split)
    val_indices: list[int]
    train_images: int
    calib_images: int
    int8: bool
    threads: int
    extra: dict = field(default_factory=dict)  # a side's prepared state (the ultralytics data YAML)

    @property
    def calib_count(self) -> int:
        return min(self.calib_images, self.train_images)

    def shown(self, path) -> str:
        """``path`` as the result file records it (:func:`shown_path`)."""
        return shown_path(path, self.workdir)

    def folder(self, kind: str, model: str, seed: int, size: int) -> Path:
        return self.workdir / kind / model / f"seed{seed}" / str(size)

    def export(self, record: Path, settings: dict, fn: Callable[[], str | Path]) -> Path:
        """The file ``fn`` exports, once: its path is cached in ``record`` with the ``settings`` it was made with."""
        res = cached(record, settings, lambda: {"file": Path(os.path.relpath(Path(fn()).resolve(),
                                                                             self.workdir.resolve())).as_posix()})
        return self.workdir / res["file"]


def shown_path(path, workdir: Path) -> str:
    """A weights file or export as a result file records it, never absolute: the shipped name of shipped weights,
    ``RUNS/...`` under the work folder, else the path relative to the working directory."""
    from hmpe.engine.checkpoint import shipped_name

    if not Path(path).exists():
        name = shipped_name(path)
        if name:
            return name
        return str(path)
    p = Path(path).resolve()
    try:
        return "RUNS/" + p.relative_to(Path(workdir).resolve()).as_posix()
    except ValueError:
        return Path(os.path.relpath(p, Path.cwd())).as_posix()


def fingerprint(path) -> str | None:
    """The first 16 hex digits of a weights file's SHA-256 (None for a folder or shipped name): a cached export or
    score is reused only for the very same weights."""
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def cached(record: Path, settings: dict, fn: Callable[[], dict]) -> dict:
    """``fn()``, stored in the JSON file ``record`` with ``settings``; a rerun with the same settings reads it
    back instead (other settings: computed again and overwritten)."""
    record = Path(record)
    if record.exists():
        stored = json.loads(record.read_text())
        if stored.get("settings") == settings:
            return stored["result"]
    result = fn()
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "result": result}, indent=1))
    tmp.replace(record)  # a run killed mid-write leaves no half record
    return result


def scalars(metrics: dict) -> dict:
    """The evaluator's numbers (no per-class tables), NaN as None: what a cache and the result file keep."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            out[k] = None if math.isnan(v) else float(v)
    return out


def time_points(entries: list[dict], threads: int, warmup: int, rounds: int) -> list[dict]:
    """One interleaved run over every file of every input size (``entries``: model, kind, imgsz, runtime,
    precision, file), so that points of different sizes are timed in the same minutes of the same machine: each
    file a session with ``threads`` threads on a fixed random ``[1,3,imgsz,imgsz]`` input; ``warmup`` untimed calls
    each, then ``rounds`` rounds timing every file once, rotated, each after ``SETTLE`` untimed calls of it: with
    dozens of sessions the threads the previous one left spinning would otherwise be timed too."""
    from hmpe.engine.deploy.backends import SETTLE, interleaved_times
    from hmpe.engine.deploy.bench import percentile
    from hmpe.engine.deploy.export import runtime_session

    rng = np.random.default_rng(0)
    inputs = {s: rng.random((1, 3, s, s), dtype=np.float32) for s in sorted({e["imgsz"] for e in entries})}
    fns = {}
    for e in entries:
        run = runtime_session(e["path"], e["runtime"], threads, outputs=None)
        fns[_label(e)] = (lambda r, x: lambda: r(x))(run, inputs[e["imgsz"]])
    times = interleaved_times(fns, warmup, rounds, settle=SETTLE)
    out = []
    for e in entries:
        t = times[_label(e)]
        out.append({k: e[k] for k in ("model", "kind", "imgsz", "runtime", "precision", "file")}
                   | {"ms_median": statistics.median(t) * 1e3, "ms_p90": percentile(t, 0.9) * 1e3,
                      "times_ms": [round(v * 1e3, 3) for v in t]})
    return out


def _label(e: dict) -> str:
    return f"{e['model']} {e['imgsz']} {e['runtime']} {e['precision']}"


def make_points(accuracy: dict, timings: list[dict], kinds: dict[str, str]) -> list[dict]:
    """One point per (model, precision, size) with accuracy (``{(model, precision, size): [metrics per seed]}``):
    the model's fastest runtime of that precision at that size (lowest median), the metrics' means over the seeds
    and their spread (max - min)."""
    points = []
    for (model, prec, size), runs in accuracy.items():
        cands = [t for t in timings if (t["model"], t["precision"], t["imgsz"]) == (model, prec, size)]
        if not cands:
            continue
        best = min(cands, key=lambda t: t["ms_median"])
        p = {"model": model, "kind": kinds[model], "imgsz": size, "runtime": best["runtime"], "precision": prec,
             "ms_median": best["ms_median"], "ms_p90": best["ms_p90"]}
        spread = {}
        for k in METRICS:
            p[k], s = mean_spread_of(runs, k)
            if k in SPREAD:
                spread[k] = s
        p.update(n_seeds=len(runs), spread=spread, per_seed=[{k: r.get(k) for k in METRICS} for r in runs],
                 **{k: runs[0].get(k) for k in COUNTS})
        points.append(p)
    return sorted(points, key=lambda p: (p["kind"], p["model"], p["precision"], p["imgsz"]))
