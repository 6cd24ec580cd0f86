"""Efficiency report: parameters, GFLOPs, latency, throughput, memory, per-part parameter split.

Conventions (the same for every model this library reports on, including the peers in
``python -m benchmarks.peers``):

* **GFLOPs** are counted by torch's ``FlopCounterMode`` on one forward of the module at batch 1,
  in eval mode under ``no_grad``. It counts 2 FLOPs per multiply-accumulate for convolutions and
  matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``, scaled-dot-product attention), which
  is the field's convention (the "GFLOPs" of RT-DETR, D-FINE and ultralytics tables are 2 x MACs).
  Element-wise ops, normalisation, softmax and ``grid_sample`` (deformable attention) are not
  counted, for every model alike.
* **Latency** is wall-clock time of ``model(x)`` (the raw module forward: no pre-processing, no
  post-processing, no NMS), eval mode, ``no_grad``, after ``warmup`` untimed calls; the report
  gives the median and the 90th percentile over ``runs`` timed calls, and throughput =
  batch / median.
* **Peak memory**: on CUDA, ``torch.cuda.max_memory_allocated`` during the timed forwards minus
  the memory held before them (activations and outputs; weights excluded). On CPU, the same
  quantity measured exactly with a dispatch-level tracker (:class:`PeakTensorMemory`): the peak of
  the bytes of all tensor storages created by the forward and still alive (weights and the input
  excluded). The process's peak RSS is reported beside it.
* **Parameter split**: parameters of each top-level child of the model (``backbone``,
  ``heatmap``, ``encoder``, ``decoder`` for hmpe detectors), in millions and in MB of fp32
  weights (MB = 2**20 bytes, 4 bytes per parameter).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from hmpe.utils.runtime import cpu_features

GFLOPS_CONVENTION = ("FlopCounterMode, batch 1: 2 FLOPs per multiply-accumulate of convs and matmuls "
                     "(element-wise ops, softmax, grid_sample not counted)")
MB = 2**20


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_split(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level part (backbone, heatmap, encoder, decoder), plus ``total``."""
    out = {name: count_params(child) for name, child in model.named_children()}
    out = {k: v for k, v in out.items() if v > 0}
    out["total"] = count_params(model)
    return out


def params_mb(n: int, bytes_per_param: int = 4) -> float:
    """Size of ``n`` parameters in MB (2**20 bytes), fp32 by default."""
    return n * bytes_per_param / MB


def _call(model: nn.Module, x: torch.Tensor, forward: Callable | None):
    return forward(model, x) if forward is not None else model(x)


