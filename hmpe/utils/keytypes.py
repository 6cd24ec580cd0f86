"""The value types of the key table (:mod:`hmpe.utils.keys`, :mod:`hmpe.utils.model_keys`): what each key's value
may be, and the one check of a value against its type; :class:`Key`, the declaration of one key.

A key declares a :class:`Type` built by one of the functions below (``Int(">= 1")``, ``Num("[0, 1]")``,
``Choice("nms", "wbf")``, ``Weights(null=True)``, ...). ``Type.problem(value)`` is None when the value fits,
else the words that end a one-line error (``expected an integer >= 1``); :func:`hmpe.utils.keys.check_value`
names the key and raises. Rules: integers are ints (not ``2.5``, not ``true``, not text); numbers accept ints
and reject NaN and infinities; switches are YAML booleans only; path-like keys take text or a ``PathLike``.
The existence kinds (``model``, ``data``, ``weights``, ``file``) look in the working directory and the
package's shipped folders (:mod:`hmpe.utils.shipped`), torch-free, so the command line can refuse a value
before anything loads; ``files=False`` checks only their form (a README read without its files).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmpe.utils import shipped

#: Input sizes must be multiples of the largest feature stride (S5, stride 32 in every preset): other sizes
#: are floored level by level and the ONNX export cannot trace them.
MAX_STRIDE = 32

_DEVICE = re.compile(r"(auto|cpu|cuda|cuda:\d+)")
#: kinds whose value is text or a path: a number typed for one stays the text typed (``name=2``)
TEXT_KINDS = ("text", "model", "data", "weights", "file")


@dataclass(frozen=True)
class Type:
    """A key's type: ``kind`` (int, num, bool, text, choice, list, one_or_list, size, hw, window, device,
    switch, model, data, weights, file), a range ``lo``/``hi`` (``lo_open``/``hi_open``: bound excluded),
    ``choices``, ``item`` (the type of a list's items) and ``null`` (None allowed)."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    item: Type | None = None
    null: bool = False
    what: str = ""  # text kind: what the value names ("a folder", "an address")

    def describe(self) -> str:
        """What fits, as the end of ``expected ...``."""
        if self.kind in ("int", "num"):
            noun = "an integer" if self.kind == "int" else "a number"
            if self.lo is not None and self.hi is not None:
                return f"{noun} in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}" \
                       f"{')' if self.hi_open else ']'}"
            if self.lo is not None:
                return f"{noun} {'>' if self.lo_open else '>='} {_num(self.lo)}"
            return f"{noun} {'<' if self.hi_open else '<='} {_num(self.hi)}" if self.hi is not None else noun
        if self.kind == "choice":
            return _either([show(c) for c in self.choices])
        if self.kind == "list":
            return f"a non-empty list, each {self.item.describe()}"
        if self.kind == "one_or_list":
            return f"{self.item.describe()}, or a list of them"
        if self.kind == "device":
            return _either([*self.choices, "cpu", "cuda", "cuda:N"])
        return _WORDS[self.kind] if self.kind in _WORDS else self.what or "a name or path"

    def problem(self, value: Any, files: bool = True) -> str | None:
        """None when ``value`` fits; else ``expected ...`` (or the kind's own reason)."""
        if value is None:
            return None if self.null else f"expected {self.describe()}"
        reason = _CHECKS[self.kind](self, value, files) if self.kind in _CHECKS else _plain(self, value)
        if reason is None:
            return None
        if reason:
            return reason
        what = self.describe()
        return f"expected {what}{(', or null' if ' or ' in what else ' or null') if self.null else ''}"


@dataclass(frozen=True)
class Key:
    """One key a user can type: its name, default, one-line meaning and the type of its value."""

    name: str
    default: Any = None
    help: str = ""
    type: Type | None = None  # every task key has one; a model key without one is not checked


_WORDS = {"bool": "true or false", "size": f"an image size, a positive multiple of {MAX_STRIDE} such as 640",
          "hw": f"an image size (a multiple of {MAX_STRIDE}), HxW or [h, w]",
          "window": "[start, stop], fractions of the epochs with 0 <= start < stop <= 1, e.g. [0.1, 0.8]",
          "switch": "true, false or a mapping of switches", "model": "a preset name or a model YAML file",
          "data": "a dataset YAML, a folder holding data.yaml or a shipped name",
          "weights": "a checkpoint, a pretrained folder or a shipped name", "file": "an existing file"}


def _either(words: list[str]) -> str:
    """``a, b or c``."""
    return f"{', '.join(words[:-1])} or {words[-1]}" if len(words) > 1 else words[0]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def show(value: Any) -> str:
    """A value as the user would type it (YAML spelling, one line)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value.isprintable() else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{show(k)}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def is_int(value: Any) -> bool:
    """An integer, NumPy's included; not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number (an int, a float, NumPy's); not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _in_range(t: Type, x: float) -> bool:
    lo_ok = t.lo is None or (x > t.lo if t.lo_open else x >= t.lo)
    return lo_ok and (t.hi is None or (x < t.hi if t.hi_open else x <= t.hi))


