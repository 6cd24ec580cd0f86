"""Per-part CPU time of hmpe's training step: where one iteration of ``hmpe train`` spends its time.

Usage:  python -m benchmarks.profile_train [--model hmpe-n] [--data nwpu-vhr10] [--imgsz 320] [--batch 8]
                                           [--threads 1] [--iters 12] [--warmup 2] [--set key=value ...]
                                           [--out PATH] [--smoke]

The step is hmpe's own: a :class:`hmpe.engine.train.trainer.Trainer` is built for the model and dataset and its
``train_one_epoch`` runs over the first ``--warmup + --iters`` batches; the parts are timed by wrapping the
trainer's and model's own objects (nothing re-implemented), wall clock, per iteration:

  data          dataset ``__getitem__`` (decode + augmentation) and collate (``workers=0``: in the step)
  backbone / lsconv / probe / gradcam++ / mohfe / encoder / query sel. / decoder
                as in benchmarks/profile_parts.py (forward only)
  denoising     building the contrastive denoising group (part of the decoder's forward)
  probe loss    the heatmap probe's dense target assignment and losses
  matcher       the Hungarian matching of every output (criterion)
  losses        the rest of the criterion (VFL / L1 / GIoU of every layer, encoder and denoising output)
  backward      ``Tensor.backward`` of the total loss
  optimiser     gradient clipping + AdamW step
  EMA           the weight average's update
  other         the rest of the iteration (loss bookkeeping, host sync, learning-rate update, progress bar)

Medians over ``--iters`` iterations; writes ``benchmarks/results/profile_train_<model>.md``. Under ``--smoke``:
synthetic images, 64 px, 2 iterations, no file unless ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from itertools import islice
from pathlib import Path

import torch

from benchmarks._common import RESULTS, default_datasets_env, emit_report, header, load_avg, md_table
from benchmarks.profile_parts import PartTimer, exclusive, instrument

PARTS = ["data", "backbone", "lsconv", "probe", "gradcam++", "mohfe", "encoder", "query sel.", "denoising",
         "decoder", "probe loss", "matcher", "losses", "backward", "optimiser", "EMA"]


class FirstBatches:
    """The first ``n`` batches of a loader, with a length (the trainer sizes its schedule by ``len``)."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n

    def __iter__(self):
        return islice(iter(self.loader), self.n)

    def __len__(self) -> int:
        return self.n


def instrument_step(trainer, timer: PartTimer) -> list[tuple[object, str, object]]:
    """Wrap the forward parts (profile_parts.instrument) and the rest of the training step; returns the
    process-wide attributes replaced (object, name, original), for :func:`restore`."""
    model = trainer.model
    instrument(model, trainer.postprocessor, timer)
    if model.heatmap is not None:
        timer.wrap(model.heatmap, "loss", "probe loss")
    timer.wrap(trainer.criterion, "forward", "criterion_all")
    timer.wrap(trainer.criterion.matcher, "forward", "matcher")
    timer.wrap(trainer.optimizer, "step", "optimiser_step")
    if trainer.ema is not None:
        timer.wrap(trainer.ema, "update", "EMA")
    collate = trainer.train_loader.collate_fn
    trainer.train_loader.collate_fn = lambda batch: _timed(timer, "data", collate, batch)
    dataset_cls = type(trainer.train_set)
    dec_module = sys.modules[type(model.decoder).__module__]
    replaced = [(dataset_cls, "__getitem__", "data"), (torch.Tensor, "backward", "backward"),
                (torch.nn.utils, "clip_grad_norm_", "clip"),
                (dec_module, "get_contrastive_denoising_training_group", "denoising")]
    originals = []
    for obj, attr, part in replaced:
        fn = getattr(obj, attr)
        originals.append((obj, attr, fn))
        setattr(obj, attr, lambda *a, _fn=fn, _part=part, **k: _timed(timer, _part, _fn, *a, **k))
    return originals


def restore(originals: list[tuple[object, str, object]]) -> None:
    for obj, attr, fn in originals:
        setattr(obj, attr, fn)


def _timed(timer: PartTimer, name: str, fn, *args, **kwargs):
    with timer.part(name):
        return fn(*args, **kwargs)


