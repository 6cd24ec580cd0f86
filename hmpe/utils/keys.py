"""Every key a user can type, declared once: per task (``hmpe train/val/predict/heatmap/export/bench``), per
model-config section, per dataset YAML. Each :class:`Key` has a name, a default and a one-line meaning.

This table is the single source of truth for
- the training defaults (:func:`hmpe.utils.config.default_train_config` is built from ``TASKS["train"]``),
- the strict check of command-line and config keys (:func:`check_task_args`, :func:`check_model_config`,
  :func:`check_data_keys`): an unknown key is a :class:`ConfigKeyError` naming it and the nearest known key,
- ``hmpe cfg`` (and a task's ``--help``), which print the keys with their meanings.

To add a key: add one ``Key(...)`` line to the task's tuple below (or to the model section / dataset tuple),
then read it in the code. ``tests/test_config_keys.py`` checks that the model sections list exactly the
constructor arguments the model builder passes them to.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Key:
    name: str
    default: Any = None
    help: str = ""


class UsageError(ValueError):
    """A command line that cannot work as typed: a missing or unknown argument, an impossible value
    (the CLI prints one line and exits with status 2, before any work)."""


class ConfigKeyError(UsageError):
    """An unknown key (the CLI exits with status 2)."""


#: Input sizes must be multiples of the largest feature stride (S5, stride 32 in every preset): other sizes
#: are floored level by level and the ONNX export cannot trace them.
MAX_STRIDE = 32


def check_imgsz(value: Any, key: str = "imgsz") -> None:
    """``imgsz`` as typed (an int, ``HxW``, or a list of either) -> UsageError unless every size is a positive
    multiple of :data:`MAX_STRIDE`, naming the nearest valid sizes."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        parts = str(v).lower().split("x") if isinstance(v, str) else [v]
        for part in parts:
            try:
                n = int(part)
            except (TypeError, ValueError):
                raise UsageError(f"{key}={value}: not an image size (an integer such as 640)") from None
            if n <= 0 or n % MAX_STRIDE:
                lo = max(MAX_STRIDE, n // MAX_STRIDE * MAX_STRIDE)
                raise UsageError(f"{key}={value}: sizes must be multiples of {MAX_STRIDE} (the model's largest "
                                 f"stride); use {lo} or {lo + MAX_STRIDE}")


# ------------------------------------------------------------------------------------------------ tasks
_PRED = (  # options shared by val / predict (sliced inference: hmpe.engine.slicing)
    Key("slice", None, "tile size N for sliced inference on large images (None = whole image)"),
    Key("overlap", 0.2, "tile overlap as a fraction of the tile (slice=N)"),
    Key("merge", "nms", "merge of tile detections: nms | wbf (slice=N)"),
    Key("merge_iou", 0.5, "IoU of the class-wise merge (slice=N)"),
    Key("full_image", False, "slice=N: also one pass on the whole image"),
)

TRAIN = (
    Key("model", "rtdetr-n", "preset name (hmpe cfg lists them) or a model YAML path"),
    Key("data", "synthetic", "dataset YAML path or shipped name (synthetic, nwpu-vhr10)"),
    Key("weights", None, "checkpoint to start from (its model config is used; other classes: class heads "
                         "re-initialised)"),
    Key("epochs", 10, "training epochs"),
    Key("batch", 8, "images per batch (per process under torchrun)"),
    Key("imgsz", 256, "network input size (square)"),
    Key("workers", 2, "data-loader worker processes"),
    Key("device", "auto", "auto | cpu | cuda | cuda:N"),
    Key("seed", 0, "random seed (exact resume reseeds per epoch from it)"),
    Key("deterministic", False, "torch deterministic algorithms (warn only)"),
    # 8e-4: learns most in a short from-scratch budget (docs/method.md, "Training recipe"); D-FINE-N uses it too
    Key("lr", 8.0e-4, "AdamW learning rate"),
    Key("lr_backbone", None, "backbone learning rate (null: 0.1 x lr when starting from backbone.pretrained or "
                             "weights=, else lr)"),
    Key("weight_decay", 1.0e-4, "AdamW weight decay"),
    Key("warmup_iters", 100, "linear warm-up iterations"),
    Key("warmup_epochs", None, "linear warm-up in epochs (a float; replaces warmup_iters when set)"),
    Key("schedule", "cosine", "cosine | step | constant"),
    Key("final_lr_factor", 0.05, "final lr as a fraction of lr"),
    Key("milestones", [0.8], "step schedule: fractions of training where lr drops"),
    Key("clip_grad", 0.1, "max gradient norm, 0 = off"),
    Key("ema", True, "keep an exponential moving average of the weights (used for val and saved weights)"),
    Key("ema_decay", 0.9998, "EMA decay"),
    Key("ema_warmup", 300, "iterations of the EMA decay ramp"),
    Key("ema_warmup_epochs", None, "the EMA decay ramp in epochs (a float; replaces ema_warmup when set)"),
    Key("amp", "auto", "mixed precision: auto (bf16 on CUDA and on CPUs with native bf16: AVX512-BF16 or AMX; "
                     "else fp32) | bf16 | fp16 | false"),
    Key("channels_last", True, "train with conv weights and images in NHWC memory layout (the same math; faster "
                               "convolutions on CPU and GPU)"),
    Key("nan_limit", 10, "non-finite losses tolerated (steps skipped) before stopping"),
    Key("sync_bn", False, "SyncBatchNorm across torchrun processes (CUDA only)"),
    Key("find_unused_parameters", False, "DDP: parameters used only in some iterations"),
    # flip + colour jitter by default: on NWPU from scratch the RT-DETR recipe's zoom-out and IoU crop halve what
    # a short run learns (docs/method.md, "Training recipe"); augment=true restores them for long schedules
    Key("augment", {"zoom_out": False, "iou_crop": False},
        "flip + colour jitter (default) | true: the RT-DETR recipe (+ zoom-out, IoU crop) | false | a mapping of "
        "switches over the RT-DETR recipe (augment.keep_ratio=true: letterbox)"),
    Key("augment_epochs", None, "[start, stop] fractions of the epochs with augmentation; resize only outside "
                                "(null: every epoch)"),
    Key("skip_bad", False, "skip unreadable images / bad labels (counted) instead of stopping"),
    Key("multi_scale", None, "training sizes drawn per batch, e.g. [288,320,352]"),
    Key("max_dets", 100, "detections per image scored by the evaluator"),
    Key("val_interval", 1, "validate every N epochs (and always after the last)"),
    Key("heatmaps_per_epoch", 2, "validation heatmap figures per validated epoch (heatmap models; 0 = off)"),
    Key("conf", 0.25, "score threshold of predictions made with this run's weights"),
    Key("project", "runs", "output root folder"),
    Key("name", None, "run folder name (default exp, exp2, ...)"),
    Key("exist_ok", False, "reuse an existing run folder"),
    Key("resume", None, "last.pt of a run to resume exactly"),
    Key("save_period", 0, "also keep epochN.pt every N epochs (0 = off)"),
    Key("time_limit", None, "minutes: size the run (in iterations; the last epoch may be partial) so it fits"),
)

VAL = (
    Key("weights", None, "checkpoint, pretrained folder or shipped name (hmpe-n-nwpu) to evaluate (required)"),
    Key("data", None, "dataset (default: the one the checkpoint was trained on)"),
    Key("split", "val", "train | val | test"),
    Key("device", "auto", "auto | cpu | cuda | cuda:N"),
    Key("batch", None, "images per batch (default: the training batch)"),
    Key("workers", None, "data-loader workers (default: the training value)"),
    Key("imgsz", None, "input size (default: the checkpoint's training imgsz)"),
    Key("max_dets", None, "detections per image scored (default: the training value)"),
    Key("skip_bad", None, "skip unreadable images / bad labels (counted)"),
    Key("conf", 0.001, "score threshold (sliced evaluation)"),
    Key("project", "runs", "output root folder"),
    Key("name", None, "output folder name under <project>/val"),
    Key("exist_ok", False, "reuse an existing output folder"),
    *_PRED,
)

PREDICT = (
    Key("source", None, "image file, folder or glob pattern (or the first positional argument)"),
    Key("weights", None, "checkpoint, pretrained folder or shipped name (hmpe-n-nwpu) (required)"),
    Key("device", "auto", "auto | cpu | cuda | cuda:N"),
    Key("conf", 0.25, "score threshold"),
    Key("imgsz", None, "input size (default: the checkpoint's training imgsz)"),
    Key("batch", 4, "images (or tiles) per forward pass"),
    Key("save", True, "write annotated images and predictions.json"),
    Key("strict", False, "stop at the first unreadable image instead of skipping it"),
    Key("max_det", 100, "detections kept per image, highest scores first (0 = all above conf)"),
    Key("project", "runs", "output root folder"),
    Key("name", None, "output folder name under <project>/predict"),
    *_PRED,
)

HEATMAP = (
    Key("source", None, "image file, folder or glob pattern (or the first positional argument)"),
    Key("weights", None, "checkpoint, folder or shipped name of a model with a heatmap path (required)"),
    Key("device", "auto", "auto | cpu | cuda | cuda:N"),
    Key("conf", 0.25, "score threshold of the boxes drawn"),
    Key("imgsz", None, "input size (default: the checkpoint's training imgsz)"),
    Key("level", 0, "0 | 1 | 2 | max: pyramid level shown"),
    Key("out", None, "output folder (default <project>/heatmap/<name>)"),
    Key("project", "runs", "output root folder"),
    Key("name", None, "output folder name"),
    Key("dpi", 100, "figure resolution"),
    Key("save", True, "write the figures"),
)

EXPORT = (
    Key("weights", None, "checkpoint to export (required)"),
    Key("format", "onnx", "onnx | openvino (IR + OpenVINO parity check) | safetensors (a folder: config.json + "
                          "model.safetensors, no pickle)"),
    Key("imgsz", None, "input size (default: the checkpoint's training imgsz)"),
    Key("opset", 17, "ONNX opset"),
    Key("gather_sampling", False, "deformable sampling by gathers instead of grid_sample"),
    Key("out", None, "output file (default: next to the weights)"),
    Key("image", None, "image for the onnxruntime parity check (default: a synthetic one)"),
    Key("check", True, "compare onnxruntime with PyTorch after export"),
    Key("half", False, "format=safetensors: fp16 weights (half the file; loaded back into the fp32 model)"),
)

BENCH = (
    Key("model", "rtdetr-n", "preset name or model YAML path"),
    Key("nc", 10, "number of classes of the benchmarked model"),
    Key("imgsz", 640, "size, a list [512,640] (one report each) or HxW (512x640)"),
    Key("batch", 1, "batch size or a list"),
    Key("device", "cpu", "cpu | cuda | cuda:N"),
    Key("threads", None, "torch intra-op threads"),
    Key("warmup", 3, "untimed warm-up runs"),
    Key("runs", 20, "timed runs"),
    Key("save", None, "write the reports to this JSON file"),
    Key("fuse", True, "deploy mode (BatchNorm folded, constants cached), as predict / val / export run the model"),
    Key("backend", None, "torch | onnxruntime | openvino or a list: each runtime's latency, rounds interleaved"),
)

EXPLORE = (
    Key("weights", None, "checkpoint, folder or shipped name of a model with a heatmap path (required)"),
    Key("source", None, "image folder or dataset YAML (or the first positional argument)"),
    Key("port", 7860, "local port of the page"),
    Key("host", "127.0.0.1", "address to bind (loopback by default)"),
    Key("split", "val", "dataset split shown when source is a dataset YAML"),
    Key("conf", 0.25, "initial confidence threshold of the boxes"),
    Key("imgsz", None, "input size (default: the checkpoint's training imgsz)"),
    Key("device", "cpu", "cpu | cuda | cuda:N"),
    Key("floor", 0.05, "lowest confidence kept in the per-image cache (the slider's floor)"),
    Key("cache", 16, "images whose maps are kept in memory"),
    Key("scan", True, "dataset sources: score every image in the background to rank them by misses"),
)

TASKS: dict[str, tuple[Key, ...]] = {
    "train": TRAIN, "val": VAL, "predict": PREDICT, "heatmap": HEATMAP, "export": EXPORT, "bench": BENCH,
    "explore": EXPLORE,
}
MODEL_KEY_TASKS = ("train", "bench")  # tasks that also take dotted model keys (decoder.num_layers=3)
OPEN_SECTIONS = ("augment",)  # train mappings whose own builder checks the sub-keys (build_transforms)

# ------------------------------------------------------------------------------------------------ model
# Section -> keys, as passed to the builders in hmpe.models.detector (backbone -> HGNetv2, encoder ->
# HybridEncoder, heatmap -> HeatmapEmbedding, mohfe -> MOHFE, hidq -> HeatmapQuerySelector, decoder ->
# RTDETRDecoder, matcher -> HungarianMatcher, loss -> SetCriterion, postprocess -> PostProcessor).
# Defaults live in the constructors and presets; None here means "see the preset / constructor".
_SWITCH = Key("enabled", True, "component switch (false: off, the baseline's graph)")
MODEL: dict[str, tuple[Key, ...]] = {
    "backbone": (
        Key("name", "B0", "HGNetv2 size: B0 | B1 | ..."),
        Key("return_idx", [1, 2, 3], "stages returned (strides 8, 16, 32)"),
        Key("use_lab", False, "learnable affine blocks"),
        Key("freeze_at", -1, "freeze the stem and stages up to this index (-1 = none)"),
        Key("freeze_norm", False, "freeze BatchNorm statistics and affine"),
        Key("strip_conv", None, "LSConv / DSConv: {kind: lsconv|dsconv, stages: [3,4], kernel_size: 9}"),
        Key("pretrained", None, "ImageNet HGNetv2 weights file (timm / D-FINE / RT-DETRv2 layout), read at the "
                                "start of a fresh training run (hmpe.models.pretrained)"),
    ),
    "encoder": (
        Key("nhead", 8, "AIFI attention heads"),
        Key("dim_feedforward", 1024, "AIFI feed-forward width"),
        Key("dropout", 0.0, "AIFI dropout"),
        Key("enc_act", "gelu", "AIFI activation"),
        Key("use_encoder_idx", [2], "levels with AIFI attention"),
        Key("num_encoder_layers", 1, "AIFI layers"),
        Key("pe_temperature", None, "position-encoding temperature (default: heatmap.temperature, else 10000)"),
        Key("expansion", 1.0, "CCFM width factor"),
        Key("depth_mult", 1.0, "CCFM depth factor"),
        Key("act", "silu", "CCFM activation"),
        Key("pe", None, "position encoding: rtdetr | paper (default: heatmap.pe, else rtdetr)"),
    ),
    "heatmap": (
        _SWITCH,
        Key("mask_pe", True, "multiply the AIFI position encoding by the mask (eq. 7)"),
        Key("tau", 0.05, "mask threshold (eq. 6); tau_mode=quantile: the fraction of cells masked per image"),
        Key("tau_mode", "absolute", "absolute (H_mixed > tau; 0 = eq. 6's ReLU zeros) | quantile (per image)"),
        Key("bbox_heat", "quality", "H_bbox target: quality (the only form; 'loss' of older configs reads as quality)"),
        Key("pe", "rtdetr", "position-encoding form; also the default of encoder.pe (and the form drawn in figures)"),
        Key("topk_classes", 3, "classes whose maps make H_class"),
        Key("closed_form", True, "closed-form Grad-CAM++ (false: the autograd reference)"),
        Key("probe_convs", 2, "probe tower convolutions"),
        Key("probe_hidden", None, "probe tower width (default hidden_dim)"),
        Key("fuse_levels", "down", "down | max | none"),
        Key("temperature", 10000.0, "position-encoding temperature; also the default of encoder.pe_temperature"),
        Key("radius", 1.5, "probe target centre radius (strides)"),
        Key("scale_ranges", None, "probe target size range per level"),
        Key("huber_beta", 1.0, "probe regression Huber beta (strides)"),
        Key("alpha", "gradcam++", "gradcam++ | design (eq. 1 literally)"),
        Key("score_pool", "sum", "score y of eqs. 1-3: sum over cells (paper) | mean (class-specific at any size)"),
        Key("loss_weights", None, "probe loss weights {cls, reg, quality}"),
        Key("mask_grad", "none", "none (the mask has no gradient) | ste (straight-through in training: the gate "
                                 "of eq. 4 learns from the masked PE of eq. 7)"),
        Key("mask_grad_temperature", 0.05, "mask_grad=ste: width of the sigmoid around the threshold (map units)"),
    ),
    "mohfe": (_SWITCH, Key("levels", None, "levels that receive heatmap embeddings, e.g. [0,1,2]")),
    "hidq": (
        _SWITCH,
        Key("score", "heat", "token score: heat | heat*cls"),
        Key("tie_break", 1e-4, "weight of the class score that breaks heat ties"),
        Key("detach_memory", True, "detach the selected memory"),
    ),
    "decoder": (
        Key("num_queries", 300, "object queries"),
        Key("num_points", 4, "deformable sampling points"),
        Key("nhead", 8, "attention heads"),
        Key("num_layers", 6, "decoder layers"),
        Key("dim_feedforward", 1024, "feed-forward width"),
        Key("dropout", 0.0, "dropout"),
        Key("activation", "relu", "feed-forward activation"),
        Key("num_denoising", 100, "denoising queries (0 = off)"),
        Key("label_noise_ratio", 0.5, "denoising label noise"),
        Key("box_noise_scale", 1.0, "denoising box noise"),
        Key("eval_idx", -1, "decoder layer used at inference"),
        Key("eval_spatial_size", None, "fixed anchors for this input size (export)"),
        Key("aux_loss", True, "losses on every decoder layer"),
        Key("feat_channels", None, "input channels per level (default hidden_dim)"),
        Key("return_all_layers", False, "eval: also return every layer's detections"),
    ),
    "matcher": (
        Key("cost_class", 2.0, "class cost"), Key("cost_bbox", 5.0, "L1 box cost"),
        Key("cost_giou", 2.0, "GIoU cost"), Key("use_focal", True, "focal class cost"),
        Key("alpha", 0.25, "focal alpha"), Key("gamma", 2.0, "focal gamma"),
    ),
    "loss": (
        Key("weight_dict", None, "loss weights {loss_vfl (or loss_mal), loss_bbox, loss_giou}"),
        Key("alpha", 0.75, "varifocal alpha"), Key("gamma", 2.0, "varifocal gamma"),
        Key("cls_loss", "vfl", "classification loss: vfl (RT-DETR varifocal) | mal (DEIM matchability-aware)"),
        Key("mal_gamma", 1.5, "mal: exponent of the IoU target and of the negatives' score weight"),
    ),
    "postprocess": (Key("num_top_queries", None, "detections kept per image (default decoder.num_queries)"),),
}
MODEL_SCALARS = (Key("hidden_dim", 256, "model width"),)
# top-level keys that route a command-line override into the model config (`name` stays the run folder's)
MODEL_SECTIONS = (*MODEL, *(k.name for k in MODEL_SCALARS))
MODEL_TOP = (*MODEL_SECTIONS, "name")  # a model config may also carry its display name
# a model YAML file may also name a parent to build on: hmpe.utils.config.load_model_config merges the parent
# under the file and removes the key, so a config that reaches a builder never has it
BASE_KEY = "base"

# ------------------------------------------------------------------------------------------------ data
DATA = (
    Key("format", None, "nwpu | voc | coco | yolo | synthetic"),
    Key("path", ".", "dataset root (relative to the YAML; ${VAR:-default} allowed)"),
    Key("names", None, "class names (list or {id: name})"),
    Key("train", None, "train split: folder, list file or {ann_file, img_dir}"),
    Key("val", None, "val split"),
    Key("test", None, "test split"),
    Key("nc", None, "number of classes (Ultralytics YAMLs; must match names)"),
    Key("download", None, "ignored (Ultralytics YAMLs); nothing is downloaded"),
)
SYNTHETIC = (
    Key("num_train", 256, "generated train images"), Key("num_val", 128, "generated val images"),
    Key("num_test", None, "generated test images"), Key("imgsz", 256, "image size: int or [h, w]"),
    Key("seed", 0, "generator seed"), Key("min_size", 8, "smallest object (px)"),
    Key("max_size", 48, "largest object (px)"), Key("max_objects", 12, "objects per image at most"),
    Key("negative_fraction", 0.1, "fraction of images without objects"),
    Key("overfit", False, "val/test are the first train images"),
    Key("classes", 5, "number of shape classes (the first N of circle, square, triangle, cross, ring)"),
)


# ------------------------------------------------------------------------------------------------ checks
def defaults(task: str) -> dict:
    return {k.name: copy.deepcopy(k.default) for k in TASKS[task]}


def unknown_key_error(key: str, known: Iterable[str], where: str | None = None) -> ConfigKeyError:
    known = sorted(set(known))
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not near:  # an abbreviation or a longer spelling: conf / confidence, max_det / max_detections
        near = sorted((k for k in known if min(len(k), len(key)) >= 3 and (key.startswith(k) or k.startswith(key))),
                      key=lambda k: abs(len(k) - len(key)))[:1]
    hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(known)}"
    return ConfigKeyError(f"unknown key {key!r}{f' in {where}' if where else ''}{hint}")


