"""Finished training runs side by side: accuracy from each run, cost measured here in one interleaved run.

    python -m benchmarks.compare_runs RUN_DIR RUN_DIR [...] [--imgsz 640] [--threads 1] [--rounds 7]
                                      [--out benchmarks/results/compare.md]

For each run folder (``runs/train/<name>``, as written by ``hmpe train``): the last validated epoch of its
``results.csv`` (the trainer's EMA weights scored by COCOEvaluator on the val split: P and R at the best-F1
confidence, mAP50, mAP50-95, AP_small, AP_small_input; the objects per size bucket in a note), the epochs and
minutes it trained, and, from its ``weights/last.pt`` (model config and class count), the model's params, GFLOPs
(batch 1, ``--imgsz``), the decoder's params and GFLOPs, and latencies as ratios to the first run: the whole
forward and the decoder alone (query selection, decoder layers and heads, fed the inputs captured from one forward
of that model). Latencies are measured
in rounds that alternate between the models (``--rounds`` rounds of ``--runs`` forwards each), so load
drift on a shared machine hits every model alike; a ratio is the median over rounds of the per-round
ratio of medians.

This is issue 5's comparison (``hmpe-n`` vs ``rtdetr-n``, same NWPU training budget): see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import RESULTS, fmt, header, load_avg, md_table, size_counts_note, train_minutes
from hmpe.engine.eval.evaluator import SIZE_KEYS

METRICS = ("precision", "recall", "mAP50", "mAP50_95", "AP_small", "AP_small_input")
COUNT_KEYS = tuple(k for k in SIZE_KEYS if k.startswith("n_"))  # objects per size bucket: a table note


def final_metrics(results_csv: Path) -> dict:
    """The last row of ``results.csv`` that holds validation metrics, plus epochs and total minutes."""
    if not results_csv.is_file():
        raise SystemExit(f"{results_csv}: no results.csv (is this a `hmpe train` run folder?)")
    with open(results_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    validated = [r for r in rows if r.get("val/mAP50") not in (None, "")]
    if not validated:
        raise SystemExit(f"{results_csv}: no validated epoch yet")
    last = validated[-1]
    out = {k: float(last[f"val/{k}"]) for k in METRICS if last.get(f"val/{k}") not in (None, "")}
    out.update({k: int(float(last[f"val/{k}"])) for k in COUNT_KEYS if last.get(f"val/{k}") not in (None, "")})
    out["epochs"] = int(last["epoch"])
    out["train_minutes"] = train_minutes(results_csv)
    out["best_mAP50_95"] = max(float(r["val/mAP50_95"]) for r in validated)
    return out


def load_run_model(run_dir: Path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode with the run's EMA weights, checkpoint) from ``run_dir/weights/last.pt``."""
    from hmpe.api import load_for_inference

    path = run_dir / "weights" / "last.pt"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (the run saves it after every epoch)")
    # the trained structure (no deploy fusion): the parameter counts and timings compare with earlier tables
    model, _, ckpt = load_for_inference(path, torch.device("cpu"), fuse=False)
    return model, ckpt


