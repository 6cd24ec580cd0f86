"""Training-step speed of variants of one run, interleaved in one process: which change makes a step faster.

Usage:  python -m benchmarks.step_compare --variants "channels_last=false" "channels_last=true" \
            [--model hmpe-n] [--data nwpu-vhr10] [--imgsz 512] [--batch 8] [--threads 1] [--iters 6] [--warmup 1]
            [--out PATH] [--smoke]

Each variant (space-separated ``hmpe train`` keys, model keys included: ``decoder.num_denoising=60 amp=bf16``;
``model=PRESET`` builds that preset instead of ``--model``) is
a :class:`hmpe.engine.train.trainer.Trainer` built with the same seed; every variant steps through the same batches
(drawn once from the first variant's loader, so data loading is not timed), round after round in turn, so that
a change of machine load hits all variants alike. Timed: ``Trainer.train_step`` (forward, loss, backward,
clip, AdamW, EMA). Reported: median ms per step, training images/s, speed relative to the first variant ->
``benchmarks/results/step_compare.md``. ``--smoke``: synthetic data, 64 px, 2 steps, no file unless ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from benchmarks._common import RESULTS, default_datasets_env, emit_report, header, load_avg, md_table


def parse_variant(variant: str, default_model: str) -> tuple[str, dict, dict]:
    """(preset, model overrides, train overrides) of one variant; its ``model=`` wins over ``default_model``."""
    from hmpe.utils.config import parse_overrides, split_overrides

    model_over, train_over = split_overrides(parse_overrides(variant.split()))
    return train_over.pop("model", default_model), model_over, train_over


def build_trainer(args, variant: str, workdir: Path, index: int):
    from hmpe.engine.train.trainer import Trainer
    from hmpe.utils.config import apply_overrides, default_train_config, load_model_config

    model, model_over, train_over = parse_variant(variant, args.model)
    cfg = default_train_config()
    cfg.update(model=model, data=args.data, imgsz=args.imgsz, batch=args.batch, workers=0, device="cpu",
               epochs=1, heatmaps_per_epoch=0, project=str(workdir), name=f"v{index}", exist_ok=True, seed=0)
    cfg.update(train_over)
    return Trainer(cfg, apply_overrides(load_model_config(model), model_over))


def compare(args, workdir: Path) -> dict[str, list[float]]:
    """Seconds per step of every variant, interleaved over the same batches."""
    trainers = [build_trainer(args, v, workdir, i) for i, v in enumerate(args.variants)]
    batches = list(islice(iter(trainers[0].train_loader), args.warmup + args.iters))
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    for i, (images, targets) in enumerate(batches):
        for variant, trainer in zip(args.variants, trainers):
            trainer.model.train()
            t0 = time.perf_counter()
            trainer.train_step(images, targets)
            if i >= args.warmup:
                times[variant].append(time.perf_counter() - t0)
    return times


def variant_models(variants, default: str) -> list[str]:
    """The presets the variants build, in order and without repeats."""
    return list(dict.fromkeys(parse_variant(v, default)[0] for v in variants))


def markdown(times: dict[str, list[float]], args, started: str) -> str:
    first = statistics.median(next(iter(times.values())))
    rows = []
    for variant, t in times.items():
        med = statistics.median(t)
        rows.append([f"`{variant}`", f"{med * 1e3:.0f}", f"{min(t) * 1e3:.0f}-{max(t) * 1e3:.0f}",
                     f"{args.batch / med:.2f}", f"{first / med:.2f}x"])
    models = variant_models(times, args.model)
    extra = [f"model {', '.join(models)}, data {args.data}, {args.imgsz} px, batch {args.batch}, "
             f"{torch.get_num_threads()} torch threads; the same {args.iters} batches for every variant (after "
             f"{args.warmup} warm-up), variants interleaved step by step; timed: Trainer.train_step"]
    return (header(f"Training step by variant: {' / '.join(models)}", extra, started_load=started) + "\n"
            + md_table(["variant", "ms per step (median)", "range", "images/s", "speed vs first"], rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", required=True, help="one quoted string of key=value per variant")
    p.add_argument("--model", default="hmpe-n")
    p.add_argument("--data", default="nwpu-vhr10")
    p.add_argument("--imgsz", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=None, help="markdown path (default benchmarks/results/step_compare.md)")
    p.add_argument("--smoke", action="store_true", help="synthetic, 64 px, 2 steps; no file unless --out")
    return p.parse_args(argv)


def main(argv=None) -> dict[str, list[float]]:
    args = parse_args(argv)
    if args.smoke:
        args.data, args.imgsz, args.batch, args.iters, args.warmup = "synthetic", 64, 2, 2, 0
    torch.set_num_threads(args.threads)
    started = load_avg()
    with tempfile.TemporaryDirectory(prefix="hmpe-step-compare-") as tmp:
        times = compare(args, Path(tmp))
    text = markdown(times, args, started)
    emit_report(text, args.out or (None if args.smoke else RESULTS / "step_compare.md"))
    return times


if __name__ == "__main__":
    default_datasets_env()
    main()