def check_model_key(dotted: str, where: str = "the model config", file: bool = False) -> None:
    """One (dotted) model key; ``file``: as written in a model YAML, where ``base`` is allowed."""
    parts = dotted.split(".")
    if parts[0] == BASE_KEY and len(parts) == 1:
        if file:
            return
        raise ConfigKeyError(f"key 'base' in {where}: a model YAML's parent, resolved by "
                             "hmpe.utils.config.load_model_config; load the config through it")
    if parts[0] not in MODEL_TOP:
        raise unknown_key_error(parts[0], MODEL_TOP, where)
    if len(parts) > 1 and parts[0] in MODEL:
        names = [k.name for k in MODEL[parts[0]]]
        if parts[1] not in names:
            raise unknown_key_error(f"{parts[0]}.{parts[1]}", [f"{parts[0]}.{n}" for n in names], where)


def check_model_config(cfg: dict, where: str = "the model config", file: bool = False) -> None:
    """Every key of a model config (preset, YAML, checkpoint) against :data:`MODEL`; ``file``: the keys of one
    model YAML as written, which may also name its ``base``."""
    for top, value in cfg.items():
        check_model_key(top, where, file)
        if isinstance(value, dict) and top in MODEL:
            for sub in value:
                check_model_key(f"{top}.{sub}", where)


