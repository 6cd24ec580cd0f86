"""Every key a user can type, declared once: per task (``hmpe train/val/predict/heatmap/export/bench``), per
model-config section, per dataset YAML. Each :class:`Key` has a name, a default, a one-line meaning and the type of
its value (:mod:`hmpe.utils.keytypes`: ``Int(">= 1")``, ``Num("[0, 1]")``, ``Choice("nms", "wbf")``, ...).

This table is the single source of truth for
- the training defaults (:func:`hmpe.utils.config.default_train_config` is built from ``TASKS["train"]``),
- the strict check of command-line and config keys (:func:`check_task_args`, :func:`check_model_config`,
  :func:`check_data_keys`): an unknown key is a :class:`ConfigKeyError` naming it and the nearest known key,
  a value of the wrong type or out of range (or a file, preset or shipped name that does not exist) a
  :class:`UsageError` naming the key, the value and what it expects (:func:`check_value`),
- ``hmpe cfg`` (and a task's ``--help``), which print the keys with their meanings (``hmpe.cli.describe``).
Renamed keys (the old names still read, with a warning): :mod:`hmpe.utils.renames`.

The model-config sections are the table's other half, :mod:`hmpe.utils.model_keys`. To add a key: add one
``Key(...)`` line, with its type, to the task's tuple below (or to the dataset tuple, or to a model section), then
read it in the code. ``tests/test_config_keys.py`` checks that the model sections list exactly the constructor
arguments the model builder passes them to; ``tests/test_key_types.py`` that every task key has a type its
default fits, and that wrong values are refused.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any, Iterable

from hmpe.utils.keytypes import (Bool, Choice, Device, Int, Key, Kind, ListOf, Num, OneOrList, Text, Type, show,
                                 size_problem)
from hmpe.utils.model_keys import BASE_KEY, MODEL, MODEL_SCALARS, MODEL_SECTIONS, MODEL_TOP
from hmpe.utils.renames import upgrade_args


class UsageError(ValueError):
    """A command line that cannot work as typed: a missing or unknown argument, an impossible value
    (the CLI prints one line and exits with status 2, before any work)."""


class ConfigKeyError(UsageError):
    """An unknown key (the CLI exits with status 2)."""


def check_imgsz(value: Any, key: str = "imgsz") -> None:
    """One ``imgsz`` as typed -> UsageError unless a positive multiple of 32 (``MAX_STRIDE``), naming the nearest."""
    problem = size_problem(value)
    if problem:
        raise UsageError(f"{key}={show(value)}: {problem}")


# ------------------------------------------------------------------------------------------------ tasks
# keys several tasks share, declared once
_DEVICE = Key("device", "auto", "auto | cpu | cuda | cuda:N", Device())
_IMGSZ_OF_CHECKPOINT = Key("imgsz", None, "input size (default: the checkpoint's training imgsz)",
                           Kind("size", null=True))
_IMAGES = Key("source", None, "image file, folder or glob pattern (or the first positional argument)",
              Text("an image, folder or glob", null=True))
TILE_OVERLAP = 0.2  #: tile overlap of sliced inference and of the tiled-training grid (a fraction of the tile)
_PRED = (  # options shared by val / predict (sliced inference: hmpe.engine.eval.slicing)
    Key("slice", None, "tile size N for sliced inference on large images (null: the checkpoint's training tile= "
                       "if it has one, else the whole image; 0: the whole image)", Int(">= 0", null=True)),
    Key("overlap", TILE_OVERLAP, "tile overlap as a fraction of the tile (slice=N)", Num("[0, 1)")),
    Key("merge", "nms", "merge of tile detections: nms | wbf (slice=N)", Choice("nms", "wbf")),
    Key("merge_iou", 0.5, "IoU of the class-wise merge (slice=N)", Num("[0, 1]")),
    Key("full_image", False, "slice=N: also one pass on the whole image", Bool()),
)

TRAIN = (
    Key("model", "rtdetr-n", "preset name (hmpe cfg lists them) or a model YAML path", Kind("model")),
    Key("data", "synthetic", "dataset YAML path or shipped name (synthetic, nwpu-vhr10)", Kind("data")),
    Key("weights", None, "checkpoint to start from (its model config is used; other classes: class heads "
                         "re-initialised)", Kind("weights", null=True)),
    Key("epochs", 10, "training epochs", Int(">= 1")),
    Key("batch", 8, "images per batch (per process under torchrun)", Int(">= 1")),
    Key("imgsz", 256, "network input size (square)", Kind("size")),
    Key("workers", 2, "data-loader worker processes", Int(">= 0")),
    _DEVICE,
    Key("seed", 0, "random seed (exact resume reseeds per epoch from it)", Int()),
    Key("deterministic", False, "torch deterministic algorithms (warn only)", Bool()),
    # 8e-4: learns most in a short from-scratch budget (docs/method.md, "Training recipe"); D-FINE-N uses it too
    Key("lr", 8.0e-4, "AdamW learning rate", Num("> 0")),
    Key("lr_backbone", None, "backbone learning rate (null: 0.1 x lr when starting from backbone.pretrained or "
                             "weights=, else lr)", Num(">= 0", null=True)),
    Key("weight_decay", 1.0e-4, "AdamW weight decay", Num(">= 0")),
    Key("warmup_iters", 100, "linear warm-up iterations", Int(">= 0")),
    Key("warmup_epochs", None, "linear warm-up in epochs (a float; replaces warmup_iters when set)",
        Num(">= 0", null=True)),
    Key("schedule", "cosine", "cosine | step | constant", Choice("cosine", "step", "constant")),
    Key("final_lr_factor", 0.05, "final lr as a fraction of lr", Num("[0, 1]")),
    Key("milestones", [0.8], "step schedule: fractions of training where lr drops", ListOf(Num("[0, 1]"))),
    Key("clip_grad", 0.1, "max gradient norm, 0 = off", Num(">= 0")),
    Key("ema", True, "keep an exponential moving average of the weights (used for val and saved weights)", Bool()),
    Key("ema_decay", 0.9998, "EMA decay", Num("[0, 1]")),
    Key("ema_warmup", 300, "iterations of the EMA decay ramp", Int(">= 0")),
    Key("ema_warmup_epochs", None, "the EMA decay ramp in epochs (a float; replaces ema_warmup when set)",
        Num(">= 0", null=True)),
    Key("amp", "auto", "mixed precision: auto (bf16 on CUDA and on CPUs with native bf16: AVX512-BF16 or AMX; "
                     "else fp32) | bf16 | fp16 | false", Choice("auto", "bf16", "fp16", False, True)),
    Key("channels_last", True, "train with conv weights and images in NHWC memory layout (the same math; faster "
                               "convolutions on CPU and GPU)", Bool()),
    Key("nan_limit", 10, "non-finite losses tolerated (steps skipped) before stopping", Int(">= 0")),
    Key("sync_bn", False, "SyncBatchNorm across torchrun processes (CUDA only)", Bool()),
    Key("find_unused_parameters", False, "DDP: parameters used only in some iterations", Bool()),
    # flip + colour jitter by default: on NWPU from scratch the RT-DETR recipe's zoom-out and IoU crop halve what
    # a short run learns (docs/method.md, "Training recipe"); augment=true restores them for long schedules
    Key("augment", {"zoom_out": False, "iou_crop": False},
        "flip + colour jitter (default) | true: the RT-DETR recipe (+ zoom-out, IoU crop) | false | a mapping of "
        "switches over the RT-DETR recipe (augment.keep_ratio=true: letterbox)", Kind("switch")),
    Key("augment_epochs", None, "[start, stop] fractions of the epochs with augmentation; resize only outside "
                                "(null: every epoch)", Kind("window", null=True)),
    Key("skip_bad", False, "skip unreadable images / bad labels (counted) instead of stopping", Bool()),
    Key("tile", None, "train on native-resolution tile x tile crops (pixels of the source image; resized to "
                      "imgsz) and validate sliced on whole images (null: whole images resized)", Int(">= 32", null=True)),
    Key("tile_overlap", TILE_OVERLAP, "tile=N: overlap of the tile grid (training and sliced validation)",
        Num("[0, 1)")),
    Key("tile_min_visible", 0.5, "tile=N: a box is kept in a crop when this fraction of its area is inside",
        Num("(0, 1]")),
    Key("tile_empty", 0.1, "tile=N: fraction of the tiles without objects drawn each epoch", Num("[0, 1]")),
    Key("multi_scale", None, "training sizes drawn per batch, e.g. [288,320,352]", ListOf(Kind("size"), null=True)),
    Key("max_dets", 100, "detections per image scored by the evaluator", Int(">= 1")),
    Key("val_interval", 1, "validate every N epochs (and always after the last)", Int(">= 1")),
    Key("heatmaps_per_epoch", 2, "validation heatmap figures per validated epoch (heatmap models; 0 = off)",
        Int(">= 0")),
    Key("plots", True, "at the end: results.png, the PR and F1 curves and the confusion matrix (false: "
                       "results.csv, metrics and weights only)", Bool()),
    Key("conf", 0.25, "score threshold of predictions made with this run's weights", Num("[0, 1]")),
    Key("project", "runs", "output root folder", Text("a folder")),
    Key("name", None, "run folder name (default exp, exp2, ...)", Text("a folder name", null=True)),
    Key("exist_ok", False, "reuse an existing run folder", Bool()),
    Key("resume", None, "last.pt of a run to resume exactly", Kind("file", null=True)),
    Key("save_period", 0, "also keep epochN.pt every N epochs (0 = off)", Int(">= 0")),
    Key("time_limit", None, "minutes: size the run (in iterations; the last epoch may be partial) so it fits",
        Num("> 0", null=True)),
)

VAL = (
    Key("weights", None, "checkpoint, pretrained folder, shipped name (hmpe-n-nwpu) or exported file (.onnx, "
                         ".xml) to evaluate (required)",
        Kind("weights", null=True)),
    Key("data", None, "dataset (default: the one the checkpoint was trained on)", Kind("data", null=True)),
    Key("split", "val", "train | val | test", Choice("train", "val", "test")),
    _DEVICE,
    Key("batch", None, "images per batch (default: the training batch)", Int(">= 1", null=True)),
    Key("workers", None, "data-loader workers (default: the training value)", Int(">= 0", null=True)),
    _IMGSZ_OF_CHECKPOINT,
    Key("max_dets", None, "detections per image scored (default: the training value)", Int(">= 1", null=True)),
    Key("skip_bad", None, "skip unreadable images / bad labels (counted)", Bool(null=True)),
    Key("conf", 0.001, "score threshold (sliced evaluation)", Num("[0, 1]")),
    Key("plots", True, "save the PR and F1 curves and the confusion matrix (false: metrics.json only)", Bool()),
    Key("project", "runs", "output root folder", Text("a folder")),
    Key("name", None, "output folder name under <project>/val", Text("a folder name", null=True)),
    Key("exist_ok", False, "reuse an existing output folder", Bool()),
    *_PRED,
)

PREDICT = (
    _IMAGES,
    Key("weights", None, "checkpoint, pretrained folder, shipped name (hmpe-n-nwpu) or exported file (.onnx, "
                         ".xml) (required)",
        Kind("weights", null=True)),
    _DEVICE,
    Key("conf", 0.25, "score threshold", Num("[0, 1]")),
    _IMGSZ_OF_CHECKPOINT,
    Key("batch", 4, "images (or tiles) per forward pass", Int(">= 1")),
    Key("save", True, "write annotated images and predictions.json", Bool()),
    Key("strict", False, "stop at the first unreadable image instead of skipping it", Bool()),
    Key("max_det", None, "detections kept per image, highest scores first (null: 100, or with slice=N every "
                         "merged detection; 0 = all above conf); a cap that drops some warns. Each pass (image "
                         "or tile) yields at most the model's postprocess.num_top_queries",
        Int(">= 0", null=True)),
    Key("project", "runs", "output root folder", Text("a folder")),
    Key("name", None, "output folder name under <project>/predict", Text("a folder name", null=True)),
    *_PRED,
    Key("bands", None, "GeoTIFF: bands as RGB (1-based; one: x3; null: 1,2,3)", ListOf(Int(">= 1"), null=True)),
    Key("window", 4096, "GeoTIFF: largest raster window read at once, px (hmpe.engine.eval.raster)", Int(">= 1")),
)

HEATMAP = (
    _IMAGES,
    Key("weights", None, "checkpoint, folder or shipped name of a model with a heatmap path (required)",
        Kind("weights", null=True)),
    _DEVICE,
    Key("conf", 0.25, "score threshold of the boxes drawn", Num("[0, 1]")),
    _IMGSZ_OF_CHECKPOINT,
    Key("level", 0, "0 | 1 | 2 | max: pyramid level shown", Choice(0, 1, 2, "max")),
    Key("out", None, "output folder (default <project>/heatmap/<name>)", Text("a folder", null=True)),
    Key("project", "runs", "output root folder", Text("a folder")),
    Key("name", None, "output folder name", Text("a folder name", null=True)),
    Key("dpi", 100, "figure resolution", Int(">= 1")),
    Key("save", True, "write the figures", Bool()),
)

EXPORT = (
    Key("weights", None, "checkpoint to export (required)", Kind("weights", null=True)),
    Key("format", "onnx", "onnx | openvino (IR + OpenVINO parity check) | safetensors (a folder: config.json + "
                          "model.safetensors, no pickle)", Choice("onnx", "openvino", "safetensors")),
    Key("imgsz", None, "input size: N, HxW (512x640) or [h, w] (default: the checkpoint's training imgsz)",
        Kind("hw", null=True)),
    Key("opset", 17, "ONNX opset (17 or newer: LayerNormalization)", Int(">= 17")),
    Key("gather_sampling", False, "deformable sampling by gathers instead of grid_sample", Bool()),
    Key("out", None, "output file (default: next to the weights)", Text("a file or folder", null=True)),
    Key("image", None, "image for the onnxruntime parity check (default: a synthetic one)", Kind("file", null=True)),
    Key("check", True, "compare onnxruntime with PyTorch after export", Bool()),
    Key("half", False, "format=safetensors: fp16 weights (half the file; loaded back into the fp32 model)", Bool()),
    Key("int8", False, "format=onnx|openvino: INT8 post-training quantization (ONNX Runtime QDQ / NNCF), calibrated "
                       "on data's train images; prints fp32 vs INT8 mAP50 on its val split", Bool()),
    Key("data", None, "int8=true: dataset of the calibration and the fp32-vs-INT8 check (default: the "
                      "checkpoint's)", Kind("data", null=True)),
    Key("calib_images", 300, "int8=true: train images that calibrate the activation ranges", Int(">= 1")),
    Key("val_images", None, "int8=true: val images of the fp32-vs-INT8 mAP50 check (null: all)",
        Int(">= 1", null=True)),
)

BENCH = (
    Key("model", "rtdetr-n", "preset name or model YAML path", Kind("model")),
    Key("nc", 10, "number of classes of the benchmarked model", Int(">= 1")),
    Key("imgsz", 640, "input size: N or HxW (512x640)", Kind("hw")),
    Key("sizes", None, "several input sizes, one report each, e.g. [512,640] (null: imgsz)",
        ListOf(Kind("hw"), null=True)),
    Key("batch", 1, "batch size or a list", OneOrList(Int(">= 1"))),
    Key("device", "cpu", "cpu | cuda | cuda:N", Device(auto=False)),
    Key("threads", None, "torch intra-op threads", Int(">= 1", null=True)),
    Key("warmup", 3, "untimed warm-up runs", Int(">= 0")),
    Key("runs", 20, "timed runs", Int(">= 1")),
    Key("out", None, "write the reports to this JSON file", Text("a JSON file", null=True)),
    Key("fuse", True, "deploy mode (BatchNorm folded, constants cached), as predict / val / export run the model",
        Bool()),
    Key("backend", None, "torch | onnxruntime | openvino | onnxruntime-int8 | openvino-int8 or a list: each "
                         "runtime's latency, rounds interleaved (int8: calibrated on random images, speed only)",
        OneOrList(Choice("torch", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8"), null=True)),
    Key("files", None, "exported files (.onnx, OpenVINO .xml) to time as they are, instead of model=: each in its "
                       "runtime at its exported size, rounds interleaved (keys: batch, threads, warmup, runs, out)",
        OneOrList(Kind("file"), null=True)),
)

EXPLORE = (
    Key("weights", None, "checkpoint, folder or shipped name of a model with a heatmap path (required)",
        Kind("weights", null=True)),
    Key("source", None, "image folder or dataset YAML (or the first positional argument)",
        Text("an image folder or a dataset", null=True)),
    Key("port", 7860, "local port of the page", Int("[0, 65535]")),
    Key("host", "127.0.0.1", "address to bind (loopback by default)", Text("an address")),
    Key("split", "val", "dataset split shown when source is a dataset YAML", Choice("train", "val", "test")),
    Key("conf", 0.25, "initial confidence threshold of the boxes", Num("[0, 1]")),
    _IMGSZ_OF_CHECKPOINT,
    Key("device", "cpu", "cpu | cuda | cuda:N", Device()),
    Key("floor", 0.05, "lowest confidence kept in the per-image cache (the slider's floor)", Num("[0, 1]")),
    Key("cache", 16, "images whose maps are kept in memory", Int(">= 1")),
    Key("scan", True, "dataset sources: score every image in the background to rank them by misses", Bool()),
)

DATA_TOOLS = (  # hmpe data stats | convert (hmpe.data.tools); the commands each takes: hmpe.cli.DATA_COMMANDS
    Key("data", None, "dataset YAML, folder or shipped name (or after the command)", Kind("data", null=True)),
    Key("splits", None, "splits read (null: all the YAML defines)", ListOf(Choice("train", "val", "test"), null=True)),
    Key("skip_bad", False, "skip unreadable images, drop bad boxes; count both", Bool()),
    Key("to", None, "convert: coco | yolo (required)", Choice("coco", "yolo", null=True)),
    Key("out", None, "convert: output folder, gets data.yaml (required)", Text("a folder", null=True)),
    Key("copy_images", False, "convert: copy the images instead of symlinking them", Bool()),
)

TASKS: dict[str, tuple[Key, ...]] = {
    "train": TRAIN, "val": VAL, "predict": PREDICT, "heatmap": HEATMAP, "export": EXPORT, "bench": BENCH,
    "explore": EXPLORE, "data": DATA_TOOLS,
}
MODEL_KEY_TASKS = ("train", "bench")  # tasks that also take dotted model keys (decoder.num_layers=3)
OPEN_SECTIONS = ("augment",)  # train mappings whose own builder checks the sub-keys (build_transforms)

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


def key_type(task: str, key: str) -> Type | None:
    """The declared type of ``key`` in ``hmpe TASK``: a task key, or (train / bench) a model key
    ``section.key`` or ``hidden_dim``; None for a key without one (a model key may be untyped)."""
    for k in TASKS.get(task, ()):
        if k.name == key:
            return k.type
    section, _, sub = key.partition(".")
    keys = (MODEL.get(section, ()) if sub else MODEL_SCALARS) if task in MODEL_KEY_TASKS else ()
    return next((k.type for k in keys if k.name == (sub or section)), None)


def check_value(task: str, key: str, value: Any, files: bool = True) -> None:
    """``key=value`` of ``hmpe TASK`` against the key's type -> UsageError naming the key, the value and what it
    expects (``epochs=0: expected an integer >= 1``). ``files=False``: only the form of paths, not whether the
    file, preset, dataset or shipped weights exist (a command line read without its files)."""
    t = key_type(task, key)
    problem = t.problem(value, files) if t is not None else None
    if problem:
        raise UsageError(f"{key}={show(value)}: {problem}")


def check_task_args(task: str, args: dict, files: bool = True) -> None:
    """Keys of ``hmpe TASK`` (after ``source`` / positional handling): each known (else ConfigKeyError naming the
    nearest; checked first, a typo being the likelier mistake), each value of its key's type
    (:func:`check_value`), no two keys that contradict each other."""
    args = upgrade_args(task, args, task in MODEL_KEY_TASKS, error=UsageError)  # old names: a warning
    known = [k.name for k in TASKS[task]]
    where = f"hmpe {task} (model keys)"
    values = {}  # key -> value of every typed key, model sections given as mappings spread out
    for key, value in args.items():
        head = key.split(".")[0]
        if task in MODEL_KEY_TASKS and head in MODEL_SECTIONS and head not in known:
            check_model_key(key, where)
            for sub, v in (value.items() if head in MODEL and "." not in key and isinstance(value, dict) else ()):
                check_model_key(f"{head}.{sub}", where)  # decoder={num_layers: 3}: as decoder.num_layers=3
                values[f"{head}.{sub}"] = v
        elif "." in key and head in OPEN_SECTIONS and head in known:
            continue
        elif key not in known:
            extra = list(MODEL_SECTIONS) if task in MODEL_KEY_TASKS else []
            raise unknown_key_error(key, known + extra, f"hmpe {task}")
        values[key] = value
    for key, value in values.items():
        check_value(task, key, value, files)
    if task == "train" and args.get("model") is not None and args.get("weights") is not None:
        raise UsageError(f"model={show(args['model'])} and weights={show(args['weights'])}: the weights bring their "
                         f"own model config (model keys such as decoder.num_layers= still apply); drop model=")
    if task == "bench" and args.get("sizes") is not None and args.get("imgsz") is not None:
        raise UsageError(f"imgsz= and sizes={show(args['sizes'])} both given: sizes are the sizes benched; drop imgsz=")


def check_data_keys(cfg: dict) -> None:
    """Keys of a dataset YAML; the caller names the file (:class:`hmpe.data.formats.DataError`)."""
    known = [k.name for k in DATA] + ([k.name for k in SYNTHETIC] if cfg.get("format") == "synthetic" else [])
    for key in cfg:
        if not str(key).startswith("_") and key not in known:
            raise unknown_key_error(str(key), known)