def _plain(t: Type, value: Any) -> str | None:
    """int / num / bool / text / choice / list kinds: None (fits) or "" (the generic ``expected ...``)."""
    if t.kind == "int":
        ok = is_int(value) and _in_range(t, value)
    elif t.kind == "num":
        ok = is_number(value) and _in_range(t, value)
    elif t.kind == "bool":
        ok = isinstance(value, bool) or type(value).__name__ == "bool_"  # NumPy's too
    elif t.kind == "text":
        ok = _pathlike(value)
    elif t.kind == "choice":  # by type too: 0 is not false, 1 is not true
        ok = any(type(value) is type(c) and value == c for c in t.choices)
    elif t.kind == "list":
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(t.item.problem(v) is None for v in value)
    elif t.kind == "one_or_list":
        ok = t.item.problem(value) is None or Type("list", item=t.item).problem(value) is None
    else:
        raise ValueError(f"key type {t.kind!r}: not a kind of hmpe.utils.keytypes")
    return None if ok else ""


def size_problem(value: Any, hw: bool = False) -> str | None:
    """One input size as typed -> None, or why not: a positive multiple of :data:`MAX_STRIDE`; with ``hw`` also
    ``HxW`` text or ``[h, w]``. A bad multiple names the nearest valid sizes; a list of sizes names the keys
    that take several (``multi_scale`` to train, ``sizes`` to bench)."""
    if hw and isinstance(value, str):
        values = value.lower().split("x")
    elif hw and isinstance(value, (list, tuple)) and len(value) == 2:
        values = list(value)
    else:
        values = [value]
    for v in values:
        n = int(v) if isinstance(v, str) and v.strip().isdigit() else v
        if not is_int(n):
            several = isinstance(value, (list, tuple)) and values == [value]  # not one [h, w]
            return (f"not an image size (one integer such as 640{', HxW or [h, w]' if hw else ''})"
                    + ("; several sizes: multi_scale=[...] (train) or sizes=[...] (bench)" if several else ""))
        if n <= 0 or n % MAX_STRIDE:
            lo = max(MAX_STRIDE, n // MAX_STRIDE * MAX_STRIDE)
            return (f"sizes must be multiples of {MAX_STRIDE} (the model's largest stride); use {lo} or "
                    f"{lo + MAX_STRIDE}")
    return None


def parse_hw(value: Any) -> tuple[int, int]:
    """``(h, w)`` of one input size as :func:`size_problem` (``hw=True``) accepts it: ``640``, ``"512x640"``,
    ``[512, 640]``."""
    if isinstance(value, str) and "x" in value.lower():
        value = value.lower().split("x")
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"imgsz={show(value)}: expected one size, HxW or [h, w]")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def window_problem(value: Any) -> str | None:
    """``[start, stop]`` with ``0 <= start < stop <= 1`` (fractions of the run) -> None, else ""."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value) and \
        0.0 <= value[0] < value[1] <= 1.0
    return None if ok else ""


def _pathlike(value: Any) -> bool:
    return isinstance(value, os.PathLike) or (isinstance(value, str) and bool(value.strip()))


def _device(t: Type, value: Any, files: bool) -> str | None:
    text = value if isinstance(value, str) else str(value) if type(value).__name__ == "device" else ""
    ok = _DEVICE.fullmatch(text) is not None and (text != "auto" or "auto" in t.choices)
    return None if ok else ""


def _model(t: Type, value: Any, files: bool) -> str | None:
    if isinstance(value, dict):
        return None
    if not _pathlike(value):
        return ""
    if not files or shipped.model_yaml(os.fspath(value)) is not None:
        return None
    hint = f"; to start from a checkpoint use weights={show(value)}" if str(value).endswith(".pt") else ""
    return (f"not a preset ({', '.join(shipped.model_presets())}; hmpe cfg lists them) nor a model YAML file "
            f"(.yaml){hint}")


def _data(t: Type, value: Any, files: bool) -> str | None:
    if isinstance(value, dict):
        return None
    if not _pathlike(value):
        return ""
    if not files or shipped.find_data_yaml(os.fspath(value)) is not None:
        return None
    return (f"no such dataset YAML (nor a folder holding data.yaml), and no shipped dataset of that name "
            f"(shipped: {', '.join(shipped.shipped_datasets())})")


def _weights(t: Type, value: Any, files: bool) -> str | None:
    if not _pathlike(value):
        return ""
    if not files or shipped.weights_exist(value):
        return None
    return (f"no such file or folder, and no shipped weights of that name "
            f"(shipped: {', '.join(shipped.shipped_weights()) or 'none'})")


def _file(t: Type, value: Any, files: bool) -> str | None:
    if not _pathlike(value):
        return ""
    return None if not files or Path(value).expanduser().is_file() else "no such file"


_CHECKS = {
    "size": lambda t, v, files: size_problem(v), "hw": lambda t, v, files: size_problem(v, hw=True),
    "window": lambda t, v, files: window_problem(v), "device": _device,
    "switch": lambda t, v, files: None if isinstance(v, (bool, dict)) else "",
    "model": _model, "data": _data, "weights": _weights, "file": _file,
}


# ------------------------------------------------------------------------------------------------ constructors
def _bounds(spec: str) -> dict:
    """``">= 1"``, ``"> 0"``, ``"<= 1"``, ``"[0, 1]"``, ``"[0, 1)"``, ``"(0, 1]"`` -> Type range fields."""
    s = spec.replace(" ", "")
    for op in (">=", "<=", ">", "<"):
        if s.startswith(op):
            x, is_open = float(s[len(op):]), len(op) == 1
            return {"lo": x, "lo_open": is_open} if op[0] == ">" else {"hi": x, "hi_open": is_open}
    lo, hi = s[1:-1].split(",")
    return {"lo": float(lo), "hi": float(hi), "lo_open": s[0] == "(", "hi_open": s[-1] == ")"}


def Int(spec: str = "", null: bool = False) -> Type:  # noqa: N802 - reads as a type in the table
    return Type("int", null=null, **(_bounds(spec) if spec else {}))


def Num(spec: str = "", null: bool = False) -> Type:  # noqa: N802
    return Type("num", null=null, **(_bounds(spec) if spec else {}))


def Bool(null: bool = False) -> Type:  # noqa: N802
    return Type("bool", null=null)


def Text(what: str = "", null: bool = False) -> Type:  # noqa: N802
    return Type("text", what=what, null=null)


def Choice(*choices: Any, null: bool = False) -> Type:  # noqa: N802
    return Type("choice", choices=choices, null=null)


def ListOf(item: Type, null: bool = False) -> Type:  # noqa: N802
    return Type("list", item=item, null=null)


def OneOrList(item: Type, null: bool = False) -> Type:  # noqa: N802
    return Type("one_or_list", item=item, null=null)


def Kind(kind: str, null: bool = False) -> Type:  # noqa: N802 - size, hw, window, switch, model, data, ...
    if kind not in _CHECKS or kind == "device":
        raise ValueError(f"key type {kind!r}: not one of {', '.join(k for k in _CHECKS if k != 'device')}")
    return Type(kind, null=null)


def Device(auto: bool = True) -> Type:  # noqa: N802 - what hmpe.utils.runtime.select_device takes
    return Type("device", choices=("auto",) if auto else ())