@torch.no_grad()
def capture_decoder_call(model: torch.nn.Module, x: torch.Tensor) -> tuple[tuple, dict]:
    """The positional and keyword arguments ``model.decoder`` receives in one eval forward of ``x``."""
    seen = {}

    def hook(_mod, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    h = model.decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(x)
    finally:
        h.remove()
    return seen["args"], seen["kwargs"]


@torch.no_grad()
def decoder_gflops(model: torch.nn.Module, x: torch.Tensor, args: tuple, kwargs: dict) -> tuple[float, float]:
    """(whole model, decoder alone) GFLOPs for one forward of ``x`` (FlopCounterMode, 2 x MACs); ``args``,
    ``kwargs``: the decoder's inputs for ``x`` (:func:`capture_decoder_call`)."""
    with FlopCounterMode(display=False) as fc:
        model(x)
    total = fc.get_total_flops() / 1e9
    with FlopCounterMode(display=False) as fc:
        model.decoder(*args, **kwargs)
    return total, fc.get_total_flops() / 1e9


@torch.no_grad()
def interleaved_latency(fns: list, rounds: int = 7, runs: int = 5, warmup: int = 2) -> list[list[float]]:
    """Per function, the median seconds of ``runs`` calls in each of ``rounds`` alternating rounds."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    out = [[] for _ in fns]
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))  # no fixed first/second slot
        for i in order:
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fns[i]()
                times.append(time.perf_counter() - t0)
            out[i].append(statistics.median(times))
    return out


def ratio_to_first(per_round: list[list[float]]) -> list[float]:
    """Median over rounds of (model i / model 0) for each model."""
    base = per_round[0]
    return [statistics.median(a / b for a, b in zip(times, base)) for times in per_round]


def compare(run_dirs: list[Path], imgsz: int = 640, rounds: int = 7, runs: int = 5, warmup: int = 2) -> list[dict]:
    from hmpe.engine.deploy.bench import count_params

    x = torch.rand(1, 3, imgsz, imgsz)
    rows, full_fns, dec_fns = [], [], []
    for run in run_dirs:
        model, ckpt = load_run_model(run)
        row = {"run": run.name, "model": ckpt["train_cfg"].get("model"), **final_metrics(run / "results.csv"),
               "params": count_params(model), "decoder_params": count_params(model.decoder),
               "decoder_layers": model.decoder.num_layers,
               "train_imgsz": ckpt["train_cfg"].get("imgsz")}
        args, kwargs = capture_decoder_call(model, x)
        row["gflops"], row["decoder_gflops"] = decoder_gflops(model, x, args, kwargs)
        full_fns.append(lambda m=model: m(x))
        dec_fns.append(lambda m=model, a=args, k=kwargs: m.decoder(*a, **k))
        rows.append(row)
    full = interleaved_latency(full_fns, rounds, runs, warmup)
    dec = interleaved_latency(dec_fns, rounds, runs, warmup)
    for row, f, d, fr, dr in zip(rows, full, dec, ratio_to_first(full), ratio_to_first(dec)):
        row.update(latency_ms=1e3 * statistics.median(f), decoder_latency_ms=1e3 * statistics.median(d),
                   latency_ratio=fr, decoder_latency_ratio=dr)
    return rows


def render(rows: list[dict], imgsz: int, started_load: str) -> str:
    cols = ["run", "model", "dec. layers", "epochs", "train min", "P", "R", "mAP50", "mAP50-95", "AP_small",
            "AP_S in", "params (M)", "GFLOPs", "dec. params (M)", "dec. GFLOPs", "latency x", "dec. latency x"]
    table = [[r["run"], r["model"], r["decoder_layers"], r["epochs"], f"{r['train_minutes']:.1f}",
              fmt(r.get("precision")), fmt(r.get("recall")), fmt(r.get("mAP50")), fmt(r.get("mAP50_95")),
              fmt(r.get("AP_small")), fmt(r.get("AP_small_input")), f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.2f}",
              f"{r['decoder_params'] / 1e6:.2f}", f"{r['decoder_gflops']:.2f}",
              f"{r['latency_ratio']:.2f}", f"{r['decoder_latency_ratio']:.2f}"] for r in rows]
    extra = [f"torch threads: {torch.get_num_threads()}; GFLOPs and latency at {imgsz}x{imgsz}, batch 1",
             "accuracy: each run's last validated epoch (EMA weights, val split, results.csv)",
             "latency x / dec. latency x: ratio to the first row (whole forward / decoder alone), median over "
             "interleaved rounds; absolute medians (ms): "
             + ", ".join(f"{r['run']} {r['latency_ms']:.1f} / {r['decoder_latency_ms']:.1f}" for r in rows)]
    note = size_counts_note([(r["run"], r) for r in rows])
    extra += [note] if note else []
    return header("Trained runs side by side", extra, started_load) + "\n" + md_table(cols, table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (runs/train/<name>); ratios are to the first")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--runs-per-round", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS / "compare.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    started = load_avg()
    rows = compare(a.runs, a.imgsz, a.rounds, a.runs_per_round)
    text = render(rows, a.imgsz, started)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
