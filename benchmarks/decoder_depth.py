"""Decoder depth: AP and GFLOPs of the output of every decoder layer, Det^k (the paper's Table 4).

Usage::

    python -m benchmarks.decoder_depth [--model hmpe-n] [--data nwpu-vhr10] [--layers 6]
        [--epochs 25,50,100 | --budget-minutes 15,30,60] [--fractions 0.1] [--imgsz 512] [--batch 8]
        [--flops-imgsz 640] [--set key=value ...] [--out benchmarks/results/decoder_depth.md]
    python -m benchmarks.decoder_depth --smoke --out runs/decoder_depth.md      # seconds, synthetic data
    python -m benchmarks.decoder_depth --from-run runs/train/exp [--out ...]   # Det^k of a finished run

What it does:
  * the model (a preset or a model YAML) is built with ``decoder.num_layers = L`` (``--layers``) and
    trained from scratch once per *training length* (``--epochs`` list, or ``--budget-minutes`` list:
    the trainer's ``time_limit``, which fits the number of iterations to the measured pace), on the
    whole train split;
  * few-shot rows: for every fraction ``f`` in ``--fractions`` the same model is trained on a fixed
    random subset of ``round(f * N)`` training images (seeded, the same subset for every run) for the
    *longest* training length (the same number of epochs -- so f times fewer iterations -- or the same
    minutes with ``--budget-minutes``);
  * every trained model (the EMA weights when EMA is on) is evaluated on the val split at the output
    of every decoder layer k = 1..L (``RTDETRDecoder`` with ``return_all_layers``; one forward gives
    all layers) and at ``Det^0``, the encoder's top-K proposals before any decoder layer (the query
    selector's class logits and boxes at the selected tokens, caught with a forward hook);
  * GFLOPs of Det^k (2 x MACs, ``torch.utils.flop_counter.FlopCounterMode``, batch 1, at
    ``--flops-imgsz``): the whole model run with ``decoder.eval_idx = k - 1`` (the decoder stops after
    layer k in eval mode); Det^0 stops at the query selection.

``--from-run RUN_DIR`` skips training: the run's ``weights/last.pt`` (EMA weights, its own model config,
data, image size) is scored at every layer on its val split, as one row labelled with the run's epochs.

Writes a markdown report (AP = COCO mAP50-95 and AP50 per k, GFLOPs per k, run settings) to ``--out``
(default ``benchmarks/results/decoder_depth.md``) and prints it. Training runs go to ``--project``.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from hmpe.data.dataset import collate_fn
from hmpe.engine.eval.evaluator import COCOEvaluator
from hmpe.engine.train.trainer import Trainer, unwrap
from hmpe.models.detector import build_postprocessor
from hmpe.utils.config import (apply_overrides, default_train_config, load_model_config,
                               parse_overrides, split_overrides)
from benchmarks._common import default_datasets_env, header, load_avg, train_minutes

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "decoder_depth.md"

SMOKE_DATA = {"format": "synthetic", "num_train": 8, "num_val": 4, "imgsz": 64, "seed": 0, "overfit": False,
              "min_size": 8, "max_size": 20, "max_objects": 3, "negative_fraction": 0.0,
              "names": ["circle", "square", "triangle", "cross", "ring"]}
SMOKE_MODEL = {"name": "smoke-hmpe", "hidden_dim": 32, "backbone": {"name": "B0"},
               "encoder": {"nhead": 4, "dim_feedforward": 64, "expansion": 0.5, "depth_mult": 0.34},
               "heatmap": {"enabled": True}, "mohfe": {"enabled": True, "levels": [0, 1, 2]},
               "hidq": {"enabled": True, "score": "heat"},
               "decoder": {"num_queries": 20, "num_layers": 2, "dim_feedforward": 64, "nhead": 4, "num_points": 2,
                           "num_denoising": 10, "eval_idx": -1},
               "matcher": {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, "loss": {}}


# ---------------------------------------------------------------------------------------------- training
class SubsetTrainer(Trainer):
    """A Trainer whose train split is a fixed random subset (``fraction`` of the images, seeded)."""

    def __init__(self, cfg: dict, model_cfg: dict, fraction: float = 1.0, subset_seed: int = 0):
        super().__init__(cfg, model_cfg)
        self.fraction = float(fraction)
        n_all = len(self.train_set)
        if self.fraction < 1.0:
            n = max(1, round(self.fraction * n_all))
            g = torch.Generator().manual_seed(subset_seed)
            keep = sorted(torch.randperm(n_all, generator=g)[:n].tolist())
            self.train_set.samples = [self.train_set.samples[i] for i in keep]
            batch = self.cfg["batch"]
            self.train_loader = DataLoader(
                self.train_set, batch_size=batch, shuffle=True, num_workers=self.cfg["workers"],
                collate_fn=collate_fn, drop_last=n > batch, generator=self.loader_gen, persistent_workers=False)
        self.num_train_images = len(self.train_set)


# ---------------------------------------------------------------------------------------------- evaluation
def run_context(run_dir: Path, workers: int = 0):
    """(model with EMA weights, model config, train config, trainer-like namespace) of a finished run.

    The namespace carries what :func:`evaluate_layers` reads from a Trainer: the val split through the
    run's evaluation transform, its loader, class names, ``max_dets``, device and class count."""
    from types import SimpleNamespace

    from hmpe.api import load_for_inference
    from hmpe.data.dataset import build_dataset
    from hmpe.data.preprocess import Preprocess

    path = Path(run_dir) / "weights" / "last.pt"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (is {run_dir} a `hmpe train` run folder?)")
    # the trained structure (no deploy fusion): its GFLOPs per layer match the ones of a training row
    model, _, ckpt = load_for_inference(path, torch.device("cpu"), fuse=False)
    tc, names = ckpt["train_cfg"], ckpt["names"]
    val_set = build_dataset(tc["data"], "val", transforms=Preprocess.from_train_cfg(tc).transform)
    loader = DataLoader(val_set, batch_size=tc["batch"], shuffle=False, num_workers=workers, collate_fn=collate_fn)
    ctx = SimpleNamespace(val_set=val_set, val_loader=loader, names=names, cfg={"max_dets": tc["max_dets"]},
                          device=torch.device("cpu"), num_classes=len(names),
                          num_train_images=len(build_dataset(tc["data"], "train")), epochs=ckpt["epochs"])
    return model, ckpt["model_cfg"], tc, ctx


