"""Tiled training against resize-to-imgsz (issue 36): the accuracy of two sets of same-budget runs, each scored
as it is used (whole images resized, or sliced with the run's tile), and the inference cost of each, timed on
the same images in one interleaved run.

The runs are trained by :mod:`benchmarks.ablation` (one results folder per arm; same row, budget, seeds):

    taskset -c 0 python -m benchmarks.ablation --budget-minutes 35 --threads 1 --workers 0 --seeds 0 1 \\
        --rows "hmpe-n (+HIDQ, 3-layer decoder)" --train-args amp=bf16 lr=8e-4 \\
        --runs-dir RUNS/resize --results-dir benchmarks/results/tiles_amd/resize
    taskset -c 1 python -m benchmarks.ablation ... --train-args amp=bf16 lr=8e-4 tile=512 \\
        --runs-dir RUNS/tile512 --results-dir benchmarks/results/tiles_amd/tile512
    python -m benchmarks.tiles --arms resize=benchmarks/results/tiles_amd/resize \\
        tile512=benchmarks/results/tiles_amd/tile512 --time --images 32 --threads 1

Accuracy: each run's final validation (the trainer's: sliced for a tiled run), mean and spread (max - min) over
the seeds, with the object count behind each size bucket. Cost: ``Detector.predict`` on the first ``--images``
NWPU val images, median milliseconds per image over ``--rounds`` passes, the arms interleaved pass by pass
(decoding included, as a user pays it; the first pass of each is a warm-up and not counted).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks._common import (command_line, default_datasets_env, emit_report, header, md_table, mean_spread,
                                provenance)

METRICS = ("mAP50", "mAP50_95", "AP_small", "AP_small_input", "AP_medium", "AP_large")
COUNTS = ("n_small", "n_medium", "n_large", "n_small_input", "n_medium_input", "n_large_input")


def load_arm(folder: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*-seed*.json"))]
    if not runs:
        raise SystemExit(f"{folder}: no run results (*-seed*.json); train the arm with benchmarks.ablation first")
    return runs


def summary(runs: list[dict]) -> dict:
    out = {"seeds": [r["seed"] for r in runs], "epochs": [r["epochs"] for r in runs],
           "train_args": runs[0]["settings"].get("train_args", [])}
    for k in METRICS:
        vals = [r["metrics"][k] for r in runs if k in r["metrics"]]
        if vals:
            out[k] = dict(zip(("mean", "spread"), mean_spread(vals)), values=vals)
    out["counts"] = {k: runs[0]["metrics"].get(k) for k in COUNTS}
    return out


def time_predict(weights: dict[str, Path], images: list[Path], rounds: int) -> dict[str, float]:
    """Median ms per image of ``Detector.predict`` per arm, the arms interleaved round by round."""
    from hmpe.api import Detector

    detectors = {name: Detector(str(w)) for name, w in weights.items()}
    times: dict[str, list[float]] = {name: [] for name in detectors}
    for r in range(rounds + 1):
        for name, det in detectors.items():
            t0 = time.perf_counter()
            det.predict([str(p) for p in images], conf=0.25, batch=1)
            if r:  # round 0 warms up
                times[name].append((time.perf_counter() - t0) * 1000 / len(images))
    return {name: statistics.median(v) for name, v in times.items()}


def run_path(recorded: str, runs_root: Path) -> Path:
    """A run folder as a result file records it: ``RUNS/...`` (the placeholder) under ``runs_root``, else as is."""
    parts = Path(recorded).parts
    return runs_root.joinpath(*parts[1:]) if parts and parts[0] == "RUNS" else Path(recorded)


def val_images(n: int) -> list[Path]:
    from hmpe.data.dataset import build_dataset

    return [Path(s.path) for s in build_dataset("nwpu-vhr10", "val").samples[:n]]


def cell(s: dict, k: str) -> str:
    return f"{s[k]['mean']:.3f} ± {s[k]['spread']:.3f}" if k in s else "-"


def report(arms: dict[str, dict], ms: dict[str, float], args) -> str:
    rows = [[name, ",".join(map(str, s["seeds"])), " / ".join(f"{e:.2f}" for e in s["epochs"]),
             *(cell(s, k) for k in ("mAP50", "mAP50_95", "AP_small", "AP_small_input")),
             f"{ms[name]:.0f}" if name in ms else "-"] for name, s in arms.items()]
    counts = "; ".join(f"{name}: small {s['counts']['n_small']:.0f} native / {s['counts']['n_small_input']:.0f} "
                       f"at the input" for name, s in arms.items() if s["counts"].get("n_small") is not None)
    return "\n".join([
        header("Tiled training vs resize (issue 36)"),
        md_table(["arm", "seeds", "epochs", "mAP50", "mAP50-95", "AP_small", "AP_small_input", "ms / image"], rows),
        "",
        f"± is the spread (max - min) over the seeds. Objects per bucket: {counts}. ms / image: "
        f"`Detector.predict` on {args.images} NWPU val images, {args.threads} thread(s), median of "
        f"{args.rounds} interleaved rounds, decoding included.",
    ]) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", nargs="+", required=True, help="NAME=FOLDER of benchmarks.ablation results")
    ap.add_argument("--runs-root", type=Path, default=Path("."),
                    help="the folder RUNS stands for in the results' run_dir; with --time")
    ap.add_argument("--time", action="store_true", help="also time each arm's best.pt (else accuracy only)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tiles.md"))
    args = ap.parse_args(argv)
    default_datasets_env()
    import torch

    torch.set_num_threads(args.threads)
    runs = {name: load_arm(Path(folder)) for name, folder in (a.split("=", 1) for a in args.arms)}
    arms = {name: summary(r) for name, r in runs.items()}
    ms: dict[str, float] = {}
    if args.time:
        weights = {name: run_path(r[0]["run_dir"], args.runs_root) / "weights" / "best.pt" for name, r in runs.items()}
        ms = time_predict(weights, val_images(args.images), args.rounds)
    result = {**provenance(), "command": command_line(argv), "threads": args.threads, "images": args.images,
              "arms": {name: dict(s, ms_per_image=ms.get(name)) for name, s in arms.items()}}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    emit_report(report(arms, ms, args), args.out)
    return result


if __name__ == "__main__":
    main()
