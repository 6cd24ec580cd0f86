"""Per-part CPU latency of one detector's forward (default hmpe-n, deploy mode, 640 px, batch 1).

Usage:  python -m benchmarks.profile_parts [--model hmpe-n] [--imgsz 640] [--threads 2] [--rounds 20]
                                           [--no-fuse] [--set key=value ...] [--out PATH] [--smoke]

Parts (wall-clock, eval mode, ``no_grad``, random weights, ``--nc`` classes):
  backbone      HGNetv2 without its strip blocks
  lsconv        the strip blocks inside the backbone (LSConv / DSConv / strip)
  probe         the heatmap path's probe head (tower + cls / reg / quality convs)
  gradcam++     the rest of the heatmap module: class ranking, closed-form Grad-CAM++ maps, min-max,
                level fusion, gate, mask filter
  mohfe         the heatmap embeddings (eq. 5)
  encoder       input projection + AIFI + CCFM
  query sel.    the decoder's query selector (RT-DETR's or HIDQ), with its encoder head
  decoder       the rest of the decoder: input projection, anchors, decoder layers and heads
  post-process  ``PostProcessor`` (top-K over query x class, boxes to pixels)
The parts are timed by wrapping the model's own modules / methods (nothing re-implemented), so the
sum of the parts is the forward; the per-round total is timed around the whole call and the rest
("other") is the glue between parts. Each figure is the median over ``--rounds`` rounds (after
``--warmup`` untimed forwards). Writes ``benchmarks/results/profile_<model>.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks._common import RESULTS, emit_report, header, load_avg, load_hmpe_model_config, md_table, parse_row_spec

PARTS = ["backbone", "lsconv", "probe", "gradcam++", "mohfe", "encoder", "query sel.", "decoder", "post-process"]


class PartTimer:
    """Accumulates wall time per part for one forward; nested parts are subtracted from their parent."""

    def __init__(self):
        self.inclusive: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []

    @contextmanager
    def part(self, name: str):
        self._stack.append(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.inclusive[name] += time.perf_counter() - t0
            self._stack.pop()

    def wrap(self, obj, attr: str, name: str) -> None:
        """Replace ``obj.attr`` (a bound method or a module's forward) by a timed call of the original."""
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)

        setattr(obj, attr, timed)


def instrument(model, post, timer: PartTimer) -> None:
    """Wrap the model's parts (see the module docstring); raw names, exclusive times derived later."""
    timer.wrap(model.backbone, "forward", "backbone_all")
    for m in model.backbone.modules():
        if type(m).__name__ in ("LSConv", "DSConv", "StripBlock"):
            timer.wrap(m, "forward", "lsconv")
    timer.wrap(model.encoder, "project", "encoder")
    timer.wrap(model.encoder, "encode", "encoder")
    if model.heatmap is not None:
        timer.wrap(model.heatmap, "forward", "heatmap_all")
        timer.wrap(model.heatmap.probe, "forward", "probe")
    if model.mohfe is not None:
        timer.wrap(model.mohfe, "forward", "mohfe")
    timer.wrap(model.decoder, "forward", "decoder_all")
    timer.wrap(model.decoder.query_selector, "forward", "query sel.")
    timer.wrap(post, "forward", "post-process")


def exclusive(inc: dict[str, float]) -> dict[str, float]:
    out = {k: inc.get(k, 0.0) for k in ("lsconv", "probe", "mohfe", "encoder", "query sel.", "post-process")}
    out["backbone"] = inc.get("backbone_all", 0.0) - out["lsconv"]
    out["gradcam++"] = inc.get("heatmap_all", 0.0) - out["probe"]
    out["decoder"] = inc.get("decoder_all", 0.0) - out["query sel."]
    return out


@torch.no_grad()
def profile(model, post, imgsz: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per part per round (plus ``total``: the whole forward + post-processing)."""
    timer = PartTimer()
    instrument(model, post, timer)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[imgsz, imgsz]])
    per_part: dict[str, list[float]] = defaultdict(list)
    for r in range(warmup + rounds):
        timer.inclusive.clear()
        t0 = time.perf_counter()
        post(model(x), sizes)
        total = time.perf_counter() - t0
        if r >= warmup:
            for k, v in exclusive(timer.inclusive).items():
                per_part[k].append(v)
            per_part["total"].append(total)
    return per_part


def markdown(per_part: dict[str, list[float]], args, started: str) -> str:
    med = {k: statistics.median(v) * 1e3 for k, v in per_part.items()}
    parts_sum = sum(med[p] for p in PARTS)
    rows = [[p, f"{med[p]:.1f}", f"{100 * med[p] / med['total']:.1f}"] for p in PARTS]
    rest = med["total"] - parts_sum
    rows.append(["other (glue; medians do not add up exactly)", f"{rest:.1f}", f"{100 * rest / med['total']:.1f}"])
    rows.append(["**total**", f"**{med['total']:.1f}**", "100"])
    extra = [f"model {args.model}, {'deploy mode (fused)' if not args.no_fuse else 'unfused'}, {args.imgsz} px, "
             f"batch 1, {torch.get_num_threads()} torch threads, {args.nc} classes, random weights, "
             f"{args.rounds} rounds after {args.warmup} warm-up (medians per part)"]
    return (header(f"Per-part latency: {args.model}", extra, started_load=started) + "\n"
            + md_table(["part", "ms (median)", "% of total"], rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="hmpe-n", help="preset or YAML, with overrides: 'hmpe-n:decoder.num_layers=6'")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--nc", type=int, default=10)
    p.add_argument("--no-fuse", action="store_true", help="profile the trained structure (no deploy mode)")
    p.add_argument("--out", default=None, help="markdown path (default benchmarks/results/profile_<model>.md)")
    p.add_argument("--smoke", action="store_true", help="64 px, 2 rounds, 1 warm-up; no file unless --out")
    return p.parse_args(argv)


def main(argv=None) -> dict[str, list[float]]:
    from hmpe.models.detector import build_model, build_postprocessor

    args = parse_args(argv)
    if args.smoke:
        args.imgsz, args.rounds, args.warmup = 64, 2, 1
    torch.set_num_threads(args.threads)
    started = load_avg()
    name, over = parse_row_spec(args.model)
    cfg = load_hmpe_model_config(name, over)
    torch.manual_seed(0)
    model = build_model(cfg, args.nc).eval()
    if not args.no_fuse:
        model.fuse()
    per_part = profile(model, build_postprocessor(cfg, args.nc), args.imgsz, args.rounds, args.warmup)
    text = markdown(per_part, args, started)
    default = RESULTS / f"profile_{name}{'_unfused' if args.no_fuse else ''}.md"
    emit_report(text, args.out or (None if args.smoke else default))
    return per_part


if __name__ == "__main__":
    main()