class _Stop(Exception):
    pass


@torch.no_grad()
def evaluate_layers(model: torch.nn.Module, trainer: Trainer, model_cfg: dict) -> list[dict]:
    """COCO metrics of Det^0 (encoder proposals) and Det^1..Det^L on the trainer's val split."""
    model.eval()
    L = model.decoder.num_layers
    nc = trainer.num_classes
    post = build_postprocessor(model_cfg, nc)
    evaluators = [COCOEvaluator(trainer.val_set.samples, trainer.names, max_dets=trainer.cfg["max_dets"])
                  for _ in range(L + 1)]
    caught = {}
    hook = model.decoder.query_selector.register_forward_hook(
        lambda mod, args, out: caught.update(enc={"pred_logits": out[2], "pred_boxes": out[3]}))
    try:
        for images, targets in trainer.val_loader:
            images = images.to(trainer.device)
            out = model(images, return_all_layers=True)
            layers = [caught["enc"]] + list(out["layer_outputs"])
            orig = torch.stack([t["orig_size"] for t in targets]).to(trainer.device)
            ids = [t["image_id"] for t in targets]
            for ev, o in zip(evaluators, layers):
                preds = post({k: o[k].float() for k in ("pred_logits", "pred_boxes")}, orig)
                ev.update(ids, [{k: v.cpu() for k, v in p.items()} for p in preds])
    finally:
        hook.remove()
    return [ev.compute() for ev in evaluators]


@torch.no_grad()
def gflops_per_layer(model: torch.nn.Module, imgsz: int) -> list[float]:
    """GFLOPs (batch 1, imgsz x imgsz) of Det^0..Det^L: the model run up to decoder layer k."""
    model = copy.deepcopy(model).cpu().eval()
    x = torch.rand(1, 3, imgsz, imgsz)
    L = model.decoder.num_layers
    out = []

    def stop(*_):
        raise _Stop

    hook = model.decoder.query_selector.register_forward_hook(stop)
    with FlopCounterMode(display=False) as fc:
        try:
            model(x)
        except _Stop:
            pass
    hook.remove()
    out.append(fc.get_total_flops() / 1e9)
    for k in range(1, L + 1):
        model.decoder.eval_idx = k - 1
        with FlopCounterMode(display=False) as fc:
            model(x)
        out.append(fc.get_total_flops() / 1e9)
    return out


