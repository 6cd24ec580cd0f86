"""Runtime helpers shared by the trainer, the Python API and the command line: device choice, seeding,
autocast dtype and run folders. One definition each; nothing here knows about models or data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

__all__ = ["AMP_DTYPES", "RunDirError", "amp_dtype", "cpu_has_native_bf16", "create_run_dir", "increment_run_dir",
           "seed_everything", "select_device"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (NumPy's takes the seed modulo 2**32)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(spec: str | None = "auto") -> torch.device:
    """``auto`` / None / "": CUDA when available, else the CPU; otherwise ``torch.device(spec)``, with an error
    naming the key when CUDA is asked for and absent."""
    if spec in (None, "auto", ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec}: no CUDA device here; use device=cpu")
    return dev


def increment_run_dir(project: str | Path, task: str, name: str | None, exist_ok: bool = False) -> Path:
    """runs/<task>/<name>, or exp, exp2, ... when no name is given or the name is taken. Creates nothing."""
    base = Path(project) / task
    stem = name or "exp"
    path = base / stem
    if exist_ok or not path.exists():
        return path
    i = 2
    while (base / f"{stem}{i}").exists():
        i += 1
    return base / f"{stem}{i}"


class RunDirError(OSError):
    """An output folder that cannot be created or written (the command line: one line, exit status 1)."""


def create_run_dir(path: str | Path, advice: str | None = None) -> Path:
    """Make the output folder ``path`` (parents too); one that cannot be created or written to is a
    :class:`RunDirError` naming it, followed by ``advice`` (what to pass instead; default: ``project=`` and
    ``name=``)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        writable = os.access(path, os.W_OK | os.X_OK)
        reason = "" if writable else "not writable"
    except OSError as e:
        reason = e.strerror or str(e)
    if reason:
        raise RunDirError(f"output folder {path}: cannot be created or written to ({reason}); "
                          f"{advice or 'choose a writable folder with project=DIR (and name=NAME)'}")
    return path


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the amp= names of the autocast dtypes


def _cpu_probe(name: str) -> bool:
    """``torch.cpu.<name>()``; False where this torch has no such probe."""
    return getattr(torch.cpu, name, lambda: False)()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), where oneDNN's bf16 kernels are
    faster than fp32; elsewhere torch emulates bf16 and autocast only slows training down."""
    return any(_cpu_probe(name) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


#: torch's CPU feature probes (``torch.cpu._is_*_supported``) and the names result files give them, widest first
CPU_FEATURES = (("_is_avx512_supported", "AVX-512"), ("_is_avx2_supported", "AVX2"), ("_is_vnni_supported", "VNNI"),
                ("_is_avx512_bf16_supported", "AVX512-BF16"), ("_is_amx_tile_supported", "AMX"))


def cpu_features() -> str:
    """The vector instruction sets of this CPU that decide its speed in every benchmark, e.g. ``AVX2`` or
    ``AVX-512, VNNI, AVX512-BF16, AMX`` (AVX2 is left out beside AVX-512; VNNI: 8-bit dot products without
    int16 saturation; AVX512-BF16 / AMX: native bf16). Elsewhere (e.g. ARM) torch's kernel level."""
    names = [name for probe, name in CPU_FEATURES if _cpu_probe(probe)]
    if "AVX-512" in names:  # every AVX-512 CPU has AVX2 as well
        names = [n for n in names if n != "AVX2"]
    return ", ".join(names) or torch.backends.cpu.get_cpu_capability()


def amp_dtype(spec, device: torch.device):
    """None (fp32), torch.bfloat16 or torch.float16. ``auto``: bf16 on CUDA and on CPUs with native bf16
    (:func:`cpu_has_native_bf16`), else fp32; ``bf16`` and ``fp16`` autocast on any device (the CPU through
    torch's CPU autocast, emulated and slow without native support, but the same code paths)."""
    if spec in (False, None, "false", "off"):
        return None
    if spec in ("auto", True):
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else None
    if spec in AMP_DTYPES:
        return AMP_DTYPES[spec]
    raise ValueError(f"amp={spec!r}: expected auto, bf16, fp16 or false")
