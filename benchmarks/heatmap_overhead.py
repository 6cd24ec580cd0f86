"""Forward-time overhead of the HMPE heatmap path (issue 4: at most +10 % at 640 on CPU).

Usage:  python -m benchmarks.heatmap_overhead [--model rtdetr-n-heat] [--imgsz 640] [--threads 2,1]
                                              [--repeats 9] [--set heatmap.probe_hidden=32 ...]

Three forwards are timed, interleaved (A, B, C, A, B, C, ...) so that load from other processes hits
them alike; each entry is the median over ``--repeats`` rounds (eval mode, ``no_grad``, batch 1), once
per thread count in ``--threads``:
  A  ``--model`` with its heatmap path (the preset as shipped, plus ``--set`` overrides);
  B  the same model with ``heatmap: null`` (and the parts that need the heatmap, ``mohfe`` / ``hidq``,
     switched off): the baseline graph, e.g. ``rtdetr-n`` for ``rtdetr-n-heat``;
  C  ``HeatmapEmbedding.forward`` alone on A's projected features (the probe tower and heads, the
     Grad-CAM++ maps, fusion, gate, mask).
Overhead figures: ``A / B`` (median of the per-round ratios: the ratio is measured within a round, so
slow rounds cancel) and ``1 + C / (A - C)`` (the heatmap module relative to the rest of A's forward: the
definition that still applies to models where B is a different graph, like ``hmpe-n`` whose MOHFE and
HIDQ consume the heatmap). Target: at most 1.10.

Writes the markdown to stdout and to ``benchmarks/results/heatmap_overhead.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from hmpe.engine.deploy.bench import environment
from hmpe.models.detector import build_model
from hmpe.utils.config import apply_overrides, load_model_config, parse_overrides
from benchmarks._common import command_line, load_avg, utc_stamp

ROOT = Path(__file__).resolve().parents[1]


def build(model: str, overrides: dict, heatmap: bool, nc: int):
    cfg = apply_overrides(load_model_config(model), overrides)
    if not heatmap:
        cfg["heatmap"] = None
        for part in ("mohfe", "hidq"):  # they consume the heatmap's maps: off with it
            if cfg.get(part) is not None:
                cfg[part] = None
    elif not cfg.get("heatmap"):
        raise SystemExit(f"model {model!r} has no heatmap path (heatmap: null); pick a model with one, "
                         f"e.g. rtdetr-n-heat or hmpe-n")
    torch.manual_seed(0)
    return build_model(cfg, nc).eval(), cfg


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rtdetr-n-heat", help="preset or YAML with a heatmap path")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", default="2,1", help="comma-separated torch thread counts, one table each")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved rounds (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--nc", type=int, default=10, help="number of classes")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="dotted model-config overrides of A, e.g. heatmap.probe_hidden=32")
    ap.add_argument("--note", default="", help="a line added to the report (e.g. the machine's load)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "heatmap_overhead.md"))
    return ap


def time_rounds(fns: dict, threads: int, warmup: int, repeats: int) -> tuple[dict, float, float]:
    """Interleaved rounds (A, B, C, A, B, C, ...) at ``threads``: (median s per forward, A / B, C / (A - C)),
    the ratios as medians of per-round ratios."""
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for f in fns.values():
                f()
        for _ in range(repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ab = statistics.median(a / b for a, b in zip(times["A"], times["B"]))
    c_rest = statistics.median(c / (a - c) for a, c in zip(times["A"], times["C"]))
    return med, ab, c_rest


def render(args, argv, threads: list[int], overrides: dict, cfg_a: dict, params: tuple[int, int, int],
           results: dict, load0: str) -> str:
    n_a, n_b, n_h = params
    over = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"
    lines = [
        "# Heatmap-path forward overhead",
        "",
        f"- date: {utc_stamp()}",
        f"- CPU: {environment()['cpu']} ({os.cpu_count()} logical CPUs), torch.set_num_threads(n) for n in {threads}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- command: `{command_line(argv)}`",
        f"- model A: `{args.model}` (overrides: {over}), heatmap config `{cfg_a.get('heatmap')}`; "
        f"model B: the same with `heatmap: null`",
        f"- input 1 x 3 x {args.imgsz} x {args.imgsz}, {args.nc} classes, eval, no_grad; "
        f"median of {args.repeats} interleaved rounds (A, B, C, ...) after {args.warmup} warm-up rounds",
        f"- load average (1/5/15 min) at start / end: {load0} / {load_avg()}",
    ]
    if args.note:
        lines.append(f"- {args.note}")
    for nt, (med, ab, c_rest) in results.items():
        lines += [
            "",
            f"## {nt} thread{'s' if nt > 1 else ''}",
            "",
            "| forward | params | median ms |",
            "| --- | ---: | ---: |",
            f"| A: {args.model} (with heatmap path) | {n_a:,} | {med['A'] * 1e3:.1f} |",
            f"| B: same, heatmap path off | {n_b:,} | {med['B'] * 1e3:.1f} |",
            f"| C: HeatmapEmbedding alone (on A's features) | {n_h:,} | {med['C'] * 1e3:.1f} |",
            "",
            f"**A / B = {ab:.3f}** (median of per-round ratios; target <= 1.10); "
            f"1 + C / (A - C) = {1 + c_rest:.3f} (the heatmap module against the rest of A's forward).",
        ]
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> str:
    args = _parser().parse_args(argv)
    threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    overrides = parse_overrides(args.set)
    load0 = load_avg()
    model_a, cfg_a = build(args.model, overrides, True, args.nc)
    model_b, _ = build(args.model, overrides, False, args.nc)
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model_a.encoder.project(model_a.backbone(x))
    fns = {"A": lambda: model_a(x), "B": lambda: model_b(x),
           "C": lambda: model_a.heatmap(feats, image_size=x.shape[-2:])}
    results = {nt: time_rounds(fns, nt, args.warmup, args.repeats) for nt in threads}
    params = tuple(sum(p.numel() for p in m.parameters()) for m in (model_a, model_b, model_a.heatmap))
    text = render(args, argv, threads, overrides, cfg_a, params, results, load0)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