# ---------------------------------------------------------------------------------------------- report
def _fmt(v: float) -> str:
    return f"{100 * v:.1f}"


def render(rows: list[dict], gflops: list[float], meta: dict) -> str:
    L = len(gflops) - 1
    head = "| training | train images | " + " | ".join(f"Det^{k}" for k in range(L + 1)) + " | best k |"
    sep = "| --- | ---: | " + " | ".join("---:" for _ in range(L + 1)) + " | ---: |"
    lines = [
        header("Decoder depth: Det^k (paper Table 4)", [
            f"device {meta['device']}, torch threads {meta['threads']}"], started_load=meta["load"]).rstrip("\n"),
        f"- model: `{meta['model']}` with **L = {L} decoder layers** ({meta['model_desc']}); data: `{meta['data']}` "
        f"({meta['num_train']} train / {meta['num_val']} val images), imgsz {meta['imgsz']}, batch {meta['batch']}, "
        f"lr {meta['lr']}, EMA {meta['ema']}, augment {meta['augment']}, seed {meta['seed']}.",
        "- Det^k = the output of decoder layer k of the *same* trained model (one forward with "
        "`return_all_layers`); Det^0 = the encoder's top-K proposals (query selection, before any decoder layer).",
        "- Each row is one training run from scratch; few-shot rows train on a fixed random subset "
        f"({meta['fewshot_note']}).",
        "- AP = COCO mAP50-95 (%) on the val split (hmpe's COCOEvaluator); AP50 below. GFLOPs = 2 x MACs "
        f"(FlopCounterMode) at {meta['flops_imgsz']}x{meta['flops_imgsz']}, batch 1, for the model run up to layer k.",
        "",
        "## AP (mAP50-95, %)",
        "",
        head, sep,
    ]
    for r in rows:
        aps = [m["mAP50_95"] for m in r["metrics"]]
        best = max(range(len(aps)), key=lambda k: (round(aps[k], 4), -k))
        lines.append(f"| {r['label']} | {r['num_train']} | " + " | ".join(_fmt(a) for a in aps) + f" | {best} |")
    lines += ["", "## AP50 (%)", "", head, sep]
    for r in rows:
        aps = [m["mAP50"] for m in r["metrics"]]
        best = max(range(len(aps)), key=lambda k: (round(aps[k], 4), -k))
        lines.append(f"| {r['label']} | {r['num_train']} | " + " | ".join(_fmt(a) for a in aps) + f" | {best} |")
    lines += ["", "## GFLOPs", "", "| | " + " | ".join(f"Det^{k}" for k in range(L + 1)) + " |",
              "| --- | " + " | ".join("---:" for _ in range(L + 1)) + " |",
              "| GFLOPs | " + " | ".join(f"{g:.2f}" if g >= 1 else f"{g:.4f}" for g in gflops) + " |",
              "| vs Det^L | " + " | ".join(f"{g / gflops[-1]:.3f}" for g in gflops) + " |",
              "", "## Runs", "", "| training | train images | epochs run | train minutes (wall) | run folder |",
              "| --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['num_train']} | {r['epochs']} | {r['minutes']:.1f} | `{r['run_dir']}` |")
    return "\n".join(lines) + "\n"


def describe_model(model_cfg: dict) -> str:
    """'hidden D, backbone B0 + lsconv, HMPE parts: heatmap, mohfe, hidq' for the report."""
    parts = [k for k in ("heatmap", "mohfe", "hidq") if (model_cfg.get(k) or {}) and
             (model_cfg.get(k) or {}).get("enabled", True) is not False]
    strip = (model_cfg.get("backbone") or {}).get("strip_conv")
    return (f"hidden {model_cfg.get('hidden_dim', 256)}, backbone "
            f"{(model_cfg.get('backbone') or {}).get('name', 'B0')}"
            f"{' + ' + strip['kind'] if isinstance(strip, dict) else ''}, HMPE parts: {', '.join(parts) or 'none'}")


def write_report(text: str, out: str | Path) -> int:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


