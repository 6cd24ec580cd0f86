"""Keys renamed so that no key has two meanings, and the one path that still takes the old spelling.

:data:`RENAMED` (beside the key table, :mod:`hmpe.utils.keys`) lists each old key with its new name.
:func:`upgrade_model_config` (a model config: preset, YAML, checkpoint) and :func:`upgrade_args` (the keys of
``hmpe TASK``, dotted model keys and section mappings included) return the mapping with every old key under its
new name. Where a user typed the old name (a command line, Python keywords, a model YAML or dict) a one-line
deprecation warning goes to stderr, once per process (``warning: heatmap.alpha is deprecated: use
heatmap.cam_weights``); a stored config (a checkpoint, shipped weights' ``config.json``) is upgraded silently:
nobody typed it there. The old and the new name of one key given together are an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from hmpe.utils.keytypes import show


@dataclass(frozen=True)
class Renamed:
    old: str  # a model key ``section.key``, or (with ``task``) a task key
    new: str
    task: str | None = None  # None: a model key, wherever model configs are read (YAML, train / bench keys)
    lists: bool = False  # only a list value moved (bench imgsz=[320,640] -> sizes=[320,640])


#: ``alpha`` was the Grad-CAM++ weights of eq. 1 in ``heatmap``, the focal alpha in ``matcher`` and the varifocal
#: alpha in ``loss`` (``gamma`` the focal / varifocal exponent); an ``imgsz`` list meant one report per size in
#: bench and ``[h, w]`` in export; bench's ``save`` was a file where every other ``save`` is a switch. The paper's notation stays in the keys' help and in docs/method.md.
RENAMED = (
    Renamed("heatmap.alpha", "heatmap.cam_weights"),  # eq. 1's alpha: gradcam++ | design
    Renamed("matcher.alpha", "matcher.focal_alpha"),  # the focal class cost of the Hungarian matching
    Renamed("matcher.gamma", "matcher.focal_gamma"),
    Renamed("loss.alpha", "loss.vfl_alpha"),  # varifocal loss: negatives weighted alpha * p^gamma
    Renamed("loss.gamma", "loss.vfl_gamma"),
    Renamed("imgsz", "sizes", task="bench", lists=True),  # imgsz: one input size in every task
    Renamed("save", "out", task="bench"),  # save: a switch in predict / heatmap; a file here, as export's out=
)
_MODEL = {r.old: r.new for r in RENAMED if r.task is None}
_warned: set[str] = set()  # lines printed by this process: a command line is read more than once


def deprecated(old: str, new: str, where: str | None = None) -> None:
    """``warning: OLD is deprecated: use NEW`` on stderr, once per process."""
    line = f"warning: {old} is deprecated: use {new}" + (f" (in {where})" if where else "")
    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr)


def _section(section: str, value: dict, where: str | None, warn: bool, error: type[Exception]) -> dict:
    """The keys of one model section (``heatmap: {alpha: design}``) under their new names."""
    if not any(f"{section}.{k}" in _MODEL for k in value):
        return value
    out = {}
    for key, v in value.items():
        new = _MODEL.get(f"{section}.{key}")
        if new is not None:
            sub = new.split(".", 1)[1]
            if sub in value:
                raise error(f"{section}.{key} and {new} both given{f' in {where}' if where else ''}; "
                            f"give {new} only ({section}.{key} is its old name)")
            if warn:
                deprecated(f"{section}.{key}", new, where)
            key = sub
        out[key] = v
    return out


def upgrade_model_config(cfg: dict, where: str | None = None, error: type[Exception] = ValueError) -> dict:
    """``cfg`` (a model config) with each renamed key under its new name: a new dict where one moved, else
    ``cfg`` itself. ``where``: the file (or ``the model config``) a user wrote it in, named by one warning per
    old key; None: a stored config (checkpoint, shipped weights), upgraded silently."""
    out = cfg
    for section, value in cfg.items():
        if isinstance(value, dict):
            moved = _section(section, value, where, where is not None, error)
            if moved is not value:
                out = {**out, section: moved}
    return out


def upgrade_args(task: str | None, args: dict, model: bool = True, warn: bool = True,
                 error: type[Exception] = ValueError) -> dict:
    """The arguments of ``hmpe TASK`` (None: model overrides only) with each renamed key under its new name,
    in their order; ``model``: the task takes model keys (``heatmap.alpha=design``, ``heatmap={alpha: ...}``).
    ``warn``: a one-line warning per old key (typed by the user); an old key beside its new one: ``error``."""
    out: dict = {}
    for key, value in args.items():
        new, old_text, new_text = key, key, None
        if model and key in _MODEL:
            new = new_text = _MODEL[key]
        for r in RENAMED:
            if r.task is not None and r.task == task and r.old == key and (not r.lists or isinstance(value, list)):
                new, old_text, new_text = r.new, f"{key}={show(value)}", f"{r.new}={show(value)}"
        if model and isinstance(value, dict):
            value = _section(key, value, None, warn, error)
        if new_text is not None:
            if new in args or new in out:
                raise error(f"{key} and {new} both given; give {new} only ({key} is its old name)")
            if warn:
                deprecated(old_text, new_text)
        out[new] = value
    return out


def renamed_lines() -> list[str]:
    """``old -> new`` of every rename (``hmpe cfg``)."""
    return [f"{r.old}{'=[...]' if r.lists else ''} -> {r.new}{'=[...]' if r.lists else ''}"
            f"{f' (hmpe {r.task})' if r.task else ''}" for r in RENAMED]


__all__ = ["RENAMED", "Renamed", "deprecated", "renamed_lines", "upgrade_args", "upgrade_model_config"]
