"""Checkpoints: atomic writes, RNG state capture, loading with clear errors, and safetensors folders."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hmpe.data.formats import DATASETS_DIR, DataError, load_data_config, shipped_datasets
from hmpe.models.detector import build_model, build_postprocessor
from hmpe.utils import shipped
from hmpe.utils.config import default_train_config
from hmpe.utils.shipped import PRETRAINED_CONFIG, shipped_weights


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    rename() is atomic on POSIX, so a crash mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# -- weights shipped inside the package: hmpe/weights/<name>/ (a save_pretrained folder + metrics.json), found
# by name in hmpe.utils.shipped (read there at call time, so that one place says where they are) ------------
SHIPPED_METRICS = "metrics.json"  # the figures measured with these very files (hmpe val), and how


def resolve_weights(weights: str | Path) -> Path:
    """``weights`` as a path when one exists there, else the folder of the shipped weights of that name, else
    the path as given (:func:`load_checkpoint` then says what is missing and which names are shipped)."""
    path = Path(weights).expanduser()
    return path if path.exists() else (shipped.shipped_weights_dir(weights) or path)


def shipped_name(weights: str | Path) -> str | None:
    """The shipped name when ``weights`` is (the folder of) shipped weights, else None."""
    path = resolve_weights(weights)
    return path.name if path.parent == shipped.WEIGHTS_DIR else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A ``.pt`` written by ``hmpe train``, a :func:`save_pretrained` folder (read without pickle), or the
    name of shipped weights (:func:`shipped_weights`); the paths it records relative to its own folder
    (:func:`stored_paths`) come back absolute."""
    path = resolve_weights(path)
    if path.is_dir():
        return load_pretrained_dir(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file, and no shipped weights of that name "
                                f"(shipped: {', '.join(shipped_weights()) or 'none'})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or not a torch file
        raise ValueError(f"checkpoint {path}: cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"checkpoint {path}: not an hmpe checkpoint (no 'model' entry)")
    return map_paths(ckpt, lambda value: loaded_path(value, path.parent))


# -- the paths a checkpoint records: relative to its own folder, or by name, never absolute -----------------
#: training-config keys whose value may be a path (else a name: a preset, a shipped dataset or weights)
TRAIN_PATH_KEYS = ("project", "resume", "weights", "data", "model")


def stored_path(value: str, folder: str | Path) -> str:
    """``value`` as a checkpoint written into ``folder`` records it: a shipped dataset YAML or shipped weights
    by their name; a path (absolute, or existing from the working directory) relative to ``folder``, written
    ``./...`` or ``../...`` (a drive of its own, on Windows: absolute); anything else (a name) as it is."""
    path = Path(value).expanduser()
    if not (path.is_absolute() or os.path.exists(path)):
        return value
    path = path.resolve()
    if path.parent == DATASETS_DIR.resolve() and path.suffix in (".yaml", ".yml"):
        return path.stem
    if path.parent == shipped.WEIGHTS_DIR.resolve():
        return path.name
    try:
        rel = Path(os.path.relpath(path, Path(folder).resolve())).as_posix()
    except ValueError:  # another drive: no relative path exists
        return str(path)
    return rel if rel == ".." or rel.startswith("../") else f"./{rel}"


def loaded_path(value: str, folder: str | Path) -> str:
    """A value :func:`stored_path` recorded in a checkpoint in ``folder`` -> absolute again (names and the
    absolute paths of older checkpoints as they are)."""
    return str((Path(folder) / value).resolve()) if value.startswith(("./", "../")) else value


def map_paths(ckpt: dict, fn: Callable[[str], str]) -> dict:
    """``ckpt`` (shallow copy) with ``fn`` applied to its path values: :data:`TRAIN_PATH_KEYS` of
    ``train_cfg`` (an inline dataset's ``path``), ``data_cfg``'s ``path`` and ``_source``, ``model_cfg``'s
    ``backbone.pretrained``."""
    def one(value):
        if isinstance(value, dict) and "path" in value:  # data={path: ..., format: ...} given inline
            return {**value, "path": one(value["path"])}
        return fn(value) if isinstance(value, str) else value

    out = dict(ckpt)
    if ckpt.get("train_cfg"):
        out["train_cfg"] = {k: one(v) if k in TRAIN_PATH_KEYS else v for k, v in ckpt["train_cfg"].items()}
    if ckpt.get("data_cfg"):
        out["data_cfg"] = {k: one(v) if k in ("path", "_source") else v for k, v in ckpt["data_cfg"].items()}
    backbone = (ckpt.get("model_cfg") or {}).get("backbone")
    if isinstance(backbone, dict) and "pretrained" in backbone:
        out["model_cfg"] = {**ckpt["model_cfg"], "backbone": {**backbone, "pretrained": one(backbone["pretrained"])}}
    return out


def stored_paths(ckpt: dict, folder: str | Path) -> dict:
    """What a checkpoint written into ``folder`` records (:func:`stored_path` for each path value), so that it
    carries no absolute path of the machine that wrote it; :func:`load_checkpoint` reverses it."""
    return map_paths(ckpt, lambda value: stored_path(value, folder))


def inference_state(ckpt: dict) -> dict:
    """The weights inference uses: the EMA's when the checkpoint has them, else the model's."""
    return (ckpt.get("ema") or {}).get("module") or ckpt["model"]


# -- shareable weights: a folder of config.json + model.safetensors, read without pickle ------------------
PRETRAINED_WEIGHTS = "model.safetensors"
PRETRAINED_FORMAT = "hmpe-pretrained"


def save_pretrained(ckpt: dict, out_dir: str | Path, half: bool = False) -> Path:
    """A checkpoint -> ``out_dir/config.json`` (model config, class names, training config, hmpe version; paths
    relative to ``out_dir``, see :func:`stored_paths`) and ``out_dir/model.safetensors`` (the EMA weights
    when the checkpoint has them: the ones inference uses). ``half``: floating-point tensors stored as fp16
    (half the file; loading copies them into the fp32 model, so only the rounding of the weights differs),
    integer buffers as they are.

    Any safetensors reader gets the tensors; :func:`load_checkpoint` reads the folder back as a checkpoint
    (no optimizer, no RNG state), so ``Detector(folder)``, ``weights=folder`` and ``hmpe val/predict/export``
    take it like a ``.pt``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = inference_state(ckpt)
    # clone: safetensors refuses tensors that share storage (tied weights); the copy is one model's size
    def stored(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().cpu().clone().contiguous()
        return v.half() if half and v.is_floating_point() else v

    save_file({k: stored(v) for k, v in state.items()}, str(out / PRETRAINED_WEIGHTS), metadata={"format": "pt"})
    ckpt = stored_paths(ckpt, out)
    config = {"format": PRETRAINED_FORMAT, "hmpe_version": ckpt.get("hmpe_version"), "names": list(ckpt["names"]),
              "dtype": "float16" if half else "float32",
              "model_cfg": ckpt["model_cfg"], "train_cfg": ckpt.get("train_cfg") or {},
              "data_cfg": ckpt.get("data_cfg")}
    (out / PRETRAINED_CONFIG).write_text(json.dumps(config, indent=1, default=str), encoding="utf-8")
    return out


def load_pretrained_dir(path: str | Path) -> dict:
    """A :func:`save_pretrained` folder -> a checkpoint dict (``model``, ``model_cfg``, ``names``, ``train_cfg``)."""
    path = Path(path)
    cfg_file, weights = path / PRETRAINED_CONFIG, path / PRETRAINED_WEIGHTS
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{path}: not an hmpe pretrained folder (needs {PRETRAINED_CONFIG} and "
                                f"{PRETRAINED_WEIGHTS}; write one with `hmpe export weights=CKPT format=safetensors`)")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
        state = load_file(str(weights))
    except Exception as e:
        raise RuntimeError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
    if config.get("format") != PRETRAINED_FORMAT:
        raise RuntimeError(f"{cfg_file}: not an hmpe config.json (format {config.get('format')!r})")
    ckpt = {"model": state, "ema": None, "model_cfg": config["model_cfg"], "names": config["names"],
            "train_cfg": config.get("train_cfg") or {}, "data_cfg": config.get("data_cfg"),
            "hmpe_version": config.get("hmpe_version")}
    return map_paths(ckpt, lambda value: loaded_path(value, path))


def checkpoint_data_config(ckpt: dict, where: str | Path | None = None) -> dict:
    """The dataset a checkpoint was trained on, loaded (see :func:`hmpe.data.formats.load_data_config`).

    Checkpoints store the dataset loaded (``path``, ``format``, ``names``, splits), its folder and YAML
    relative to the checkpoint's own folder (:func:`stored_paths`), so this works from any working directory
    of the machine that trained it; a shipped dataset (``nwpu-vhr10``) also by its name: where the recorded
    folder is missing (weights trained elsewhere, the shipped weights) the shipped YAML finds this machine's
    copy (``HMPE_DATASETS``). A dataset not found either way is a :class:`DataError` naming the checkpoint
    and the folder and saying to pass ``data=``. Checkpoints from before the loaded copy was stored fall back
    to the ``data`` value as it was typed.
    """
    saved = ckpt.get("data_cfg")
    if saved is None:
        return load_data_config(default_train_config(ckpt.get("train_cfg"))["data"])
    folder = saved.get("path")  # absent in the shipped weights: the name finds the data
    if saved.get("format") == "synthetic" or (folder and Path(folder).is_dir()):
        return load_data_config(saved)
    shipped = _shipped_dataset_name(saved)
    if shipped:
        cfg = load_data_config(shipped)
        if Path(cfg["path"]).is_dir():
            return cfg
        folder = cfg["path"]
    missing = f"is no longer at {folder}" if folder else "has no folder recorded"
    raise DataError(where or "checkpoint", f"the dataset it was trained on ({saved.get('_source') or 'unnamed'}) "
                                           f"{missing}; pass data=PATH/TO/data.yaml to use another copy")


def _shipped_dataset_name(saved: dict) -> str | None:
    """The shipped dataset name (``nwpu-vhr10``) a stored dataset config was loaded from, else None; older
    checkpoints record the shipped YAML's path instead of its name."""
    source = str(saved.get("_source", ""))
    if source in shipped_datasets():
        return source
    path = Path(source)
    if path.parent.parts[-2:] == ("configs", "datasets") and path.stem in shipped_datasets():
        return path.stem
    return None


def load_weights(model: torch.nn.Module, state: dict, source: str | Path) -> None:
    """``model.load_state_dict(state)`` (strict), with a one-line ValueError naming the first tensor whose
    shape differs (both shapes) or the tensors missing / unexpected, instead of torch's list of them all."""
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if bad:
        k = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise ValueError(f"checkpoint {source}: tensor {k} has shape {list(state[k].shape)} in the file but "
                         f"{list(own[k].shape)} in the model its config builds{more}; the weights do not match "
                         f"their model config (use the files one training run wrote, unedited)")
    if missing or unexpected:
        first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        raise ValueError(f"checkpoint {source}: {len(missing)} tensors missing and {len(unexpected)} unexpected "
                         f"for the model its config builds ({first}); the weights do not match their model config")
    model.load_state_dict(state)


def load_for_inference(weights: str | Path, device: torch.device, fuse: bool = True):
    """Checkpoint (``.pt`` or pretrained folder) -> (model in eval mode with EMA weights when present,
    postprocessor, ckpt).

    ``fuse`` (default): deploy mode (:meth:`hmpe.models.detector.DetectionModel.fuse`, same outputs,
    inference only); ``False`` keeps the trained structure (e.g. to inspect or fine-tune it)."""
    ckpt = load_checkpoint(weights)
    model = build_model(ckpt["model_cfg"], len(ckpt["names"]))
    load_weights(model, inference_state(ckpt), resolve_weights(weights))
    model.to(device).eval()
    if fuse:
        model.fuse()
    return model, build_postprocessor(ckpt["model_cfg"], len(ckpt["names"])), ckpt
