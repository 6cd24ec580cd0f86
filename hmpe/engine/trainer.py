"""Training engine, readable top to bottom: build -> (resume) -> for each epoch: train, validate, save.

Exact resume: every epoch starts by reseeding Python, NumPy and torch from ``seed + epoch`` and the
data order comes from a generator seeded the same way, so epoch e draws the same augmentations and
denoising noise whether the run got there straight or through a checkpoint.
"""

from __future__ import annotations

import copy
import csv
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from hmpe.data.dataset import build_dataset, collate_fn
from hmpe.data.formats import format_note, load_data_config
from hmpe.data.preprocess import Preprocess
from hmpe.data.transforms import NUM_DROPPED_KEY, build_pipeline, multi_scale_sizes, resize_batch
from hmpe.engine.checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from hmpe.engine.evaluator import COCOEvaluator
from hmpe.engine.optim import ModelEMA, build_param_groups, lr_factor
from hmpe.engine.transfer import load_start_weights
from hmpe.models.detector import build_criterion, build_model, build_postprocessor
from hmpe.utils import dist as du
from hmpe.utils.config import apply_overrides, load_model_config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(spec: str = "auto") -> torch.device:
    if spec in (None, "auto", ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec}: no CUDA device here; use device=cpu")
    return dev


def increment_run_dir(project: str | Path, task: str, name: str | None, exist_ok: bool = False) -> Path:
    """runs/<task>/<name>, or exp, exp2, ... when no name is given or the name is taken."""
    base = Path(project) / task
    stem = name or "exp"
    path = base / stem
    if exist_ok or not path.exists():
        return path
    i = 2
    while (base / f"{stem}{i}").exists():
        i += 1
    return base / f"{stem}{i}"


def amp_dtype(spec, device: torch.device):
    """None (fp32), torch.bfloat16 or torch.float16. ``auto``: bf16 on CUDA, fp32 on the CPU; ``bf16`` and
    ``fp16`` autocast on any device (the CPU through torch's CPU autocast, slow but the same code paths)."""
    if spec in (False, None, "false", "off"):
        return None
    if spec in ("auto", True):
        return torch.bfloat16 if device.type == "cuda" else None
    if spec == "bf16":
        return torch.bfloat16
    if spec == "fp16":
        return torch.float16
    raise ValueError(f"amp={spec!r}: expected auto, bf16, fp16 or false")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def loss_groups(loss_dict: dict[str, float]) -> dict[str, float]:
    """Sum weighted loss terms by kind (vfl, bbox, giou, probe...) across layers/encoder/denoising."""
    out: dict[str, float] = {}
    for k, v in loss_dict.items():
        kind = k.split("_aux")[0].split("_enc")[0].split("_dn")[0]
        out[kind] = out.get(kind, 0.0) + float(v)
    return out


