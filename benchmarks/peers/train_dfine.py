"""Part B's D-FINE-N row: a short loop over transformers' D-FINE-N and its built-in loss (``outputs.loss``),
with hmpe's data pipeline and optimiser recipe (AdamW, warm-up + cosine, grad clip, EMA; the training keys of
``--hmpe-args`` -- lr, warmup_iters, augment / mosaic -- apply to it too), epochs sized after the first one to
fit the minutes, like hmpe's trainer.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from hmpe.data.dataset import build_dataset, collate_fn
from hmpe.data.formats import load_data_config
from hmpe.data.transforms import build_pipeline
from hmpe.engine.bench import count_params
from hmpe.engine.optim import ModelEMA, lr_factor
from hmpe.engine.trainer import seed_everything
from hmpe.utils.config import default_train_config, parse_overrides, split_overrides
from benchmarks.peers.models import SMOKE_QUERIES, dfine_n_config, hf_forward, require
from benchmarks.peers.scoring import score_detr_like


def _setup(args, data, recipe: dict):
    """Seeded data loader (and its generator), model, AdamW (no decay on biases / norms) and EMA."""
    from transformers import DFineForObjectDetection

    seed_everything(args.seed)
    data_cfg = load_data_config(data)
    tr_t, _, mosaic = build_pipeline(False if args.smoke else recipe.get("augment", True), args.imgsz)
    train_set = build_dataset(data_cfg, "train", transforms=tr_t, mosaic=mosaic)
    gen = torch.Generator()
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        collate_fn=collate_fn, drop_last=len(train_set) > args.batch, generator=gen)
    model = DFineForObjectDetection(dfine_n_config(len(train_set.names), SMOKE_QUERIES if args.smoke else 300))
    model.train()
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe["lr"])
    return loader, gen, model, opt, ModelEMA(model, recipe["ema_decay"], recipe["ema_warmup"])


def _epoch(model, loader, opt, ema, recipe: dict, it: int, epochs: int, warmup: int) -> tuple[int, list[float]]:
    """One pass over ``loader`` from iteration ``it``: (the next iteration, the finite losses)."""
    losses = []
    for images, targets in loader:
        total = epochs * len(loader)
        f = lr_factor(it, total, min(warmup, total // 2), recipe["schedule"], recipe["final_lr_factor"],
                      recipe["milestones"])
        for g in opt.param_groups:
            g["lr"] = recipe["lr"] * f
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        loss = model(pixel_values=images, labels=labels).loss
        if not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            it += 1
            continue
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), recipe["clip_grad"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)
        losses.append(loss.item())
        it += 1
    return it, losses


def train_dfine(args, data, workdir: Path) -> dict:
    """A short loop over the HF D-FINE-N and its built-in loss, hmpe's data pipeline and recipe."""
    require("transformers")
    recipe = default_train_config()
    recipe.update(split_overrides(parse_overrides(args.hmpe_args))[1])  # the same recipe as hmpe-n's row
    loader, gen, model, opt, ema = _setup(args, data, recipe)
    epochs = 1 if args.smoke else args.max_epochs
    it, t_start, epoch, log = 0, time.time(), 0, []
    warmup = 2 if args.smoke else recipe["warmup_iters"]
    while epoch < epochs:
        gen.manual_seed(args.seed + epoch)
        t0 = time.time()
        it, losses = _epoch(model, loader, opt, ema, recipe, it, epochs, warmup)
        log.append({"epoch": epoch + 1, "loss": statistics.fmean(losses) if losses else float("nan"),
                    "time_s": time.time() - t0})
        print(f"dfine-n epoch {epoch + 1}/{epochs}: loss {log[-1]['loss']:.3f} ({log[-1]['time_s']:.0f} s)",
              flush=True)
        if epoch == 0 and not args.smoke:
            epochs = max(1, int(args.minutes * 60 // max(time.time() - t_start, 1e-6)))
            print(f"dfine-n: first epoch took {time.time() - t_start:.0f} s -> {epochs} epochs in all", flush=True)
        epoch += 1
    minutes = (time.time() - t_start) / 60
    run_dir = workdir / "dfine-n"
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"ema": ema.module.state_dict(), "log": log}, run_dir / "last.pt")
    metrics = score_detr_like(ema.module.eval(), data, args.imgsz, args.batch, args.workers, hf_forward)
    return {"metrics": metrics, "epochs": epochs, "train_min": minutes, "params": count_params(model),
            "run_dir": str(run_dir)}
