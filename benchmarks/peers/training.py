"""Part B of the peers benchmark: a same-budget training comparison (train split -> val split), from scratch,
the same minutes of this CPU and the same image size for every row.

hmpe rows train with ``hmpe train`` and ``time_limit=MINUTES`` (the trainer sizes the epochs after the first one
so that the whole schedule fits); yolo11n with ultralytics' trainer (:mod:`benchmarks.peers.train_yolo`);
dfine-n by hmpe's own loop with the HF model plugged in (:mod:`benchmarks.peers.train_dfine`).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from hmpe.engine.deploy.bench import count_params
from hmpe.engine.train.trainer import Trainer
from hmpe.utils.config import apply_overrides, default_train_config, parse_overrides, split_overrides
from benchmarks._common import (RESULTS, SkipRow, epochs_trained, load_avg, load_hmpe_model_config, no_network,
                                parse_row_spec, provenance)
from benchmarks.peers.curve import hmpe_curve
from benchmarks.peers.models import PEER_NAMES, split_models
from benchmarks.peers.report import plain_metrics, train_markdown, write_report
from benchmarks.peers.train_dfine import train_dfine
from benchmarks.peers.train_yolo import train_yolo


def smoke_data() -> dict:
    return {"format": "synthetic", "num_train": 8, "num_val": 4, "imgsz": 96, "seed": 0, "overfit": False,
            "min_size": 8, "max_size": 32, "max_objects": 4, "negative_fraction": 0.0,
            "names": ["circle", "square", "triangle", "cross", "ring"]}


def trainer_config(args, data, workdir: Path, name: str) -> tuple[dict, dict]:
    """(training config, model overrides) of a row trained by hmpe's loop: ``time_limit=--minutes``, the
    default recipe with ``--hmpe-args key=value`` on top (the same for hmpe rows and D-FINE-N)."""
    cfg = default_train_config()
    cfg.update(data=data, imgsz=args.imgsz, batch=args.batch, workers=args.workers, device="cpu",
               epochs=args.max_epochs, time_limit=args.minutes, val_interval=10**6, project=str(workdir),
               name=name, exist_ok=True, seed=args.seed, heatmaps_per_epoch=0, save_period=args.curve_every)
    model_extra, train_extra = split_overrides(parse_overrides(args.hmpe_args))
    cfg.update(train_extra)
    if args.smoke:
        cfg.update(epochs=1, time_limit=None, augment=False, warmup_iters=2)
    return cfg, model_extra


def train_hmpe(spec: str, args, data, workdir: Path) -> dict:
    """hmpe's trainer with ``time_limit``: its default recipe, overridable with ``--hmpe-args key=value``."""
    model, over = parse_row_spec(spec)
    cfg, model_extra = trainer_config(args, data, workdir, spec.replace(":", "_").replace("/", "_"))
    cfg["model"] = model
    model_cfg = apply_overrides(load_hmpe_model_config(model, over), model_extra)
    t0 = time.time()
    trainer = Trainer(cfg, model_cfg)
    metrics = trainer.fit()
    out = {"metrics": metrics, "epochs": trainer.epochs, "train_min": (time.time() - t0) / 60,
           "epochs_trained": epochs_trained(trainer),
           "params": count_params(trainer.model), "run_dir": str(trainer.run_dir)}
    if args.curve_every:
        out["curve"] = hmpe_curve(Path(trainer.run_dir), data, args.imgsz, args.batch, metrics)
    return out


def train_row(spec: str, args, data, workdir: Path) -> dict:
    if spec == "yolo11n":
        return train_yolo(args, data, workdir)
    if spec == "dfine-n":
        cfg = trainer_config(args, data, workdir, "dfine-n")[0] | {"save_period": 0}  # no curve: not an hmpe checkpoint
        return train_dfine(cfg, smoke=args.smoke)
    if spec in PEER_NAMES:
        raise SkipRow(f"{spec} has no training recipe in this script (yolo11n, dfine-n, hmpe presets)")
    return train_hmpe(spec, args, data, workdir)


def run_settings(args) -> dict:
    """What a combined result file needs to know of one invocation (:mod:`benchmarks.peers.combine`)."""
    return {**provenance(), "seed": args.seed, "minutes": args.minutes, "imgsz": args.imgsz,
            "batch": args.batch, "threads": args.threads[0], "workers": args.workers,
            "curve_every": args.curve_every, "data": "synthetic (smoke)" if args.smoke else args.data,
            "hmpe_args": list(args.hmpe_args)}


def run_train(args) -> dict:
    started_load = load_avg()
    torch.set_num_threads(args.threads[0])
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = smoke_data() if args.smoke else args.data
    results, skipped = {}, []
    attempts: list[str] = []
    with no_network(attempts):
        for spec in split_models(args.models):
            print(f"=== training {spec} ({args.minutes} min budget, {args.imgsz} px)", flush=True)
            try:
                results[spec] = train_row(spec, args, data, workdir)
            except SkipRow as e:
                skipped.append((spec, str(e)))
                print(f"skipped {spec}: {e}", flush=True)
            gc.collect()
    if attempts:
        raise SystemExit(f"benchmarks.peers: network access was attempted: {attempts}")
    report = {"results": results, "skipped": skipped, "load_start": started_load, "load_end": load_avg()}
    out = Path(args.out) if args.out else (workdir / "peers_train.md" if args.smoke else RESULTS / "peers_train.md")
    saved = {k: {kk: vv for kk, vv in v.items() if kk != "metrics"} | {"metrics": plain_metrics(v["metrics"])}
             for k, v in results.items()} | {"_skipped": skipped, "_settings": run_settings(args)}
    write_report(out, train_markdown(report, args, data), saved)
    report["markdown"] = str(out)
    return report
