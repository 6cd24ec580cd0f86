"""Efficiency report: parameters, GFLOPs, latency, throughput, memory, per-part parameter split.

GFLOPs follow the field's convention (2 x multiply-accumulates), which is what torch's
FlopCounterMode counts for matmuls and convolutions.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_split(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level part (backbone, heatmap, encoder, decoder)."""
    out = {name: count_params(child) for name, child in model.named_children()}
    out["total"] = count_params(model)
    return out


@torch.no_grad()
def count_gflops(model: nn.Module, x: torch.Tensor) -> float:
    model.eval()
    with FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() / 1e9


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
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def benchmark_model(model: nn.Module, imgsz: int | tuple[int, int] = 640, batch: int = 1,
                    device: str | torch.device = "cpu", warmup: int = 3, runs: int = 20) -> dict:
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.rand(batch, 3, h, w, device=device)
    gflops = count_gflops(model, x[:1])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

        def fn():
            model(x)
            torch.cuda.synchronize(device)
    else:
        def fn():
            model(x)
    times = time_forward(fn, warmup, runs)
    med = statistics.median(times)
    out = {
        "imgsz": f"{h}x{w}", "batch": batch, "device": str(device),
        "params": count_params(model), "gflops": gflops,
        "latency_ms_median": med * 1e3, "latency_ms_p90": percentile(times, 0.9) * 1e3,
        "throughput_img_s": batch / med,
        "split": param_split(model),
    }
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource

        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def format_report(name: str, r: dict) -> str:
    split = ", ".join(f"{k} {v / 1e6:.2f}M ({v * 4 / 2**20:.1f} MB fp32)" for k, v in r["split"].items()
                      if k != "total")
    mem = f"peak GPU memory {r['peak_mem_mb']:.0f} MB" if "peak_mem_mb" in r else f"peak RSS {r['peak_rss_mb']:.0f} MB"
    return (f"{name}: {r['params'] / 1e6:.2f}M params, {r['gflops']:.2f} GFLOPs at {r['imgsz']} (batch 1), "
            f"latency median {r['latency_ms_median']:.1f} ms / p90 {r['latency_ms_p90']:.1f} ms "
            f"(batch {r['batch']}, {r['device']}), throughput {r['throughput_img_s']:.1f} img/s, {mem}\n"
            f"  parameter split: {split}")
