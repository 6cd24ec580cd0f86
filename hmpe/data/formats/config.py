"""The dataset YAML: finding it (a file, a folder holding ``data.yaml``, or a shipped name), reading it,
expanding ``${VAR:-default}`` in ``path``, detecting the format when none is given, and checking its keys."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from hmpe.data.formats.detect import detect_format
from hmpe.data.types import DataError
from hmpe.utils.config import load_yaml
from hmpe.utils.keys import ConfigKeyError, check_data_keys
from hmpe.utils.shipped import DATASETS_DIR, find_data_yaml, shipped_datasets  # noqa: F401 - re-exported

FORMATS = ("nwpu", "voc", "coco", "yolo", "synthetic")
SPLIT_KEYS = ("train", "val", "test")

_ENV_PATTERN = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand_env(text: str, where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (shell syntax) in a YAML ``path``."""

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value:
            return value
        if default is None:
            raise DataError(where, f"path uses ${{{name}}} but the environment variable is not set")
        return default

    return _ENV_PATTERN.sub(substitute, text)


def _find_data_yaml(spec: str) -> tuple[Path, bool]:
    """Return (yaml path, shipped?) for a YAML path, a folder holding data.yaml, or a shipped name."""
    found = find_data_yaml(spec)
    if found is None:
        raise DataError(
            spec, f"no such dataset YAML, and no shipped dataset of that name (shipped: {shipped_datasets()})"
        )
    return found


def normalise_names(names: Any, where: str) -> list[str] | None:
    """Accept ``names`` as a list or as ``{id: name}`` with ids 0..C-1; return a list (or None)."""
    if names is None:
        return None
    if isinstance(names, dict):
        try:
            keyed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(where, f"names: keys must be integers, got {list(names)}") from None
        if sorted(keyed) != list(range(len(keyed))):
            raise DataError(where, f"names: ids must be 0..{len(keyed) - 1}, got {sorted(keyed)}")
        return [keyed[i] for i in range(len(keyed))]
    if isinstance(names, (list, tuple)) and all(isinstance(n, (str, int)) for n in names):
        return [str(n) for n in names]
    raise DataError(where, f"names must be a list or an {{id: name}} mapping, got {names!r}")


def load_data_config(path_or_name: str | os.PathLike | dict, overrides: dict | None = None) -> dict:
    """Load a dataset YAML into a dict with an absolute ``path`` and ``names`` as a list.

    ``path_or_name`` is a YAML file, a folder containing ``data.yaml``, the name of a shipped YAML
    (``synthetic``, ``nwpu-vhr10``), or an already loaded dict. ``path`` may use ``${VAR:-default}``;
    a relative ``path`` resolves against the YAML's own folder, except in shipped YAMLs (which live
    inside the installed package), where it resolves against the current working directory.
    ``overrides`` replace keys after loading; a relative ``path`` there is relative to the cwd.
    The loaded dict records its origin in ``_source`` (used in error messages).
    """
    if isinstance(path_or_name, dict):
        cfg = dict(path_or_name)
        source = str(cfg.get("_source", "<dataset config>"))
        base = Path.cwd()
    else:
        yaml_path, shipped = _find_data_yaml(os.fspath(path_or_name))
        source = str(yaml_path if shipped else yaml_path.resolve())  # absolute: checkpoints store it
        cfg = _read_yaml(yaml_path)
        base = Path.cwd() if shipped else yaml_path.parent
    for key, value in (overrides or {}).items():
        cfg[key] = str(Path(value).expanduser().resolve()) if key == "path" else value
    cfg["_source"] = source
    fmt = str(cfg.get("format") or "").lower()
    if fmt != "synthetic":
        root = _expand_env(str(cfg.get("path") or "."), source)
        cfg["path"] = str((base / Path(root).expanduser()).resolve())
    if not fmt:
        fmt, reason = detect_format(Path(cfg["path"]), cfg)
        if fmt is None:
            raise DataError(source, f"no `format` given and none recognised: {reason}; add format: "
                                    f"{' | '.join(FORMATS[:-1])}")  # fmt: skip
        cfg["_format_note"] = f"format {fmt}, detected from {reason}"
    if fmt not in FORMATS:
        raise DataError(source, f"format must be one of {FORMATS}, got {cfg.get('format')!r}")
    cfg["format"] = fmt
    try:
        check_data_keys(cfg)
    except ConfigKeyError as e:
        raise DataError(source, str(e)) from None
    cfg["names"] = normalise_names(cfg.get("names"), source)
    return cfg


def format_note(cfg: dict) -> str:
    """``"format yolo, detected from ..."`` or ``"format nwpu"``: how the dataset is being read."""
    return cfg.get("_format_note") or f"format {cfg['format']}"


def _read_yaml(path: Path) -> dict:
    """The dataset YAML through the package's one YAML reader; its errors become a DataError with the line."""
    shape = "a dataset YAML must be a mapping with path/train/val/names/format"
    try:
        data = load_yaml(path)
    except ValueError as err:
        parse_error = err.__cause__ or err.__context__  # the yaml.YAMLError behind load_yaml's message
        if not isinstance(parse_error, yaml.YAMLError):
            raise DataError(path, shape) from None
        mark = getattr(parse_error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise DataError(path, f"invalid YAML: {getattr(parse_error, 'problem', parse_error)}", line) from None
    if not data:  # load_yaml reads an empty file as {}
        raise DataError(path, shape)
    return data


def ensure_config(cfg: str | os.PathLike | dict) -> dict:
    """Accept a loaded config (from load_data_config) or anything load_data_config takes."""
    if isinstance(cfg, dict) and "_source" in cfg:
        return cfg
    return load_data_config(cfg)
