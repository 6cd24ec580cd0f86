"""Configuration: shipped presets, YAML files and ``key=value`` command-line overrides.

One argument style everywhere: ``key=value``. Values are parsed as YAML (``lr=1e-3``,
``multi_scale=[288,320]``, ``ema=false``). Dotted keys reach into the model config
(``decoder.num_layers=3``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from hmpe.utils.keys import MODEL_SECTIONS, defaults

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path) as f:
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


def model_presets() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.yaml"))


def load_model_config(name_or_path: str | dict) -> dict:
    """A preset name (``rtdetr-n``) or a YAML path -> model config dict (with ``name``)."""
    if isinstance(name_or_path, dict):
        return copy.deepcopy(name_or_path)
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        cfg = read_yaml(p)
        cfg.setdefault("name", p.stem)
        return cfg
    preset = CONFIG_DIR / "models" / f"{name_or_path}.yaml"
    if preset.is_file():
        cfg = read_yaml(preset)
        cfg.setdefault("name", str(name_or_path))
        return cfg
    raise ValueError(f"model {name_or_path!r}: not a YAML file nor a preset ({', '.join(model_presets())})")


def default_train_config() -> dict:
    """The training defaults, from the key table (:mod:`hmpe.utils.keys`, ``TASKS["train"]``)."""
    return defaults("train")


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


def parse_overrides(args: list[str]) -> dict:
    """``["epochs=3", "decoder.num_layers=3"]`` -> ``{"epochs": 3, "decoder.num_layers": 3}``."""
    out = {}
    for a in args:
        if "=" not in a:
            raise ValueError(f"argument {a!r}: expected key=value (e.g. epochs=10)")
        k, v = a.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        if not k:
            raise ValueError(f"argument {a!r}: empty key")
        out[k] = parse_value(v)
    return out


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
    cfg = copy.deepcopy(cfg)
    for k, v in overrides.items():
        set_dotted(cfg, k, v)
    return cfg