# ---------------------------------------------------------------------------------------------- main
def _floats(text: str | None) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()] if text else []


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="hmpe-n", help="model preset or YAML (default hmpe-n)")
    ap.add_argument("--data", default="nwpu-vhr10", help="dataset YAML or shipped name (default nwpu-vhr10)")
    ap.add_argument("--layers", type=int, default=6, help="decoder layers L to train with (default 6)")
    ap.add_argument("--epochs", default=None, help="training lengths in epochs, comma-separated (default 25,50,100)")
    ap.add_argument("--budget-minutes", default=None,
                    help="training lengths as CPU/GPU time budgets in minutes (trainer time_limit), comma-separated")
    ap.add_argument("--fractions", default="0.1",
                    help="few-shot fractions of the train split, comma-separated; '' for none (default 0.1)")
    ap.add_argument("--imgsz", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None, help="default: the training default (hmpe cfg)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--flops-imgsz", type=int, default=640)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra overrides, training (ema=false) or dotted model keys (hidq.score=heat*cls)")
    ap.add_argument("--project", default="runs/decoder_depth", help="training runs (under the working directory)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--from-run", default=None, metavar="RUN_DIR",
                    help="no training: score every layer of this finished run (its last.pt, EMA weights)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny synthetic data and model (64 px, 2 layers, 1 and 2 epochs, fraction 0.5): seconds")
    return ap


@dataclass
class Plan:
    """What to train: the model config (decoder depth set), data, lengths and the fixed training settings."""
    model_cfg: dict
    data: Any
    model_name: str
    lengths: list[float]
    budget: bool  # lengths are minutes (time_limit), else epochs
    fractions: list[float]
    imgsz: int
    batch: int
    workers: int
    flops_imgsz: int
    base_train: dict
    train_over: dict

    def length_label(self, n: float) -> str:
        return f"{n:g} min" if self.budget else f"{int(n)} epoch{'s' if int(n) != 1 else ''}"

    def schedule(self) -> list[tuple[str, float, float]]:
        """(label, length, train fraction) per row: every length, then the few-shot rows at the longest."""
        plan = [(self.length_label(n), n, 1.0) for n in self.lengths]
        return plan + [(f"few-shot {f:g} ({self.length_label(self.lengths[-1])})", self.lengths[-1], f)
                       for f in self.fractions]


def make_plan(args, ap: argparse.ArgumentParser) -> Plan:
    model_over, train_over = split_overrides(parse_overrides(args.set))
    if args.smoke:
        model_cfg = copy.deepcopy(SMOKE_MODEL)
        args.layers = model_cfg["decoder"]["num_layers"] if args.layers == 6 else args.layers
        plan = Plan(model_cfg, copy.deepcopy(SMOKE_DATA), "smoke (tiny HMPE, hidden 32)", [1.0, 2.0], False, [0.5],
                    64, 4, 0, 64, dict(augment=False, ema=False, lr=2e-3, warmup_iters=2), train_over)
    else:
        if args.budget_minutes is not None and args.epochs is not None:
            ap.error("give --epochs or --budget-minutes, not both")
        budget = args.budget_minutes is not None
        lengths = _floats(args.budget_minutes) if budget else _floats(args.epochs or "25,50,100")
        plan = Plan(load_model_config(args.model), args.data, args.model, lengths, budget,
                    [f for f in _floats(args.fractions) if 0 < f < 1], args.imgsz, args.batch, args.workers,
                    args.flops_imgsz, {}, train_over)
    if not plan.lengths:
        ap.error("no training length given")
    plan.model_cfg = apply_overrides(plan.model_cfg, model_over)
    plan.model_cfg.setdefault("decoder", {})
    plan.model_cfg["decoder"]["num_layers"] = int(args.layers)
    plan.model_cfg["decoder"]["eval_idx"] = -1
    return plan


def train_cfg(plan: Plan, args, name: str, length: float) -> dict:
    cfg = default_train_config()
    cfg.update(data=plan.data, imgsz=plan.imgsz, batch=plan.batch, workers=plan.workers, seed=args.seed,
               device=args.device, project=args.project, name=name, exist_ok=True, val_interval=10**6,
               **plan.base_train)
    if args.lr is not None:
        cfg["lr"] = args.lr
    if plan.budget:
        cfg.update(epochs=10**6, time_limit=float(length))
    else:
        cfg.update(epochs=int(length))
    cfg.update(plan.train_over)
    return cfg