def exclusive_step(inc: dict[str, float]) -> dict[str, float]:
    out = exclusive(inc)
    out.pop("post-process", None)
    out["denoising"] = inc.get("denoising", 0.0)
    out["decoder"] -= out["denoising"]
    out["probe loss"] = inc.get("probe loss", 0.0)
    out["matcher"] = inc.get("matcher", 0.0)
    out["losses"] = inc.get("criterion_all", 0.0) - out["matcher"]
    for k in ("data", "backward", "EMA"):
        out[k] = inc.get(k, 0.0)
    out["optimiser"] = inc.get("optimiser_step", 0.0) + inc.get("clip", 0.0)
    return out


def profile(trainer, iters: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per part per iteration (plus ``total``), from the trainer's own epoch loop."""
    timer = PartTimer()
    originals = instrument_step(trainer, timer)
    per_part: dict[str, list[float]] = defaultdict(list)
    marks: list[tuple[float, dict]] = []
    opt_step = trainer.optimizer.step

    def step_and_mark(*a, **k):  # the end of an iteration: the EMA update follows, counted in the next mark
        out = opt_step(*a, **k)
        marks.append((time.perf_counter(), dict(timer.inclusive)))
        return out

    trainer.optimizer.step = step_and_mark
    trainer.train_loader = FirstBatches(trainer.train_loader, warmup + iters + 1)
    try:
        trainer.train_one_epoch(0)
    finally:
        restore(originals)
    for i in range(warmup + 1, len(marks)):
        (t0, inc0), (t1, inc1) = marks[i - 1], marks[i]
        delta = {k: inc1.get(k, 0.0) - inc0.get(k, 0.0) for k in inc1}
        for k, v in exclusive_step(delta).items():
            per_part[k].append(v)
        per_part["total"].append(t1 - t0)
    return per_part


def markdown(per_part: dict[str, list[float]], args, started: str) -> str:
    med = {k: statistics.median(v) * 1e3 for k, v in per_part.items()}
    rows = [[p, f"{med[p]:.0f}", f"{100 * med[p] / med['total']:.1f}"] for p in PARTS if p in med]
    rest = med["total"] - sum(med[p] for p in PARTS if p in med)
    rows.append(["other (bookkeeping, host sync, lr, progress bar; medians do not add up exactly)", f"{rest:.0f}",
                 f"{100 * rest / med['total']:.1f}"])
    rows.append(["**total per iteration**", f"**{med['total']:.0f}**", "100"])
    ips = args.batch / (med["total"] / 1e3)
    extra = [f"model {args.model}, data {args.data}, {args.imgsz} px, batch {args.batch}, "
             f"{torch.get_num_threads()} torch threads, workers 0 (data loading inside the step), "
             f"train args {' '.join(args.set) or '(defaults)'}; medians over {args.iters} iterations after "
             f"{args.warmup} warm-up; {ips:.2f} training images/s"]
    return (header(f"Per-part training step: {args.model}", extra, started_load=started) + "\n"
            + md_table(["part", "ms (median)", "% of step"], rows))


def build_trainer(args, workdir: Path):
    from hmpe.engine.train.trainer import Trainer
    from hmpe.utils.config import default_train_config, parse_overrides

    cfg = default_train_config()
    cfg.update(model=args.model, data=args.data, imgsz=args.imgsz, batch=args.batch, workers=0, device="cpu",
               epochs=1, heatmaps_per_epoch=0, project=str(workdir), name="profile", exist_ok=True)
    cfg.update(parse_overrides(args.set))
    return Trainer(cfg)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="hmpe-n")
    p.add_argument("--data", default="nwpu-vhr10")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], help="hmpe train keys, e.g. 'augment={zoom_out: false}'")
    p.add_argument("--out", default=None, help="markdown path (default benchmarks/results/profile_train_<model>.md)")
    p.add_argument("--smoke", action="store_true", help="synthetic, 64 px, 2 iterations; no file unless --out")
    return p.parse_args(argv)


def main(argv=None) -> dict[str, list[float]]:
    args = parse_args(argv)
    if args.smoke:
        args.data, args.imgsz, args.batch, args.iters, args.warmup = "synthetic", 64, 2, 2, 1
    torch.set_num_threads(args.threads)
    started = load_avg()
    with tempfile.TemporaryDirectory(prefix="hmpe-profile-train-") as tmp:
        trainer = build_trainer(args, Path(tmp))
        per_part = profile(trainer, args.iters, args.warmup)
    text = markdown(per_part, args, started)
    emit_report(text, args.out or (None if args.smoke else RESULTS / f"profile_train_{Path(args.model).stem}.md"))
    return per_part


if __name__ == "__main__":
    default_datasets_env()
    main()