def check_task_args(task: str, args: dict) -> None:
    """Command-line keys of ``hmpe TASK`` (after ``source`` / positional handling)."""
    known = [k.name for k in TASKS[task]]
    for key in args:
        head = key.split(".")[0]
        if task in MODEL_KEY_TASKS and head in MODEL_SECTIONS and head not in known:
            check_model_key(key, f"hmpe {task} (model keys)")
        elif "." in key and head in OPEN_SECTIONS and head in known:
            continue
        elif key not in known:
            extra = list(MODEL_SECTIONS) if task in MODEL_KEY_TASKS else []
            raise unknown_key_error(key, known + extra, f"hmpe {task}")
    for key in ("imgsz", "multi_scale"):
        if args.get(key) is not None:
            check_imgsz(args[key], key)
    if args.get("augment_epochs") is not None:
        check_fraction_window(args["augment_epochs"], "augment_epochs")


def check_fraction_window(value: Any, key: str) -> None:
    """``[start, stop]`` with ``0 <= start < stop <= 1`` (fractions of the run) -> else UsageError."""
    try:
        start, stop = (float(v) for v in value)
        ok = 0.0 <= start < stop <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"{key}={value}: expected [start, stop], fractions of the epochs with 0 <= start < stop "
                         f"<= 1, e.g. [0.1, 0.8]")


def check_data_keys(cfg: dict) -> None:
    """Keys of a dataset YAML; the caller names the file (:class:`hmpe.data.formats.DataError`)."""
    known = [k.name for k in DATA] + ([k.name for k in SYNTHETIC] if cfg.get("format") == "synthetic" else [])
    for key in cfg:
        if not str(key).startswith("_") and key not in known:
            raise unknown_key_error(str(key), known)


def describe(task: str) -> str:
    """``key: default  # meaning`` lines of a task (``hmpe cfg``, ``hmpe TASK --help``)."""
    import yaml

    lines = []
    for k in TASKS[task]:
        value = yaml.safe_dump({k.name: k.default}, default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"{value:<34} # {k.help}")
    return "\n".join(lines)


def describe_model() -> str:
    lines = []
    for sec, keys in MODEL.items():
        for k in keys:
            lines.append(f"{sec}.{k.name:<22} # {k.help}")
    return "\n".join(lines)