def train_row(plan: Plan, args, label: str, length: float, fraction: float) -> tuple[dict, nn.Module, Trainer]:
    """One training run and Det^0..Det^L of its (EMA) model: (the report row, the model, its trainer)."""
    tag = f"L{args.layers}-{('%gmin' % length) if plan.budget else ('%dep' % length)}-f{fraction:g}"
    t0 = time.time()
    trainer = SubsetTrainer(train_cfg(plan, args, tag, length), copy.deepcopy(plan.model_cfg), fraction,
                            subset_seed=args.seed)
    trainer.fit()
    minutes = (time.time() - t0) / 60
    model = trainer.ema.module if trainer.ema is not None else unwrap(trainer.model)
    metrics = evaluate_layers(model, trainer, plan.model_cfg)
    final = trainer.metrics.get("mAP50_95")
    if final is not None and abs(final - metrics[-1]["mAP50_95"]) > 1e-6:  # Det^L is the trained model's output
        print(f"[decoder_depth] warning: Det^L mAP50-95 {metrics[-1]['mAP50_95']:.4f} differs from the "
              f"trainer's final validation {final:.4f}", flush=True)
    row = {"label": label, "num_train": trainer.num_train_images, "metrics": metrics,
           "epochs": trainer.epochs, "minutes": minutes, "run_dir": str(trainer.run_dir)}
    return row, model, trainer


def run_meta(plan: Plan, args, trainer: Trainer, rows: list[dict], started_load: str) -> dict:
    fractions = plan.fractions
    return {
        "device": str(trainer.device), "threads": torch.get_num_threads(), "load": started_load,
        "model": plan.model_name, "model_desc": describe_model(plan.model_cfg),
        "data": plan.data if isinstance(plan.data, str) else "synthetic (smoke)",
        "num_train": len(trainer.train_set) if not fractions else rows[0]["num_train"],
        "num_val": len(trainer.val_set), "imgsz": plan.imgsz, "batch": plan.batch, "lr": trainer.cfg["lr"],
        "ema": bool(trainer.cfg.get("ema")), "augment": bool(trainer.cfg.get("augment")), "seed": args.seed,
        "flops_imgsz": plan.flops_imgsz,
        "fewshot_note": (", ".join(f"{f:g} of the train split" for f in fractions) +
                         (f", seed {args.seed}, trained for the longest length" if fractions else "")) or "none",
    }


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    default_datasets_env()
    started_load = load_avg()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_run:
        return from_run(Path(args.from_run), args, started_load)
    plan = make_plan(args, ap)
    rows, gflops, trainer = [], None, None
    for label, length, fraction in plan.schedule():
        row, model, trainer = train_row(plan, args, label, length, fraction)
        if gflops is None:
            gflops = gflops_per_layer(model, plan.flops_imgsz)
        rows.append(row)
        print(f"[decoder_depth] {label}: AP per k " + ", ".join(_fmt(m["mAP50_95"]) for m in row["metrics"]),
              flush=True)
    return write_report(render(rows, gflops, run_meta(plan, args, trainer, rows, started_load)), args.out)


def from_run(run_dir: Path, args, started_load: str) -> int:
    model, model_cfg, tc, ctx = run_context(run_dir, workers=0)
    metrics = evaluate_layers(model, ctx, model_cfg)
    gflops = gflops_per_layer(model, args.flops_imgsz)
    epochs = ctx.epochs
    rows = [{"label": f"{tc.get('time_limit') or '?'} min ({epochs} epochs)", "num_train": ctx.num_train_images,
             "metrics": metrics, "epochs": epochs, "minutes": train_minutes(run_dir / "results.csv"),
             "run_dir": str(run_dir)}]
    meta = {
        "device": "cpu", "threads": torch.get_num_threads(), "load": started_load, "model": tc.get("model"),
        "model_desc": f"{describe_model(model_cfg)}; scored from the finished run `{run_dir}`",
        "data": tc["data"] if isinstance(tc["data"], str) else "synthetic", "num_train": ctx.num_train_images,
        "num_val": len(ctx.val_set), "imgsz": tc["imgsz"], "batch": tc["batch"], "lr": tc["lr"],
        "ema": bool(tc.get("ema")), "augment": tc.get("augment"), "seed": tc.get("seed"),
        "flops_imgsz": args.flops_imgsz, "fewshot_note": "none",
    }
    return write_report(render(rows, gflops, meta), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
