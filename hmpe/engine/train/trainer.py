"""The training loop, readable top to bottom: for each epoch: train, (size the run to ``time_limit``), validate,
save, log, callbacks. What the loop runs on is built beforehand by :mod:`hmpe.engine.train.train_setup`; the run
folder's files are written by :mod:`hmpe.engine.train.run_log`.

Exact resume: every epoch starts by reseeding Python, NumPy and torch from ``seed + epoch`` and the
data order comes from a generator seeded the same way, so epoch e draws the same augmentations and
denoising noise whether the run got there straight or through a checkpoint.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from hmpe.data.formats import format_note
from hmpe.data.preprocess import Preprocess
from hmpe.data.tiles import TiledDataset
from hmpe.data.transforms import NUM_DROPPED_KEY, resize_batch
from hmpe.engine.checkpoint import rng_state, save_atomic, stored_paths
from hmpe.engine.eval.evaluator import COCOEvaluator
from hmpe.engine.eval.slicing import evaluate_sliced, model_predict_fn
from hmpe.engine.train.interrupt import StopFlag, TrainingInterrupted, save_interrupted, skip_done_batches
from hmpe.engine.train.optim import TimeBudget, lr_factor
from hmpe.engine.train.run_log import append_row, epoch_row, log, loss_groups, losses_to_host
from hmpe.engine.train.train_setup import ModelParts, build_train_setup, resolve_model_cfg, to_device, unwrap
from hmpe.models.heatmap.mask_stats import MaskStatsAccumulator, level_names, target_boxes_xyxy
from hmpe.utils import dist as du
from hmpe.utils.boxes import box_cxcywh_to_xyxy
from hmpe.utils.keys import defaults
from hmpe.utils.runtime import AMP_DTYPES, seed_everything
from hmpe.viz.heatmap import detector_heatmaps, render_heatmap_figure, tensor_to_uint8
from hmpe.viz.plots import plot_results_csv

__all__ = ["ModelParts", "Trainer", "TrainingInterrupted", "evaluate", "loss_groups", "losses_to_host", "train",
           "unwrap"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, postprocessor: nn.Module, evaluator: COCOEvaluator,
             device: torch.device, desc: str = "val", preprocess: Preprocess | None = None) -> dict:
    """Run ``model`` over ``loader`` (images made by ``preprocess.transform``) and score it; ``preprocess`` maps
    the boxes back to original pixels (letterbox: :meth:`Preprocess.post_sizes`). Models with a heatmap path
    also report their mask per level (:func:`mask_diagnostics`): ``mask_bg_masked/S3`` (background cells the
    mask zeroes), ``mask_obj_hot/S3`` (object cells it keeps), ... for S3, S4, S5, and the gate ``gate/S3``
    (lambda of eq. 4) per level. Always fp32, also for a run
    trained under autocast, so that the trainer's figures are the ones ``hmpe val`` reproduces."""
    model.eval()
    masks = MaskStatsAccumulator()
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not du.is_main_process()):
        images = images.to(device)
        outputs = model(images)
        if "heatmap" in outputs:
            hw = tuple(images.shape[-2:])
            masks.update(outputs["heatmap"].mask, target_boxes_xyxy(targets, hw), hw)
            levels, gate = level_names(outputs["heatmap"].strides), outputs["heatmap"].gate
        orig = torch.stack([t["orig_size"] for t in targets])
        orig = (preprocess.post_sizes(orig) if preprocess is not None else orig).to(device)
        preds = postprocessor({k: v.float() for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")}, orig)
        evaluator.update([t["image_id"] for t in targets], [{k: v.cpu() for k, v in p.items()} for p in preds])
    # DDP: each rank scored its shard (DistributedSampler pads with repeats; an image id updated twice
    # counts once); one all_gather of the predictions, rank 0 computes, every rank gets its numbers.
    evaluator.synchronize_between_processes()
    metrics = du.broadcast_object(evaluator.compute() if du.is_main_process() else None)
    if masks.counts:
        metrics.update(mask_diagnostics(masks, levels))
        metrics.update({f"gate/{lv}": float(g) for lv, g in zip(levels, gate)})  # lambda_l of eq. 4
    return metrics


def mask_diagnostics(masks: MaskStatsAccumulator, levels: list[str]) -> dict[str, float]:
    """The mask statistics of every rank's shard pooled (counts summed), by level name."""
    pooled = MaskStatsAccumulator()
    for counts in du.all_gather_objects(masks.counts):
        for level, c in counts.items():
            pooled.counts[level] = pooled.counts.get(level, 0) + c
    return pooled.summary(levels)


class Trainer:
    """Trains one model on one dataset; ``fit()`` returns the final validation metrics.

    ``Trainer(cfg, model_cfg=None, *, explicit_keys=(), model=None, callbacks=())``

    * ``cfg``: a merged training config (:func:`hmpe.utils.config.default_train_config` + overrides).
    * ``model_cfg``: the model config (default: ``cfg["model"]`` loaded; a resumed run uses its checkpoint's).
    * ``explicit_keys``: the training keys the user typed; on ``resume`` only those of ``epochs``, ``workers``,
      ``device`` replace the checkpoint's config (a default value never does).
    * ``model``: an externally built detector as :class:`~hmpe.engine.train.train_setup.ModelParts`, or a factory
      ``model(names) -> ModelParts`` called once the run is seeded and the dataset's class names are known
      (instead of building one from ``model_cfg``); it then trains through this same loop - hmpe's data pipeline,
      AdamW with warm-up and the lr schedule, ``time_limit`` sizing, gradient clipping, EMA, checkpoints,
      ``results.csv`` and validation with hmpe's evaluator. The contract:

      - ``parts.model(images, targets)`` in train mode returns a dict the criterion reads (an optional
        ``"aux_losses"`` entry: extra weighted loss terms, added to the loss); ``parts.model(images)`` in eval
        mode returns at least ``pred_logits [B,Q,C]`` and ``pred_boxes [B,Q,4]`` (normalised cxcywh).
        ``images``: float [B,3,H,W] in [0,1]; ``targets``: per image ``labels`` [N] int64 and ``boxes``
        [N,4] normalised cxcywh (plus ``image_id``, ``orig_size``).
      - ``parts.criterion(outputs, targets) -> dict[str, Tensor]``: weighted loss terms, summed into the
        loss; an optional ``loss_groups`` mapping (term name -> group) sums terms in the log.
      - ``parts.postprocessor(outputs, orig_sizes [B,2] (w, h)) -> list[dict]`` with ``boxes`` (xyxy pixels),
        ``scores``, ``labels``, e.g. :class:`hmpe.models.rtdetr.postprocess.PostProcessor`.
      - ``parts.model_cfg``: a dict recorded in ``args.yaml`` and the checkpoints (``name`` names the run
        in the log); ``parts.param_groups``: optional AdamW groups (default: no decay on 1-d parameters and
        biases, parameters named ``backbone.*`` at ``lr_backbone``).

      ``weights=`` does not apply (load the model's weights before passing it); checkpoints hold its
      ``state_dict`` and resume with the same ``model`` passed again.
    * ``callbacks``: objects with any of ``on_train_start(trainer)``, ``on_epoch_end(trainer, epoch, metrics)``
      (``epoch`` 0-based, ``metrics`` the validation metrics of that epoch, ``{}`` when it was not validated;
      ``trainer.train_stats`` holds its mean losses) and ``on_train_end(trainer, metrics)``, called in list
      order on every rank.

    Setup (process group, run folder, data, model, optimiser, EMA, resume) is
    :func:`hmpe.engine.train.train_setup.build_train_setup`; this class is the loop.
    """

    def __init__(self, cfg: dict, model_cfg: dict | None = None, *, explicit_keys: Iterable[str] = (),
                 model: ModelParts | Callable[[list[str]], ModelParts] | None = None, callbacks: Iterable = ()):
        s = build_train_setup(cfg, model_cfg, explicit_keys=explicit_keys, parts=model)
        self.cfg, self.model_cfg, self.device, self.local_rank = s.cfg, s.model_cfg, s.device, s.local_rank
        self.resume_ckpt, self.run_dir, self.weights_dir = s.resume_ckpt, s.run_dir, s.run_dir / "weights"
        d = s.data
        self.data_cfg, self.train_set, self.val_set, self.preprocess = d.data_cfg, d.train_set, d.val_set, d.preprocess
        self.train_loader, self.val_loader, self.train_sampler = d.train_loader, d.val_loader, d.train_sampler
        self.pipelines = d.pipelines
        self.loader_gen, self.multi_scale, self.names, self.num_classes = d.loader_gen, d.multi_scale, d.names, len(d.names)
        self.model, self.criterion, self.postprocessor = s.parts.model, s.parts.criterion, s.parts.postprocessor
        self.optimizer, self.scaler, self.amp_dtype, self.ema = s.optimizer, s.scaler, s.amp_dtype, s.ema
        st = s.state
        self.epochs, self.start_epoch, self.iteration, self.best_fitness = st.epochs, st.start_epoch, st.iteration, st.best_fitness
        self.budget_iters = st.budget_iters
        # time_limit: re-sized after every epoch; None also for a checkpoint written before that (its size stays)
        self.time_budget = (TimeBudget(self.cfg["time_limit"], st.time_budget) if self.cfg.get("time_limit") and
                            (self.resume_ckpt is None or st.time_budget is not None) else None)
        self.nan_count, self.metrics = st.nan_count, st.metrics
        self.callbacks = list(callbacks)
        self.train_stats: dict = {}
        self.evaluator: COCOEvaluator | None = None
        self.stop = StopFlag()  # Ctrl-C: stop between two steps (hmpe.engine.train.interrupt)
        # the epoch in progress (batches done, loss sums): what Ctrl-C saves; the one a resumed run continues
        self.epoch_progress: dict | None = None
        self.resumed_progress: dict | None = (self.resume_ckpt or {}).get("epoch_progress")

    log = staticmethod(log)

    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, event, None)
            if fn is not None:
                fn(self, *args)

    # ------------------------------------------------------------------ training loop
    def fit(self) -> dict:
        """Train the remaining epochs; the final validation metrics. Ctrl-C stops after the training step in
        progress, saves where the run stopped as a resumable ``last.pt`` (mid-epoch: ``resume=`` continues
        inside that epoch, as an uninterrupted run would) and raises :class:`TrainingInterrupted`."""
        try:
            with self.stop:
                return self._fit()
        except KeyboardInterrupt as e:
            raise save_interrupted(self) from e

    def _fit(self) -> dict:
        cfg = self.cfg
        self.log(f"hmpe train: {self.model_cfg.get('name', 'model')} on {cfg['data']} ({format_note(self.data_cfg)}; "
                 f"{self._train_items()} / {len(self.val_set)} val images, {self.num_classes} classes), "
                 f"device {self.device}{self._precision_note()}, run folder {self.run_dir}")
        if self.resume_ckpt is not None and self.start_epoch >= self.epochs:
            self.log(f"nothing to resume: {self.run_dir} already completed all {self.epochs} epochs; to train on, "
                     f"start a new run from its weights with weights={self.cfg['resume']}")
            self.metrics = dict(self.resume_ckpt.get("metrics") or {})
            return self.metrics
        self._emit("on_train_start")
        if self.time_budget is not None:
            self.time_budget.start()
        epoch = self.start_epoch
        while epoch < self.epochs:
            t0 = time.time()
            self.train_stats = stats = self.train_one_epoch(epoch)
            if self.time_budget is not None and (self.budget_iters is None or self.iteration < self.budget_iters):
                # re-size the run after every epoch until its budget is spent; before the validation (an epoch
                # that becomes the last is validated) and save() (last.pt holds the current size)
                self._fit_epochs_to_time(epoch)
            last = epoch + 1 == self.epochs
            metrics = self.validate() if (last or (epoch + 1) % max(1, cfg["val_interval"]) == 0) else {}
            if metrics:
                self.metrics = metrics
                self.save_val_heatmaps(epoch)
            self.epoch_progress = None  # from here on last.pt holds the completed epoch
            self.save(epoch, metrics)
            self.log_epoch(epoch, stats, metrics, time.time() - t0)
            self._emit("on_epoch_end", epoch, metrics)
            epoch += 1
            if self.stop.requested and epoch < self.epochs:  # Ctrl-C during validation or saving
                raise KeyboardInterrupt
        self.finish()
        self._emit("on_train_end", self.metrics)
        return self.metrics

    def train_one_epoch(self, epoch: int) -> dict:
        """One pass over the training loader; returns the epoch's mean loss groups, ``loss``, ``lr`` and the
        number of boxes augmentation dropped."""
        cfg = self.cfg
        seed = cfg["seed"] + epoch + 1_000_003 * du.get_rank()  # DDP ranks draw different augmentations
        seed_everything(seed)
        self.loader_gen.manual_seed(seed)
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        if isinstance(self.train_set, TiledDataset):  # the epoch's tiles: drawn from seed and epoch, resumable
            self.train_set.set_epoch(epoch)
        self._augmentation_for(epoch)
        self.model.train()
        if isinstance(self.criterion, nn.Module):
            self.criterion.train()
        total_iters = self.total_iters
        scale_rng = random.Random(cfg["seed"] * 1000 + epoch)  # batch sizes for multi-scale, resumable
        batches = iter(self.train_loader)
        done = skip_done_batches(self, epoch, batches, scale_rng)  # resumed mid-epoch: the batches already done
        sums: dict[str, float] = dict(done["sums"])
        n, dropped = done["n"], done["dropped"]
        pbar = tqdm(batches, total=len(self.train_loader), initial=done["batches"],
                    desc=f"epoch {epoch + 1}/{self.epochs}", disable=not du.is_main_process(), dynamic_ncols=True)
        for i, (images, targets) in enumerate(pbar, start=done["batches"] + 1):  # i: batches done after this one
            if self.iteration >= total_iters:  # time_limit: the budget ends inside this (last) epoch
                break
            self._set_lr(total_iters)
            dropped += sum(int(t.get(NUM_DROPPED_KEY, 0)) for t in targets)
            if self.multi_scale:
                images, targets = resize_batch(images, targets, scale_rng.choice(self.multi_scale))
            step = self.train_step(images, targets)
            if step is not None:
                n += 1
                for k, v in step.items():
                    sums[k] = sums.get(k, 0.0) + v
                pbar.set_postfix(loss=f"{sums['loss'] / n:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            self.epoch_progress = {"epoch": epoch, "batches": i, "sums": dict(sums), "n": n, "dropped": dropped}
            if self.stop.requested:  # Ctrl-C: stop here, between two steps
                raise KeyboardInterrupt
        stats = self._epoch_stats({k: v / max(1, n) for k, v in sums.items()})
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        stats["dropped_boxes"] = dropped
        if dropped and epoch == self.start_epoch:
            self.log(f"augmentation dropped {dropped} degenerate boxes this epoch (cropped out or < 1 px)")
        return stats

    def train_step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float] | None:
        """Forward, loss, backward, optimiser and EMA step on one batch; the loss groups and ``loss`` as
        floats, or None when the loss was not finite (the step is skipped on every rank)."""
        images = images.to(self.device, non_blocking=True)
        if self.cfg["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
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
            return None
        self.scaler.scale(loss).backward()
        if self.cfg["clip_grad"] and self.cfg["clip_grad"] > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["clip_grad"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        self.iteration += 1
        out = loss_groups(host_losses, getattr(self.criterion, "loss_groups", {}))
        out["loss"] = loss_value
        return out

    def _epoch_stats(self, stats: dict) -> dict:
        if not du.is_dist():
            return stats
        # DDP broadcasts buffers only at the start of a forward: after the last step each rank holds the
        # BatchNorm statistics of its own last batch. Rank 0's go to every rank (model and EMA), so that
        # validation shards and checkpoints all see one model.
        bufs = list(unwrap(self.model).buffers()) + (list(self.ema.module.buffers()) if self.ema else [])
        du.broadcast_tensors([b for b in bufs if b.is_floating_point() or b.dtype == torch.int64])
        # logged losses: the mean over ranks, not rank 0's shard alone
        parts = du.all_gather_objects(stats)
        return {k: sum(p.get(k, 0.0) for p in parts) / len(parts) for k in parts[0]}

    def _train_items(self) -> str:
        if isinstance(self.train_set, TiledDataset):
            return f"{len(self.train_set.samples)} train images as {self.train_set.describe()}"
        return f"{len(self.train_set)} train"

    def _precision_note(self) -> str:
        """', bf16 autocast (amp=auto)' when the step runs under autocast: said once, at the start."""
        if self.amp_dtype is None:
            return ""
        name = next(k for k, v in AMP_DTYPES.items() if v is self.amp_dtype)
        return f", {name} autocast (amp={self.cfg['amp']})"

    def eval_model(self) -> nn.Module:
        """The model validation and the final checkpoint use: the EMA when there is one."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    def validate(self) -> dict:
        evaluator = COCOEvaluator(self.val_set.samples, self.names, max_dets=self.cfg["max_dets"],
                                  input_scale=self.preprocess.input_scale)
        if self.cfg.get("tile"):  # a tile-trained model is scored as it is used: sliced, on whole images
            model = self.eval_model().eval()  # as evaluate() does: the weights without EMA are in train mode here
            predict_fn = model_predict_fn(model, self.postprocessor, self.device, self.preprocess.imgsz)
            opts = defaults("val")  # the settings hmpe val slices with, so that it reproduces this figure
            metrics = evaluate_sliced(predict_fn, self.val_set, evaluator, self.cfg["tile"], self.preprocess,
                                      self.cfg["tile_overlap"], self.cfg["batch"], conf=opts["conf"],
                                      merge=opts["merge"], merge_iou=opts["merge_iou"], progress=du.is_main_process())
        else:
            metrics = evaluate(self.eval_model(), self.val_loader, self.postprocessor, evaluator, self.device,
                               preprocess=self.preprocess)
        self.evaluator = evaluator
        return metrics

    def save_val_heatmaps(self, epoch: int) -> list[Path]:
        """Heatmap figures of the first ``heatmaps_per_epoch`` validation images (models with a heatmap
        path only; docs/method.md, heatmap section): ``heatmaps/epoch{N}_{i}.png``, ground-truth boxes, stride-8 maps, the
        model that was just validated. The same images every epoch, so the figures show progress."""
        k = min(int(self.cfg["heatmaps_per_epoch"]), len(self.val_set))
        model = self.eval_model()
        if k <= 0 or getattr(model, "heatmap", None) is None or not du.is_main_process():
            return []
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

    def _augmentation_for(self, epoch: int) -> None:
        """``augment_epochs: [start, stop]`` (fractions of the run's epochs): the configured augmentation for
        the epochs in between, the plain pipeline (resize only) before and after -- DEIM's schedule: no strong
        augmentation while the model is still random, none at the end, so training finishes on images like
        the ones it is scored on. With ``time_limit`` the fractions apply to the epochs the budget gave."""
        window = self.cfg.get("augment_epochs")
        if not window or self.pipelines is None:
            return
        strong, mosaic, plain = self.pipelines
        on = float(window[0]) * self.epochs <= epoch < float(window[1]) * self.epochs
        self.train_set.transforms, self.train_set.mosaic = (strong, mosaic) if on else (plain, None)
        if du.is_main_process():
            self.log(f"epoch {epoch + 1}: augmentation {'on' if on else 'off'} (augment_epochs {list(window)})")

    # ------------------------------------------------------------------ bookkeeping
    def _warmup_iters(self, total_iters: int) -> int:
        warmup = self.cfg["warmup_iters"]
        if self.cfg.get("warmup_epochs") is not None:  # sized by the data, not by COCO-sized iteration counts
            warmup = round(float(self.cfg["warmup_epochs"]) * len(self.train_loader))
        return min(warmup, total_iters // 2)

    def _set_lr(self, total_iters: int) -> None:
        cfg = self.cfg
        f = lr_factor(self.iteration, total_iters, self._warmup_iters(total_iters), cfg["schedule"],
                      cfg["final_lr_factor"], cfg["milestones"],
                      anchor=self.time_budget.lr_anchor if self.time_budget is not None else None)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    @property
    def total_iters(self) -> int:
        """Iterations of the whole run: the lr schedule's length (``time_limit``: what the budget holds)."""
        return self.budget_iters or self.epochs * len(self.train_loader)

    def _fit_epochs_to_time(self, epoch: int) -> None:
        """time_limit (minutes), after every epoch until the budget is spent: size the run in iterations so that
        it ends when the budget does, at the pace measured so far (:class:`~hmpe.engine.train.optim.TimeBudget`: how,
        and how the lr schedule follows); the last epoch may stop part-way (the schedule ends there)."""
        per_epoch = len(self.train_loader)
        iters, elapsed, pace = self.time_budget.iterations(self.iteration)
        iters = int(du.broadcast_object(iters))  # DDP: rank 0's clock decides for every rank
        if iters == self.budget_iters:
            return
        old, was = self.total_iters, self.budget_iters
        self.time_budget.anchor_schedule(self.iteration, old, self._warmup_iters(old))
        self.budget_iters, self.epochs = iters, max(epoch + 1, -(-iters // per_epoch))
        self.cfg["epochs"] = self.epochs
        self.log(f"time_limit {self.cfg['time_limit']} min: {elapsed / 60:.1f} min used, {pace:.3g} s/iteration "
                 f"-> {iters} iterations ({iters / per_epoch:.2f} epochs, {self.epochs} started)"
                 + (f"; was {was}" if was is not None else ""))

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

    def checkpoint(self, epoch: int, metrics: dict, final: bool = False) -> dict:
        """The resume state; ``final``: what a user keeps (best.pt, last.pt after the last epoch) -- the EMA
        weights (the raw ones without EMA) as ``model``, no optimiser, scaler or RNG state (about a third of
        the size: AdamW keeps two moments per weight)."""
        base = {"epoch": epoch,  # completed epoch index
                "epochs": self.epochs, "iteration": self.iteration, "budget_iters": self.budget_iters,
                "time_budget": self.time_budget.state() if self.time_budget is not None else None,
                "best_fitness": self.best_fitness,
                "metrics": metrics, "model_cfg": self.model_cfg, "names": self.names,
                "train_cfg": {k: v for k, v in self.cfg.items() if not k.startswith("_")},
                # loaded (folder, format, names), so that val/resume work from any folder
                "data_cfg": dict(self.data_cfg), "hmpe_version": __import__("hmpe").__version__}
        # every checkpoint is written into weights_dir: its paths are recorded relative to it (or by name)
        base = stored_paths(base, self.weights_dir)
        if final:
            return base | {"model": self.eval_model().state_dict(), "ema": None, "final": True}
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
        if self.cfg["save_period"] and (epoch + 1) % self.cfg["save_period"] == 0:
            save_atomic(ckpt, self.weights_dir / f"epoch{epoch + 1}.pt")

    def log_epoch(self, epoch: int, stats: dict, metrics: dict, seconds: float) -> None:
        """One ``results.csv`` row (appended) and, on validated epochs, one console line."""
        if not du.is_main_process():
            return
        append_row(self.run_dir, epoch_row(epoch, seconds, stats, metrics))
        if metrics:
            self.log(f"epoch {epoch + 1}/{self.epochs}: loss {stats.get('loss', float('nan')):.4f}  "
                     f"P {metrics.get('precision', 0):.3f}  R {metrics.get('recall', 0):.3f}  "
                     f"mAP50 {metrics.get('mAP50', 0):.4f}  mAP50-95 {metrics.get('mAP50_95', 0):.4f}  "
                     f"({seconds:.0f} s)")

    def finish(self) -> None:
        if not du.is_main_process():
            return
        if self.cfg["plots"]:
            try:
                plot_results_csv(self.run_dir / "results.csv", self.run_dir / "results.png")
            except Exception as e:  # plotting must never lose a finished run
                self.log(f"could not plot results.csv: {e}")
        if self.evaluator is not None:
            if self.cfg["plots"]:
                self.evaluator.plot(self.run_dir)
            self.log(self.evaluator.summary_table())
        if self.nan_count:
            self.log(f"{self.nan_count} training steps were skipped for non-finite losses")
        self.log(f"results saved to {self.run_dir}")


def train(cfg: dict, model_cfg_overrides: dict | None = None, *, explicit_keys: Iterable[str] = ()
          ) -> tuple[Trainer, dict]:
    """Train from a merged training config; model overrides are dotted keys into the model config;
    ``explicit_keys``: the training keys the user typed (see :class:`Trainer`)."""
    trainer = Trainer(cfg, resolve_model_cfg(cfg, model_cfg_overrides), explicit_keys=explicit_keys)
    metrics = trainer.fit()
    du.cleanup()  # torchrun job: barrier + destroy the process group (no-op in a single process)
    return trainer, metrics