def losses_to_host(loss: torch.Tensor, loss_dict: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """The total and every term as Python floats with ONE device-to-host copy (one sync per step on CUDA,
    instead of one per term), for the finiteness check and the log."""
    vals = torch.stack([loss.detach().float(), *(v.detach().float().reshape(()) for v in loss_dict.values())])
    host = vals.cpu().tolist()
    return host[0], dict(zip(loss_dict, host[1:]))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, postprocessor: nn.Module, evaluator: COCOEvaluator,
             device: torch.device, desc: str = "val", autocast_dtype=None, preprocess: Preprocess | None = None
             ) -> dict:
    """Run ``model`` over ``loader`` (images made by ``preprocess.transform``) and score it; ``preprocess`` maps
    the boxes back to original pixels (letterbox: :meth:`Preprocess.post_sizes`)."""
    model.eval()
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not du.is_main_process()):
        images = images.to(device)
        with ctx:
            outputs = model(images)
        orig = torch.stack([t["orig_size"] for t in targets])
        orig = (preprocess.post_sizes(orig) if preprocess is not None else orig).to(device)
        preds = postprocessor({k: v.float() for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")}, orig)
        evaluator.update([t["image_id"] for t in targets], [{k: v.cpu() for k, v in p.items()} for p in preds])
    # DDP: each rank scored its shard (DistributedSampler pads with repeats; an image id updated twice
    # counts once); one all_gather of the predictions, rank 0 computes, every rank gets its numbers.
    evaluator.synchronize_between_processes()
    return du.broadcast_object(evaluator.compute() if du.is_main_process() else None)


class Trainer:
    """Trains one model on one dataset; ``fit()`` returns the final validation metrics."""

    def __init__(self, cfg: dict, model_cfg: dict | None = None):
        self.cfg = cfg = dict(cfg)
        self.local_rank = du.init_distributed(select_device(cfg.get("device")).type)
        self.device = select_device(cfg.get("device"))
        if self.device.type == "cuda" and du.is_dist():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        self.resume_ckpt = load_checkpoint(cfg["resume"]) if cfg.get("resume") else None
        if self.resume_ckpt is not None:
            # A resumed run continues with the config it was started with (epochs may be extended).
            saved = dict(self.resume_ckpt["train_cfg"])
            for k in ("epochs", "workers", "device"):
                if cfg.get(k) is not None and cfg.get(k) != saved.get(k) and k in cfg.get("_explicit", ()):
                    saved[k] = cfg[k]
            saved["resume"] = cfg["resume"]
            self.cfg = cfg = saved
            model_cfg = self.resume_ckpt["model_cfg"]
        self.model_cfg = model_cfg if model_cfg is not None else load_model_config(cfg["model"])
        seed_everything(cfg["seed"])
        if cfg.get("deterministic"):
            torch.use_deterministic_algorithms(True, warn_only=True)

        # ---- data
        saved_data = self.resume_ckpt.get("data_cfg") if self.resume_ckpt is not None else None
        self.data_cfg = load_data_config(saved_data or cfg["data"])
        aug = cfg.get("augment", True)
        aug_cfg = dict(aug) if isinstance(aug, dict) else {}
        if cfg.get("multi_scale"):
            aug_cfg["multi_scale"] = cfg["multi_scale"]
        self.multi_scale = multi_scale_sizes(aug_cfg, cfg["imgsz"])
        # augment=false trains on the evaluation pipeline (resize only); mosaic: DEIM-style dense augmentation
        tr_t, _, mosaic = build_pipeline(aug, cfg["imgsz"])
        self.preprocess = Preprocess.from_train_cfg(cfg)  # validation = what val/predict/export do later
        va_t = self.preprocess.transform
        self.train_set = build_dataset(self.data_cfg, "train", transforms=tr_t, skip_bad=cfg.get("skip_bad", False),
                                       mosaic=mosaic)
        self.val_set = build_dataset(self.data_cfg, "val", transforms=va_t, skip_bad=cfg.get("skip_bad", False))
        self.names = list(self.train_set.names)
        self.num_classes = len(self.names)
        self.loader_gen = torch.Generator()
        sampler = DistributedSampler(self.train_set, shuffle=True, seed=cfg["seed"]) if du.is_dist() else None
        self.train_sampler = sampler
        self.train_loader = DataLoader(
            self.train_set, batch_size=cfg["batch"], shuffle=sampler is None, sampler=sampler,
            num_workers=cfg["workers"], collate_fn=collate_fn,
            drop_last=(len(sampler) if sampler is not None else len(self.train_set)) > cfg["batch"],
            generator=self.loader_gen, persistent_workers=False)
        val_sampler = DistributedSampler(self.val_set, shuffle=False) if du.is_dist() else None
        self.val_loader = DataLoader(self.val_set, batch_size=cfg["batch"], shuffle=False, sampler=val_sampler,
                                     num_workers=cfg["workers"], collate_fn=collate_fn)

        # ---- model, loss, optimiser
        self.model = build_model(self.model_cfg, self.num_classes).to(self.device)
        self.criterion = build_criterion(self.model_cfg, self.num_classes).to(self.device)
        self.postprocessor = build_postprocessor(self.model_cfg, self.num_classes)
        pretrained = load_start_weights(self.model, self.model_cfg, cfg, self.names,
                                        self.log if self.resume_ckpt is None else None)
        # RT-DETR / RT-DETRv2 train a pretrained backbone at 0.1 x lr; from scratch it gets the full lr
        lr_bb = cfg.get("lr_backbone") or (cfg["lr"] * 0.1 if pretrained else cfg["lr"])
        self.optimizer = torch.optim.AdamW(
            build_param_groups(self.model, cfg["lr"], lr_bb, cfg["weight_decay"]), lr=cfg["lr"])
        for g in self.optimizer.param_groups:
            g["initial_lr"] = g["lr"]
        self.amp_dtype = amp_dtype(cfg.get("amp", "auto"), self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEMA(self.model, cfg["ema_decay"], cfg["ema_warmup"]) if cfg.get("ema", True) else None
        if du.is_dist():
            self._wrap_ddp()

        # ---- state
        self.epochs = int(cfg["epochs"])
        self.start_epoch = 0
        self.iteration = 0
        self.best_fitness = -1.0
        self.nan_count = 0
        self.metrics: dict = {}
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
            self.run_dir = Path(cfg["resume"]).resolve().parent.parent
        else:
            run_dir = increment_run_dir(cfg["project"], "train", cfg.get("name"), cfg.get("exist_ok", False))
            self.run_dir = Path(du.broadcast_object(str(run_dir)))  # rank 0 names it: one folder per run
        self.weights_dir = self.run_dir / "weights"
        if du.is_main_process():
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            self._write_args()

    # ------------------------------------------------------------------ training loop
    def fit(self) -> dict:
        cfg = self.cfg
        self.log(f"hmpe train: {self.model_cfg.get('name', 'model')} on {cfg['data']} ({format_note(self.data_cfg)}; "
                 f"{len(self.train_set)} train / {len(self.val_set)} val images, {self.num_classes} classes), "
                 f"device {self.device}, run folder {self.run_dir}")
        if self.resume_ckpt is not None and self.start_epoch >= self.epochs:
            self.log(f"nothing to resume: {self.run_dir} already completed all {self.epochs} epochs; to train on, "
                     f"start a new run from its weights with weights={self.cfg['resume']}")
            self.metrics = dict(self.resume_ckpt.get("metrics") or {})
            return self.metrics
        t_start = time.time()
        epoch = self.start_epoch
        while epoch < self.epochs:
            t0 = time.time()
            train_stats = self.train_one_epoch(epoch)
            if epoch == self.start_epoch and cfg.get("time_limit") and self.resume_ckpt is None:
                # size the run before save(), so that last.pt already holds the final epoch count
                self._fit_epochs_to_time(time.time() - t_start)
            last = epoch + 1 == self.epochs
            metrics = self.validate() if (last or (epoch + 1) % max(1, cfg["val_interval"]) == 0) else {}
            if metrics:
                self.metrics = metrics
                self.save_val_heatmaps(epoch)
            self.save(epoch, metrics)
            self.log_epoch(epoch, train_stats, metrics, time.time() - t0)
            epoch += 1
        self.finish()
        return self.metrics

    def train_one_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        seed = cfg["seed"] + epoch + 1_000_003 * du.get_rank()  # DDP ranks draw different augmentations
        seed_everything(seed)
        self.loader_gen.manual_seed(seed)
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        self.model.train()
        self.criterion.train()
        total_iters = self.epochs * len(self.train_loader)
        sums: dict[str, float] = {}
        n = dropped = 0
        scale_rng = random.Random(cfg["seed"] * 1000 + epoch)  # batch sizes for multi-scale, resumable
        pbar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.epochs}",
                    disable=not du.is_main_process(), dynamic_ncols=True)
        for images, targets in pbar:
            self._set_lr(total_iters)
            dropped += sum(int(t.get(NUM_DROPPED_KEY, 0)) for t in targets)
            if self.multi_scale:
                images, targets = resize_batch(images, targets, scale_rng.choice(self.multi_scale))
            images = images.to(self.device, non_blocking=True)
            targets = to_device(targets, self.device)
            ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
            with ctx:
                outputs = self.model(images, targets)
            loss_dict = self.criterion(outputs, targets)  # fp32 inside
            loss_dict.update(outputs.get("aux_losses", {}))  # e.g. the heatmap probe's dense losses
            loss = sum(loss_dict.values())

            loss_value, host_losses = losses_to_host(loss, loss_dict)  # the step's only host sync
            if du.any_rank(not math.isfinite(loss_value), self.device):  # DDP: every rank skips together
                self._on_non_finite(images, targets, loss_dict)
                self.iteration += 1
                continue
            self.scaler.scale(loss).backward()
            if cfg["clip_grad"] and cfg["clip_grad"] > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg["clip_grad"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(unwrap(self.model))
            self.iteration += 1

            n += 1
            for k, v in loss_groups(host_losses).items():
                sums[k] = sums.get(k, 0.0) + v
            sums["loss"] = sums.get("loss", 0.0) + loss_value
            pbar.set_postfix(loss=f"{sums['loss'] / n:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        stats = {k: v / max(1, n) for k, v in sums.items()}
        if du.is_dist():
            # DDP broadcasts buffers only at the start of a forward: after the last step each rank holds the
            # BatchNorm statistics of its own last batch. Rank 0's go to every rank (model and EMA), so that
            # validation shards and checkpoints all see one model.
            bufs = list(unwrap(self.model).buffers()) + (list(self.ema.module.buffers()) if self.ema else [])
            du.broadcast_tensors([b for b in bufs if b.is_floating_point() or b.dtype == torch.int64])
            # logged losses: the mean over ranks, not rank 0's shard alone
            parts = du.all_gather_objects(stats)
            stats = {k: sum(p.get(k, 0.0) for p in parts) / len(parts) for k in parts[0]}
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        stats["dropped_boxes"] = dropped
        if dropped and epoch == self.start_epoch:
            self.log(f"augmentation dropped {dropped} degenerate boxes this epoch (cropped out or < 1 px)")
        return stats

    def validate(self) -> dict:
        model = self.ema.module if self.ema is not None else unwrap(self.model)
        evaluator = COCOEvaluator(self.val_set.samples, self.names, max_dets=self.cfg["max_dets"])
        metrics = evaluate(model, self.val_loader, self.postprocessor, evaluator, self.device,
                           autocast_dtype=self.amp_dtype, preprocess=self.preprocess)
        self.evaluator = evaluator
        return metrics

    def save_val_heatmaps(self, epoch: int) -> list[Path]:
        """Heatmap figures of the first ``heatmaps_per_epoch`` validation images (models with a heatmap
        path only; docs/method.md, heatmap section): ``heatmaps/epoch{N}_{i}.png``, ground-truth boxes, stride-8 maps, the
        model that was just validated. The same images every epoch, so the figures show progress."""
        k = min(int(self.cfg.get("heatmaps_per_epoch") or 0), len(self.val_set))
        model = self.ema.module if self.ema is not None else unwrap(self.model)
        if k <= 0 or getattr(model, "heatmap", None) is None or not du.is_main_process():
            return []
        from hmpe.utils.boxes import box_cxcywh_to_xyxy
        from hmpe.viz.heatmap import detector_heatmaps, render_heatmap_figure, tensor_to_uint8

        written = []
        try:
            was_training = model.training
            model.eval()
            items = [self.val_set[i] for i in range(k)]
            _, maps = detector_heatmaps(model, torch.stack([im for im, _ in items]).to(self.device))
            model.train(was_training)
            for i, ((im, t), m) in enumerate(zip(items, maps)):
                h, w = im.shape[-2:]
                boxes = box_cxcywh_to_xyxy(t["boxes"]) * torch.tensor([w, h, w, h])
                png = self.run_dir / "heatmaps" / f"epoch{epoch + 1}_{i}.png"
                render_heatmap_figure(tensor_to_uint8(im), boxes.numpy(), t["labels"].numpy(), self.names, m, png,
                                      dpi=72, title=f"epoch {epoch + 1}, val image {i}: ground truth, stride 8")
                written.append(png)
        except Exception as e:  # a figure must never stop a training run
            self.log(f"could not save validation heatmaps: {e}")
        return written

    # ------------------------------------------------------------------ bookkeeping
    def _set_lr(self, total_iters: int) -> None:
        cfg = self.cfg
        f = lr_factor(self.iteration, total_iters, min(cfg["warmup_iters"], total_iters // 2), cfg["schedule"],
                      cfg["final_lr_factor"], cfg.get("milestones", (0.8,)))
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def _fit_epochs_to_time(self, first_epoch_s: float) -> None:
        """time_limit (minutes): after the first epoch, size the run so the whole schedule fits."""
        budget = float(self.cfg["time_limit"]) * 60
        self.epochs = max(self.start_epoch + 1, int(budget // max(first_epoch_s, 1e-6)))
        self.epochs = int(du.broadcast_object(self.epochs))  # DDP: rank 0's clock decides for every rank
        self.cfg["epochs"] = self.epochs
        self.log(f"time_limit {self.cfg['time_limit']} min: first epoch took {first_epoch_s:.0f} s -> "
                 f"{self.epochs} epochs in all")

    def _on_non_finite(self, images, targets, loss_dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nan_count += 1
        bad = {k: float(v) for k, v in loss_dict.items() if not math.isfinite(float(v))}
        self.log(f"non-finite loss at iteration {self.iteration} ({self.nan_count}/{self.cfg['nan_limit']}): "
                 f"{bad}; step skipped")
        if self.nan_count >= self.cfg["nan_limit"]:
            path = self.run_dir / "bad_batch.pt"
            if du.is_main_process():
                torch.save({"images": images.cpu(), "targets": [{k: (v.cpu() if torch.is_tensor(v) else v)
                                                                 for k, v in t.items()} for t in targets],
                            "losses": {k: float(v) for k, v in loss_dict.items()}}, path)
            raise FloatingPointError(f"{self.nan_count} non-finite losses (limit nan_limit={self.cfg['nan_limit']}); "
                                     f"the last offending batch is saved to {path}")

    def _wrap_ddp(self) -> None:
        """DistributedDataParallel (after optional SyncBatchNorm, CUDA only).

        Parameters that get no gradient in one probe training step (e.g. the HMPE heatmap gate when no
        MOHFE/HIDQ consumes ``H_mixed``) are excluded from DDP's gradient synchronisation: they never
        change (AdamW skips parameters without a gradient), so every rank keeps the same value.
        ``find_unused_parameters=true`` alone would not do: the gate is still reachable from the model's
        outputs (the ``heatmap`` entry), so DDP would wait for its gradient forever. Set
        ``find_unused_parameters=true`` for models that use some parameters only in some iterations."""
        cfg = self.cfg
        if cfg.get("sync_bn"):
            if self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                self.log("sync_bn: SyncBatchNorm needs CUDA; ignored on this CPU run (BatchNorm per process)")
        unused = du.broadcast_object(self._unused_parameters())  # rank 0's list: one decision for all ranks
        if unused:
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, unused)
            self.log(f"DDP: {len(unused)} parameter(s) get no gradient and are not synchronised: "
                     f"{', '.join(unused[:5])}{', ...' if len(unused) > 5 else ''}")
        self.model = nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=bool(cfg.get("find_unused_parameters", False)))
        world = du.get_world_size()
        self.log(f"DDP: {world} processes x batch {cfg['batch']} = global batch {world * cfg['batch']} "
                 f"({self.device.type}); lr {cfg['lr']} is used as given (no automatic scaling)")

    def _unused_parameters(self) -> list[str]:
        """Names of trainable parameters without a gradient after one training step on the first training
        images. Weights, buffers (BatchNorm statistics) and RNG state are restored afterwards."""
        model = self.model
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rng = rng_state()
        try:
            model.train()
            n = max(1, min(2, len(self.train_set)))
            images, targets = collate_fn([self.train_set[i] for i in range(n)])
            targets = to_device(targets, self.device)
            outputs = model(images.to(self.device), targets)
            losses = self.criterion(outputs, targets)
            losses.update(outputs.get("aux_losses", {}))
            sum(losses.values()).backward()
            return [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
        finally:
            model.zero_grad(set_to_none=True)
            model.load_state_dict(saved)
            set_rng_state(rng)

    def checkpoint(self, epoch: int, metrics: dict, final: bool = False) -> dict:
        """The resume state; ``final``: what a user keeps (best.pt, last.pt after the last epoch) -- the EMA
        weights (the raw ones without EMA) as ``model``, no optimiser, scaler or RNG state (about a third of
        the size: AdamW keeps two moments per weight)."""
        base = {"epoch": epoch,  # completed epoch index
                "epochs": self.epochs, "iteration": self.iteration, "best_fitness": self.best_fitness,
                "metrics": metrics, "model_cfg": self.model_cfg, "names": self.names,
                "train_cfg": {k: v for k, v in self.cfg.items() if not k.startswith("_")},
                # resolved (absolute path, format, names), so that val/resume work from any folder
                "data_cfg": dict(self.data_cfg), "hmpe_version": __import__("hmpe").__version__}
        if final:
            weights = self.ema.module.state_dict() if self.ema is not None else unwrap(self.model).state_dict()
            return base | {"model": weights, "ema": None, "final": True}
        return base | {"model": unwrap(self.model).state_dict(),
                       "ema": self.ema.state_dict() if self.ema is not None else None,
                       "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                       "nan_count": self.nan_count, "rng": rng_state()}

    def save(self, epoch: int, metrics: dict) -> None:
        fitness = metrics.get("mAP50_95", -1.0) if metrics else -1.0
        improved = bool(metrics) and fitness > self.best_fitness
        if improved:
            self.best_fitness = fitness
        if not du.is_main_process():
            return
        ckpt = self.checkpoint(epoch, metrics)
        final = self.checkpoint(epoch, metrics, final=True) if improved or epoch + 1 >= self.epochs else None
        # while training runs last.pt is the resume state; after the last epoch it is the weights a user keeps
        save_atomic(final if epoch + 1 >= self.epochs else ckpt, self.weights_dir / "last.pt")
        if improved:
            save_atomic(final, self.weights_dir / "best.pt")
        if self.cfg.get("save_period") and (epoch + 1) % self.cfg["save_period"] == 0:
            save_atomic(ckpt, self.weights_dir / f"epoch{epoch + 1}.pt")

    def _restore(self, ckpt: dict) -> None:
        if ckpt.get("final"):  # a finished run: its final weights, nothing left to resume
            if ckpt["epoch"] + 1 < self.epochs:
                raise ValueError(f"{self.cfg['resume']}: the final checkpoint of a finished run (weights only, no "
                                 f"optimizer state) cannot train more epochs; start a new run from it with "
                                 f"weights={self.cfg['resume']}")
            unwrap(self.model).load_state_dict(ckpt["model"])
            if self.ema is not None:
                self.ema.module.load_state_dict(ckpt["model"])
            self.start_epoch, self.epochs = ckpt["epoch"] + 1, ckpt.get("epochs", self.epochs)
            self.iteration, self.best_fitness = ckpt["iteration"], ckpt["best_fitness"]
            self.metrics = ckpt.get("metrics") or {}
            return
        unwrap(self.model).load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = ckpt["epoch"] + 1
        self.epochs = max(self.epochs, ckpt.get("epochs", self.epochs))
        self.iteration = ckpt["iteration"]
        self.best_fitness = ckpt["best_fitness"]
        self.nan_count = ckpt.get("nan_count", 0)
        self.metrics = ckpt.get("metrics") or {}
        set_rng_state(ckpt["rng"])

    def log(self, msg: str) -> None:
        if du.is_main_process():
            tqdm.write(msg)

    def log_epoch(self, epoch: int, stats: dict, metrics: dict, seconds: float) -> None:
        if not du.is_main_process():
            return
        row = {"epoch": epoch + 1, "time_s": round(seconds, 1)}
        row.update({f"train/{k}": round(v, 6) for k, v in stats.items()})
        keys = ("precision", "recall", "mAP50", "mAP50_95", "mAP75", "AP_small", "AP_medium", "AP_large")
        row.update({f"val/{k}": round(float(metrics[k]), 6) for k in keys if k in metrics})
        path = self.run_dir / "results.csv"
        old_rows = []
        if path.exists():
            with open(path) as f:
                old_rows = list(csv.DictReader(f))
        fields = list(dict.fromkeys([*(old_rows[0].keys() if old_rows else []), *row.keys()]))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in [*old_rows, row]:
                w.writerow(r)
        if metrics:
            self.log(f"epoch {epoch + 1}/{self.epochs}: loss {stats.get('loss', float('nan')):.4f}  "
                     f"P {metrics.get('precision', 0):.3f}  R {metrics.get('recall', 0):.3f}  "
                     f"mAP50 {metrics.get('mAP50', 0):.4f}  mAP50-95 {metrics.get('mAP50_95', 0):.4f}  "
                     f"({seconds:.0f} s)")

    def _write_args(self) -> None:
        import yaml

        with open(self.run_dir / "args.yaml", "w") as f:
            yaml.safe_dump({"train": {k: v for k, v in self.cfg.items() if not k.startswith("_")},
                            "model": self.model_cfg}, f, sort_keys=False)

    def finish(self) -> None:
        if not du.is_main_process():
            return
        from hmpe.viz.plots import plot_results_csv

        try:
            plot_results_csv(self.run_dir / "results.csv", self.run_dir / "results.png")
        except Exception as e:  # plotting must never lose a finished run
            self.log(f"could not plot results.csv: {e}")
        if getattr(self, "evaluator", None) is not None:
            self.evaluator.plot(self.run_dir)
            self.log(self.evaluator.summary_table())
        if self.nan_count:
            self.log(f"{self.nan_count} training steps were skipped for non-finite losses")
        self.log(f"results saved to {self.run_dir}")


def train(cfg: dict, model_cfg_overrides: dict | None = None) -> tuple[Trainer, dict]:
    """Train from a merged training config; model overrides are dotted keys into the model config."""
    model_cfg = None
    if not cfg.get("resume"):
        model_cfg = load_model_config(cfg["model"])
        if cfg.get("weights"):  # fine-tuning: the checkpoint's architecture, its weights loaded by the Trainer
            model_cfg = copy.deepcopy(load_checkpoint(cfg["weights"])["model_cfg"])
            (model_cfg.get("backbone") or {}).pop("pretrained", None)  # superseded by the checkpoint's weights
        model_cfg = apply_overrides(model_cfg, model_cfg_overrides or {})
    trainer = Trainer(cfg, model_cfg)
    metrics = trainer.fit()
    du.cleanup()  # torchrun job: barrier + destroy the process group (no-op in a single process)
    return trainer, metrics