@torch.no_grad()
def count_gflops(model: nn.Module, x: torch.Tensor, forward: Callable | None = None) -> float:
    """GFLOPs of one forward of ``model`` on ``x`` (see the module docstring for the convention).

    ``forward(model, x)`` replaces ``model(x)`` for modules with another calling convention
    (e.g. HF models take ``pixel_values=x``).
    """
    model.eval()
    with FlopCounterMode(display=False) as fc:
        _call(model, x, forward)
    return fc.get_total_flops() / 1e9


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storages created under this mode and still alive (device-independent).

    Every op's outputs are recorded by storage (views of one storage count once); a weak-reference
    finaliser subtracts a storage when it is freed. Storages that exist before (weights, inputs) are
    passed in ``exclude`` and never counted, nor are views of them.
    """

    def __init__(self, exclude: list[torch.Tensor] | None = None):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, int] = {}
        self._excluded = {t.untyped_storage().data_ptr() for t in (exclude or []) if t.numel()}

    def _free(self, key: int) -> None:
        self.live -= self._seen.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            n = st.nbytes()
            if n == 0 or key in self._seen or key in self._excluded:
                continue
            self._seen[key] = n
            self.live += n
            weakref.finalize(st, self._free, key)
        self.peak = max(self.peak, self.live)
        return out


@torch.no_grad()
def peak_forward_memory(model: nn.Module, x: torch.Tensor, forward: Callable | None = None) -> float:
    """Peak MB of tensors allocated by one forward and alive at once (weights and input excluded)."""
    model.eval()
    exclude = [*model.parameters(), *model.buffers(), x]
    with PeakTensorMemory(exclude) as tracker:
        out = _call(model, x, forward)
    del out
    return tracker.peak / MB


@torch.no_grad()
def time_forward(fn, warmup: int = 3, runs: int = 20) -> list[float]:
    """Wall-clock seconds of ``fn()`` for ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 1]), as numpy's default."""
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def imgsz_hw(imgsz: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(imgsz, int):
        return imgsz, imgsz
    h, w = imgsz
    return int(h), int(w)


def peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def benchmark_model(model: nn.Module, imgsz: int | tuple[int, int] = 640, batch: int = 1,
                    device: str | torch.device = "cpu", warmup: int = 3, runs: int = 20,
                    forward: Callable | None = None, memory: bool = True) -> dict:
    """Parameters, GFLOPs, latency (median / p90), throughput, peak memory and parameter split.

    ``forward(model, x)`` replaces ``model(x)`` (see :func:`count_gflops`). GFLOPs are always for
    batch 1; latency, throughput and memory for ``batch``.
    """
    h, w = imgsz_hw(imgsz)
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.rand(batch, 3, h, w, device=device)
    gflops = count_gflops(model, x[:1], forward)

    def fn():
        _call(model, x, forward)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = time_forward(fn, warmup, runs)
    med = statistics.median(times)
    split = param_split(model)
    out = {
        "imgsz": f"{h}x{w}", "batch": batch, "device": str(device), "threads": torch.get_num_threads(),
        "warmup": warmup, "runs": runs,
        "params": count_params(model), "gflops": gflops, "gflops_convention": GFLOPS_CONVENTION,
        "latency_ms_median": med * 1e3, "latency_ms_p90": percentile(times, 0.9) * 1e3,
        "latency_ms_min": min(times) * 1e3,
        "throughput_img_s": batch / med,
        "split": split,
        "split_mb": {k: params_mb(v) for k, v in split.items()},
    }
    if memory:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            with torch.no_grad():
                _call(model, x, forward)
            torch.cuda.synchronize(device)
            out["peak_mem_mb"] = (torch.cuda.max_memory_allocated(device) - base) / MB
            out["peak_mem_kind"] = "CUDA allocated during one forward (weights excluded)"
        else:
            out["peak_mem_mb"] = peak_forward_memory(model, x, forward)
            out["peak_mem_kind"] = "tensors alive at once during one forward (weights and input excluded)"
    rss = peak_rss_mb()
    if rss is not None and device.type == "cpu":
        out["peak_rss_mb"] = rss
    return out


def environment() -> dict:
    """Machine and library facts to print beside any benchmark figure; ``cpu``: the model name and its vector
    instruction sets (:func:`~hmpe.utils.runtime.cpu_features`), e.g. ``AMD EPYC (AVX2)``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = {"cpu": f"{cpu} ({cpu_features()})", "logical_cpus": os.cpu_count(), "torch": torch.__version__,
           "python": platform.python_version(), "torch_threads": torch.get_num_threads()}
    try:
        env["load_avg"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
    return env


def format_report(name: str, r: dict) -> str:
    split = ", ".join(f"{k} {v / 1e6:.2f}M ({params_mb(v):.2f} MB)" for k, v in r["split"].items() if k != "total")
    mem = []
    if "peak_mem_mb" in r:
        mem.append(f"peak memory {r['peak_mem_mb']:.0f} MB ({r['peak_mem_kind']})")
    if "peak_rss_mb" in r:
        mem.append(f"process peak RSS {r['peak_rss_mb']:.0f} MB")
    return (f"{name}: {r['params'] / 1e6:.2f}M params ({params_mb(r['params']):.2f} MB fp32), "
            f"{r['gflops']:.2f} GFLOPs at {r['imgsz']} (batch 1; 2 x MACs, FlopCounterMode)\n"
            f"  latency median {r['latency_ms_median']:.1f} ms / p90 {r['latency_ms_p90']:.1f} ms "
            f"(batch {r['batch']}, {r['device']}, {r['threads']} threads, {r['warmup']} warm-up + "
            f"{r['runs']} timed runs), throughput {r['throughput_img_s']:.1f} img/s\n"
            + (f"  {'; '.join(mem)}\n" if mem else "")
            + f"  parameter split: {split} (MB = fp32 weights, 2**20 bytes)")


def save_report(path: str | Path, reports: list[dict]) -> Path:
    """Write reports (one per model / size / batch) with the environment as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"environment": environment(), "results": reports}, f, indent=2, default=str)
    return path
