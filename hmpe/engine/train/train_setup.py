"""Everything a training run needs before its first step, built once by :func:`build_train_setup`.

In order: the process group and device, the resumed config, the seed, the data, the model parts (built from
the model config, or :class:`ModelParts` supplied from outside), the optimiser, AMP scaler and EMA, DDP, the
resumed state and the run folder. The order is part of the contract: the seed is set before the datasets and
the model are built, so a run is reproducible from its config.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from hmpe.data.dataset import build_dataset, collate_fn
from hmpe.data.formats import load_data_config
from hmpe.data.preprocess import Preprocess
from hmpe.data.tiles import TiledDataset
from hmpe.data.transforms import build_pipeline, multi_scale_sizes
from hmpe.engine.checkpoint import checkpoint_data_config, load_checkpoint, load_weights, rng_state, set_rng_state
from hmpe.engine.train.interrupt import worker_ignores_sigint
from hmpe.engine.train.optim import ModelEMA, build_param_groups
from hmpe.engine.train.run_log import log, truncate_rows, write_args
from hmpe.engine.train.transfer import load_start_weights
from hmpe.models.detector import build_criterion, build_model, build_postprocessor
from hmpe.utils import dist as du
from hmpe.utils.config import apply_overrides, default_train_config, load_model_config
from hmpe.utils.runtime import amp_dtype, create_run_dir, increment_run_dir, seed_everything, select_device

__all__ = ["LoopState", "ModelParts", "TrainData", "TrainSetup", "build_train_setup", "resolve_model_cfg",
           "to_device", "unwrap"]

# on resume, the only keys of the new config that replace the checkpoint's (and only when given explicitly)
RESUME_KEYS = ("epochs", "workers", "device")


@dataclass
class ModelParts:
    """What the loop trains and validates; :func:`build_model_parts` makes them from an hmpe model config,
    a caller may supply its own (an external detector, see :class:`hmpe.engine.train.trainer.Trainer`).

    ``param_groups(model, lr, lr_backbone, weight_decay) -> list[dict]`` makes the AdamW groups
    (default :func:`hmpe.engine.train.optim.build_param_groups`); ``pretrained``: the backbone starts from trained
    weights (it then trains at ``lr_backbone``, 0.1 x lr by default)."""

    model: nn.Module
    criterion: Callable[[dict, list[dict]], dict[str, torch.Tensor]]
    postprocessor: Callable[[dict, torch.Tensor], list[dict]]
    model_cfg: dict
    param_groups: Callable[[nn.Module, float, float, float], list[dict]] | None = None
    pretrained: bool = False


@dataclass
class TrainData:
    """Datasets and loaders; ``preprocess`` is the evaluation transform, the one val/predict/export use later."""

    data_cfg: dict
    train_set: Dataset
    val_set: Dataset
    train_loader: DataLoader
    val_loader: DataLoader
    train_sampler: DistributedSampler | None
    loader_gen: torch.Generator
    multi_scale: list[int]
    preprocess: Preprocess
    # (augmented transform, mosaic or None, plain transform): what ``augment_epochs`` switches between
    pipelines: tuple | None = None

    @property
    def names(self) -> list[str]:
        return list(self.train_set.names)


@dataclass
class LoopState:
    """The counters a checkpoint carries from one process to the next."""

    epochs: int
    start_epoch: int = 0
    iteration: int = 0
    budget_iters: int | None = None  # time_limit: the iterations that fit (the last epoch may be partial)
    # time_limit: seconds used, pace reference, lr-schedule anchor (Trainer._fit_epochs_to_time); None in a
    # checkpoint written before the run was re-sized after every epoch
    time_budget: dict | None = None
    best_fitness: float = -1.0
    nan_count: int = 0
    metrics: dict = field(default_factory=dict)


@dataclass
class TrainSetup:
    cfg: dict
    model_cfg: dict
    device: torch.device
    local_rank: int
    resume_ckpt: dict | None
    data: TrainData
    parts: ModelParts
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: Any
    ema: ModelEMA | None
    state: LoopState
    run_dir: Path


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def resolve_model_cfg(cfg: dict, overrides: dict | None = None) -> dict | None:
    """The model config of a new run: the preset / YAML ``cfg["model"]``, or when fine-tuning (``weights``)
    the checkpoint's architecture, with the dotted ``overrides``; None for a resumed run (its checkpoint's)."""
    if cfg.get("resume"):
        return None
    model_cfg = load_model_config(cfg["model"])
    if cfg.get("weights"):  # fine-tuning: the checkpoint's architecture, its weights loaded by the Trainer
        model_cfg = copy.deepcopy(load_checkpoint(cfg["weights"])["model_cfg"])
        (model_cfg.get("backbone") or {}).pop("pretrained", None)  # superseded by the checkpoint's weights
    return apply_overrides(model_cfg, overrides or {})


def start_runtime(cfg: dict) -> tuple[torch.device, int]:
    """Start the process group when launched by torchrun; (device of this rank, local rank)."""
    device = select_device(cfg.get("device"))
    local_rank = du.init_distributed(device.type)
    if device.type == "cuda" and du.is_dist():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device, local_rank


def resume_config(cfg: dict, model_cfg: dict | None, explicit_keys: Iterable[str]
                  ) -> tuple[dict, dict | None, dict | None]:
    """(config, model config, checkpoint): a resumed run continues with the config it was started with;
    of :data:`RESUME_KEYS`, those in ``explicit_keys`` (the keys the user typed) replace the saved values."""
    if not cfg.get("resume"):
        return cfg, model_cfg, None
    ckpt = load_checkpoint(cfg["resume"])
    saved = default_train_config(ckpt["train_cfg"])  # a key added since the checkpoint was written: its default
    explicit = set(explicit_keys)
    for k in RESUME_KEYS:
        if cfg.get(k) is not None and cfg.get(k) != saved.get(k) and k in explicit:
            saved[k] = cfg[k]
    saved["resume"] = cfg["resume"]
    return saved, ckpt["model_cfg"], ckpt


def build_data(cfg: dict, saved_data_cfg: dict | None) -> TrainData:
    data_cfg = load_data_config(saved_data_cfg or cfg["data"])
    aug = cfg["augment"]
    aug_cfg = dict(aug) if isinstance(aug, dict) else {}
    if cfg.get("multi_scale"):
        aug_cfg["multi_scale"] = cfg["multi_scale"]
    multi_scale = multi_scale_sizes(aug_cfg, cfg["imgsz"])
    # augment=false trains on the evaluation pipeline (resize only); mosaic: DEIM-style dense augmentation
    tr_t, plain_t, mosaic = build_pipeline(aug, cfg["imgsz"])
    preprocess = Preprocess.from_train_cfg(cfg)
    skip_bad = cfg["skip_bad"]
    if cfg.get("tile"):  # native-resolution crops (hmpe.data.tiles); their transforms and mosaic act on crops
        train_set = TiledDataset(build_dataset(data_cfg, "train", skip_bad=skip_bad), cfg["tile"],
                                 cfg["tile_overlap"], cfg["tile_min_visible"], cfg["tile_empty"], cfg["seed"],
                                 transforms=tr_t, mosaic=mosaic)
    else:
        train_set = build_dataset(data_cfg, "train", transforms=tr_t, skip_bad=skip_bad, mosaic=mosaic)
    val_set = build_dataset(data_cfg, "val", transforms=preprocess.transform, skip_bad=skip_bad)
    gen = torch.Generator()
    sampler = DistributedSampler(train_set, shuffle=True, seed=cfg["seed"]) if du.is_dist() else None
    train_loader = DataLoader(
        train_set, batch_size=cfg["batch"], shuffle=sampler is None, sampler=sampler, num_workers=cfg["workers"],
        collate_fn=collate_fn, drop_last=(len(sampler) if sampler is not None else len(train_set)) > cfg["batch"],
        generator=gen, persistent_workers=False, worker_init_fn=worker_ignores_sigint)
    val_sampler = DistributedSampler(val_set, shuffle=False) if du.is_dist() else None
    val_loader = DataLoader(val_set, batch_size=cfg["batch"], shuffle=False, sampler=val_sampler,
                            num_workers=cfg["workers"], collate_fn=collate_fn, worker_init_fn=worker_ignores_sigint)
    return TrainData(data_cfg, train_set, val_set, train_loader, val_loader, sampler, gen, multi_scale, preprocess,
                     (tr_t, mosaic, plain_t))


def build_model_parts(model_cfg: dict, cfg: dict, names: list[str], device: torch.device,
                      fresh: bool) -> ModelParts:
    """hmpe's model, criterion and postprocessor from ``model_cfg``; a ``fresh`` (not resumed) run loads
    ``backbone.pretrained`` / ``weights`` (:func:`hmpe.engine.train.transfer.load_start_weights`)."""
    nc = len(names)
    model = build_model(model_cfg, nc).to(device)
    criterion = build_criterion(model_cfg, nc).to(device)
    postprocessor = build_postprocessor(model_cfg, nc)
    pretrained = load_start_weights(model, model_cfg, cfg, names, log if fresh else None)
    return ModelParts(model, criterion, postprocessor, model_cfg, pretrained=pretrained)


def build_optimizer(parts: ModelParts, cfg: dict) -> torch.optim.AdamW:
    # RT-DETR / RT-DETRv2 train a pretrained backbone at 0.1 x lr; from scratch it gets the full lr
    lr_bb = cfg.get("lr_backbone") or (cfg["lr"] * 0.1 if parts.pretrained else cfg["lr"])
    groups = (parts.param_groups or build_param_groups)(parts.model, cfg["lr"], lr_bb, cfg["weight_decay"])
    # the fused kernel: one pass over all parameters instead of a Python loop of small ops (several times
    # faster on CPU); the same update rule
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], fused=fused or None)
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]
    return optimizer


def _external_parts(parts: ModelParts, cfg: dict, device: torch.device) -> ModelParts:
    if cfg.get("weights"):
        raise ValueError("weights=: an externally built model loads its own weights before it is passed to the "
                         "Trainer (model=ModelParts(...)); drop weights= from the training config")
    parts.model.to(device)
    if isinstance(parts.criterion, nn.Module):
        parts.criterion.to(device)
    return parts


def build_train_setup(cfg: dict, model_cfg: dict | None = None, *, explicit_keys: Iterable[str] = (),
                      parts: ModelParts | Callable[[list[str]], ModelParts] | None = None) -> TrainSetup:
    """Build a run from a merged training config (see :class:`hmpe.engine.train.trainer.Trainer` for the
    arguments). Side effects: the process group, the global seed, the run folder with ``args.yaml``."""
    cfg = default_train_config(cfg)  # every training key present (a caller's partial config: the defaults)
    device, local_rank = start_runtime(cfg)
    cfg, model_cfg, ckpt = resume_config(cfg, model_cfg, explicit_keys)
    if parts is None and model_cfg is None:
        model_cfg = load_model_config(cfg["model"])
    seed_everything(cfg["seed"])
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = build_data(cfg, checkpoint_data_config(ckpt, cfg["resume"]) if ckpt is not None else None)
    if parts is None:
        parts = build_model_parts(model_cfg, cfg, data.names, device, fresh=ckpt is None)
    else:  # a factory is called here: after the seed and with the dataset's class names, as hmpe's own model
        parts = _external_parts(parts if isinstance(parts, ModelParts) else parts(data.names), cfg, device)
    model_cfg = parts.model_cfg
    if cfg["channels_last"]:  # NHWC conv weights (oneDNN's / cuDNN's fast layout); the same math
        parts.model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(parts, cfg)
    dtype = amp_dtype(cfg["amp"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema_warmup = cfg["ema_warmup"]
    if cfg.get("ema_warmup_epochs") is not None:  # sized by the data, not by COCO-sized iteration counts
        ema_warmup = max(1, round(float(cfg["ema_warmup_epochs"]) * len(data.train_loader)))
    ema = ModelEMA(parts.model, cfg["ema_decay"], ema_warmup) if cfg["ema"] else None
    if du.is_dist():
        parts.model = wrap_ddp(parts, data.train_set, cfg, device)
    state = LoopState(epochs=int(cfg["epochs"]))
    if ckpt is not None:
        restore(ckpt, state, parts.model, ema, optimizer, scaler, cfg["resume"])
    run_dir = open_run_dir(cfg, model_cfg, state)
    return TrainSetup(cfg, model_cfg, device, local_rank, ckpt, data, parts, optimizer, scaler, dtype, ema, state,
                      run_dir)


def open_run_dir(cfg: dict, model_cfg: dict, state: LoopState) -> Path:
    """A new run: ``<project>/train/<name>`` (rank 0 names it: one folder per run) with ``weights/`` and
    ``args.yaml``. A resumed run: its own folder, ``results.csv`` cut back to the resumed epoch."""
    if cfg.get("resume"):
        run_dir = Path(cfg["resume"]).resolve().parent.parent
        truncate_rows(run_dir, state.start_epoch)
    else:
        run_dir = increment_run_dir(cfg["project"], "train", cfg["name"], cfg["exist_ok"])
        run_dir = Path(du.broadcast_object(str(run_dir)))
    if du.is_main_process():
        if cfg.get("resume"):
            create_run_dir(run_dir, "resume from a copy of the run folder in a writable place")
        else:
            create_run_dir(run_dir)
        (run_dir / "weights").mkdir(exist_ok=True)
        write_args(run_dir, cfg, model_cfg)
    return run_dir


def restore(ckpt: dict, state: LoopState, model: nn.Module, ema: ModelEMA | None, optimizer, scaler,
            source: str) -> None:
    """Load a checkpoint into the built run: weights, EMA, optimiser, scaler, counters and RNG state."""
    if ckpt.get("final"):  # a finished run: its final weights, nothing left to resume
        if ckpt["epoch"] + 1 < state.epochs:
            raise ValueError(f"{source}: the final checkpoint of a finished run (weights only, no optimizer "
                             f"state) cannot train more epochs; start a new run from it with weights={source}")
        load_weights(unwrap(model), ckpt["model"], source)
        if ema is not None:
            ema.module.load_state_dict(ckpt["model"])
        state.start_epoch, state.epochs = ckpt["epoch"] + 1, ckpt.get("epochs", state.epochs)
        state.iteration, state.best_fitness = ckpt["iteration"], ckpt["best_fitness"]
        state.budget_iters = ckpt.get("budget_iters")
        state.metrics = ckpt.get("metrics") or {}
        return
    load_weights(unwrap(model), ckpt["model"], source)
    if ema is not None and ckpt.get("ema"):
        ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    state.start_epoch = ckpt["epoch"] + 1
    state.epochs = max(state.epochs, ckpt.get("epochs", state.epochs))
    state.iteration = ckpt["iteration"]
    state.budget_iters = ckpt.get("budget_iters")
    state.time_budget = ckpt.get("time_budget")
    state.best_fitness = ckpt["best_fitness"]
    state.nan_count = ckpt.get("nan_count", 0)
    state.metrics = ckpt.get("metrics") or {}
    set_rng_state(ckpt["rng"])


def wrap_ddp(parts: ModelParts, train_set: Dataset, cfg: dict, device: torch.device) -> nn.Module:
    """DistributedDataParallel (after optional SyncBatchNorm, CUDA only).

    Parameters that get no gradient in one probe training step (e.g. the HMPE heatmap gate when no
    MOHFE/HIDQ consumes ``H_mixed``) are excluded from DDP's gradient synchronisation: they never
    change (AdamW skips parameters without a gradient), so every rank keeps the same value.
    ``find_unused_parameters=true`` alone would not do: the gate is still reachable from the model's
    outputs (the ``heatmap`` entry), so DDP would wait for its gradient forever. Set
    ``find_unused_parameters=true`` for models that use some parameters only in some iterations."""
    model = parts.model
    if cfg["sync_bn"]:
        if device.type == "cuda":
            model = parts.model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log("sync_bn: SyncBatchNorm needs CUDA; ignored on this CPU run (BatchNorm per process)")
    unused = du.broadcast_object(unused_parameters(parts, train_set, device))  # rank 0's list for all ranks
    if unused:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, unused)
        log(f"DDP: {len(unused)} parameter(s) get no gradient and are not synchronised: "
            f"{', '.join(unused[:5])}{', ...' if len(unused) > 5 else ''}")
    model = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(cfg["find_unused_parameters"]))
    world = du.get_world_size()
    log(f"DDP: {world} processes x batch {cfg['batch']} = global batch {world * cfg['batch']} "
        f"({device.type}); lr {cfg['lr']} is used as given (no automatic scaling)")
    return model


def unused_parameters(parts: ModelParts, train_set: Dataset, device: torch.device) -> list[str]:
    """Names of trainable parameters without a gradient after one training step on the first training
    images. Weights, buffers (BatchNorm statistics) and RNG state are restored afterwards."""
    model = parts.model
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = rng_state()
    try:
        model.train()
        n = max(1, min(2, len(train_set)))
        images, targets = collate_fn([train_set[i] for i in range(n)])
        targets = to_device(targets, device)
        outputs = model(images.to(device), targets)
        losses = parts.criterion(outputs, targets)
        losses.update(outputs.get("aux_losses", {}))
        sum(losses.values()).backward()
        return [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
        set_rng_state(rng)
