"""Checkpoints: atomic writes, RNG state capture, loading with clear errors, and safetensors folders."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hmpe.data.formats import DataError, load_data_config, shipped_datasets
from hmpe.models.detector import build_model, build_postprocessor


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


# -- weights shipped inside the package: hmpe/weights/<name>/ (a save_pretrained folder + metrics.json) ------
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED_METRICS = "metrics.json"  # the figures measured with these very files (hmpe val), and how


def shipped_weights() -> list[str]:
    """Names of the pretrained folders shipped in ``hmpe/weights`` (``weights=NAME`` anywhere weights go)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / PRETRAINED_CONFIG).is_file())


def resolve_weights(weights: str | Path) -> Path:
    """``weights`` as a path when one exists there, else the folder of the shipped weights of that name, else
    the path as given (:func:`load_checkpoint` then says what is missing and which names are shipped)."""
    path = Path(weights).expanduser()
    name = str(weights)
    if not path.exists() and "/" not in name and (WEIGHTS_DIR / name / PRETRAINED_CONFIG).is_file():
        return WEIGHTS_DIR / name
    return path


def shipped_name(weights: str | Path) -> str | None:
    """The shipped name when ``weights`` is (the folder of) shipped weights, else None."""
    path = resolve_weights(weights)
    return path.name if path.parent == WEIGHTS_DIR else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A ``.pt`` written by ``hmpe train``, a :func:`save_pretrained` folder (read without pickle), or the
    name of shipped weights (:func:`shipped_weights`)."""
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
    return ckpt


def inference_state(ckpt: dict) -> dict:
    """The weights inference uses: the EMA's when the checkpoint has them, else the model's."""
    return (ckpt.get("ema") or {}).get("module") or ckpt["model"]


# -- shareable weights: a folder of config.json + model.safetensors, read without pickle ------------------
PRETRAINED_CONFIG = "config.json"
PRETRAINED_WEIGHTS = "model.safetensors"
PRETRAINED_FORMAT = "hmpe-pretrained"


def save_pretrained(ckpt: dict, out_dir: str | Path, half: bool = False) -> Path:
    """A checkpoint -> ``out_dir/config.json`` (model config, class names, training config, hmpe version)
    and ``out_dir/model.safetensors`` (the EMA weights when the checkpoint has them: the ones inference uses).
    ``half``: floating-point tensors stored as fp16 (half the file; loading copies them into the fp32 model,
    so only the rounding of the weights differs), integer buffers as they are.

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
    return {"model": state, "ema": None, "model_cfg": config["model_cfg"], "names": config["names"],
            "train_cfg": config.get("train_cfg") or {}, "data_cfg": config.get("data_cfg"),
            "hmpe_version": config.get("hmpe_version")}


def checkpoint_data_config(ckpt: dict, where: str | Path | None = None) -> dict:
    """The dataset a checkpoint was trained on, loaded (see :func:`hmpe.data.formats.load_data_config`).

    Checkpoints store the dataset resolved (absolute ``path``, ``format``, ``names``), so this works
    from any working directory. A dataset that has moved since is a :class:`DataError` naming the
    checkpoint and the missing folder and saying to pass ``data=``, except for a shipped dataset
    (``nwpu-vhr10``): a checkpoint trained on it elsewhere (shipped weights) reads this machine's copy
    through the shipped YAML (``HMPE_DATASETS``). Checkpoints from before the resolved copy was stored
    fall back to the ``data`` value as it was typed.
    """
    saved = ckpt.get("data_cfg")
    if saved is None:
        return load_data_config(ckpt.get("train_cfg", {}).get("data", "synthetic"))
    cfg = load_data_config(saved)
    shipped = _shipped_dataset_name(saved)
    if cfg["format"] != "synthetic" and not Path(cfg["path"]).is_dir() and shipped:
        cfg = load_data_config(shipped)  # trained on another machine: the shipped YAML finds this machine's copy
    if cfg["format"] != "synthetic" and not Path(cfg["path"]).is_dir():
        raise DataError(where or "checkpoint", f"the dataset it was trained on ({cfg['_source']}) is no longer at "
                                               f"{cfg['path']}; pass data=PATH/TO/data.yaml to use another copy")
    return cfg


def _shipped_dataset_name(saved: dict) -> str | None:
    """The shipped dataset name (``nwpu-vhr10``) a stored dataset config was loaded from, else None."""
    source = Path(str(saved.get("_source", "")))
    if source.parent.parts[-2:] == ("configs", "datasets") and source.stem in shipped_datasets():
        return source.stem
    return None


def load_for_inference(weights: str | Path, device: torch.device, fuse: bool = True):
    """Checkpoint (``.pt`` or pretrained folder) -> (model in eval mode with EMA weights when present,
    postprocessor, ckpt).

    ``fuse`` (default): deploy mode (:meth:`hmpe.models.detector.DetectionModel.fuse`, same outputs,
    inference only); ``False`` keeps the trained structure (e.g. to inspect or fine-tune it)."""
    ckpt = load_checkpoint(weights)
    model = build_model(ckpt["model_cfg"], len(ckpt["names"]))
    model.load_state_dict(inference_state(ckpt))
    model.to(device).eval()
    if fuse:
        model.fuse()
    return model, build_postprocessor(ckpt["model_cfg"], len(ckpt["names"])), ckpt
