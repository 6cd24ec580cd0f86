"""Latency of one model in several runtimes, measured in one run: PyTorch, ONNX Runtime, OpenVINO.

    hmpe bench model=hmpe-n imgsz=640 backend=[torch,onnxruntime,openvino] threads=2 runs=20

The model is built once and put in deploy mode (``DetectionModel.fuse()``, unless ``fuse=false``);
the runtimes get it exported as :mod:`hmpe.engine.export` does (ONNX graph with the post-processing
inside; OpenVINO IR converted from it, f32 inference precision) into a temporary folder. Timing
follows :mod:`hmpe.engine.bench`: ``warmup`` untimed calls each, then ``runs`` rounds in which every
backend is timed once, in a rotated order (so load from other processes hits all alike); median,
p90 and minimum per backend. ``torch`` times the raw module forward (the bench convention); the
exported graphs also run the top-K post-processing (no NMS), a small fixed cost.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from hmpe.engine.bench import percentile
from hmpe.engine.export import onnx_to_openvino, runtime_session, write_onnx

BENCH_BACKENDS = ("torch", "onnxruntime", "openvino")

__all__ = ["BENCH_BACKENDS", "backend_latencies", "interleaved_times", "parse_backends"]


def parse_backends(value) -> list[str]:
    """``"torch"``, ``"onnxruntime,openvino"`` or a list -> validated list (order kept, no repeats)."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out: list[str] = []
    for b in (str(v).strip().lower() for v in items):
        if b not in BENCH_BACKENDS:
            raise ValueError(f"backend={b!r}: choose from {', '.join(BENCH_BACKENDS)} "
                             "(a list: backend=[torch,openvino])")
        if b not in out:
            out.append(b)
    return out


def interleaved_times(fns: dict[str, Callable[[], object]], warmup: int = 3, runs: int = 20) -> dict[str, list[float]]:
    """Seconds per call of each function: ``warmup`` untimed calls each, then ``runs`` rounds that time
    every function once in a rotated order."""
    names = list(fns)
    for n in names:
        for _ in range(warmup):
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def _summary(times: list[float]) -> dict:
    return {"latency_ms_median": statistics.median(times) * 1e3, "latency_ms_p90": percentile(times, 0.9) * 1e3,
            "latency_ms_min": min(times) * 1e3, "runs": len(times)}


@torch.no_grad()
def backend_latencies(model: nn.Module, postprocessor: nn.Module, imgsz: tuple[int, int], batch: int = 1,
                      backends: Sequence[str] = BENCH_BACKENDS, threads: int | None = None, warmup: int = 3,
                      runs: int = 20) -> dict[str, dict]:
    """``{backend: {latency_ms_median, latency_ms_p90, latency_ms_min, runs}}`` for the same eval-mode
    ``model`` on a random ``[batch,3,H,W]`` input (see the module docstring); CPU only."""
    backends = parse_backends(backends)
    model = model.cpu().eval()
    x = torch.rand(batch, 3, *imgsz, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    fns: dict[str, Callable[[], object]] = {}
    with tempfile.TemporaryDirectory(prefix="hmpe-bench-") as tmp:
        onnx_path = None
        if any(b != "torch" for b in backends):
            onnx_path, _ = write_onnx(model, postprocessor, imgsz, Path(tmp) / "model.onnx")
        for b in backends:
            if b == "torch":
                fns[b] = lambda: model(x)
            elif b == "onnxruntime":
                fns[b] = (lambda run: lambda: run(xn))(runtime_session(onnx_path, "onnxruntime", threads))
            else:
                xml = onnx_to_openvino(onnx_path, Path(tmp) / "model.xml")
                fns[b] = (lambda run: lambda: run(xn))(runtime_session(xml, "openvino", threads))
        times = interleaved_times(fns, warmup, runs)
    return {b: _summary(t) for b, t in times.items()}
