"""Configuration: shipped presets, YAML files and ``key=value`` command-line overrides.

One argument style everywhere: ``key=value``. Values are parsed as YAML (``lr=1e-3``,
``multi_scale=[288,320]``, ``ema=false``). Dotted keys reach into the model config
(``decoder.num_layers=3``). A renamed key (:mod:`hmpe.utils.renames`) is read under its new name: with a
deprecation warning where the user typed it (command line, model YAML), silently in a stored config.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from hmpe.utils.keys import MODEL_KEY_TASKS, UsageError, check_model_config, defaults, key_type
from hmpe.utils.keytypes import TEXT_KINDS, show
from hmpe.utils.model_keys import BASE_KEY, MODEL_SECTIONS
from hmpe.utils.renames import upgrade_args, upgrade_model_config
from hmpe.utils.shipped import CONFIG_DIR, model_presets


def load_yaml(path: str | Path) -> dict:
    """The one YAML reader of the package: a file whose top level is a mapping -> that dict (``{}`` if empty).

    Errors name the file: FileNotFoundError if it is missing, ValueError for bad YAML or a non-mapping top level."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` laid on ``base``: mappings merge key by key, anything else (a list, a scalar, ``null``) replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _base_path(base: Any, owner: str | Path) -> Path:
    """The file a ``base:`` value names; ``owner`` is the YAML that wrote it (a folder for in-memory dicts)."""
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"{owner}: base: expected a preset name or a YAML path, got {base!r}")
    if base.endswith((".yaml", ".yml")):
        folder = Path(owner) if Path(owner).is_dir() else Path(owner).parent
        path = folder / base
        if path.is_file():
            return path.resolve()
        raise ValueError(f"{owner}: base {base!r}: no such file {path}")
    preset = CONFIG_DIR / "models" / f"{base}.yaml"
    if preset.is_file():
        return preset.resolve()
    raise ValueError(f"{owner}: base {base!r} is not a preset ({', '.join(model_presets())}); "
                     "name a preset or a YAML path ending in .yaml, relative to this file")


def _resolve(cfg: dict, owner: str | Path, chain: tuple[Path, ...]) -> dict:
    """``cfg`` with its ``base`` chain merged under it, the ``base`` key removed and renamed keys under their new
    names (a warning naming the file)."""
    cfg = upgrade_model_config(cfg, str(owner) if chain else "the model config")
    if chain:  # read from a file: a typo is reported with the file it is in
        check_model_config(cfg, str(owner), file=True)
    cfg = copy.deepcopy(cfg)
    base = cfg.pop(BASE_KEY, None)
    if base is None:
        return cfg
    path = _base_path(base, owner)
    if path in chain:
        loop = " -> ".join(str(p) for p in (*chain, path))
        raise ValueError(f"{owner}: base cycle: {loop}; remove one of these base: keys")
    parent = _resolve(load_yaml(path), path, (*chain, path))
    parent.pop("name", None)  # a derived model is named after its own file, not its parent
    return deep_merge(parent, cfg)


def load_model_config(name_or_path: str | dict) -> dict:
    """A preset name (``rtdetr-n``, ``ablation/lsconv``), a YAML path or a dict -> the resolved model config.

    Resolved: a ``base:`` (a preset name, or a YAML path relative to the file naming it; relative to the working
    directory for a dict) is loaded, itself resolved, and merged under the file's own keys (:func:`deep_merge`);
    ``base`` is gone from the result, which has a ``name`` (the file's stem or the preset name unless it sets one).
    """
    if isinstance(name_or_path, dict):
        return _resolve(name_or_path, Path.cwd(), ())
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        path, name = p.resolve(), p.stem
    else:
        path, name = (CONFIG_DIR / "models" / f"{name_or_path}.yaml").resolve(), str(name_or_path)
        if not path.is_file():
            raise ValueError(f"model {name_or_path!r}: not a YAML file nor a preset ({', '.join(model_presets())})")
    cfg = _resolve(load_yaml(path), path, (path,))
    cfg.setdefault("name", name)
    return cfg


def default_train_config(saved: dict | None = None) -> dict:
    """The training defaults, from the key table (:mod:`hmpe.utils.keys`, ``TASKS["train"]``); with ``saved`` (a
    checkpoint's ``train_cfg``) that config, each key it lacks at its default."""
    return {**defaults("train"), **(saved or {})}


def parse_value(text: str) -> Any:
    for cast in (int, float):  # YAML 1.1 reads "1e-3" as a string
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str], task: str | None = None) -> dict:
    """``["epochs=3", "decoder.num_layers=3"]`` -> ``{"epochs": 3, "decoder.num_layers": 3}``. A key given twice
    is a UsageError naming both values (no silent "the later one wins"). With ``task``, a number typed for a key
    that takes text or a path (``name=2``, ``weights=123``) stays the text typed, and a renamed key comes back
    under its new name (a one-line deprecation warning, :mod:`hmpe.utils.renames`)."""
    out: dict = {}
    for a in args:
        if "=" not in a:
            raise UsageError(f"argument {a!r}: expected key=value (e.g. epochs=10)")
        k, v = a.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        if not k:
            raise UsageError(f"argument {a!r}: empty key")
        value = parse_value(v)
        t = key_type(task, k) if task else None
        if t is not None and t.kind in TEXT_KINDS and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = v
        if k in out:
            raise UsageError(f"{k} given twice ({k}={show(out[k])} and {k}={show(value)}); give it once")
        out[k] = value
    return upgrade_args(task, out, task in MODEL_KEY_TASKS, error=UsageError) if task else out


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    d = cfg
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):  # None, or a switch such as augment=true: becomes a mapping
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    """Separate model-config overrides (dotted keys into model sections) from training ones."""
    model, train = {}, {}
    for k, v in overrides.items():
        (model if k.split(".")[0] in MODEL_SECTIONS else train)[k] = v
    return model, train


def apply_overrides(cfg: dict, overrides: dict) -> dict:
    """``overrides`` (dotted keys) set in a copy of ``cfg``; renamed model keys of either under their new names
    (silently: a typed key was warned about where it was read), so that an old name set over a new one wins."""
    cfg = copy.deepcopy(upgrade_model_config(cfg))
    for k, v in upgrade_args(None, overrides, warn=False).items():
        set_dotted(cfg, k, v)
    return cfg
