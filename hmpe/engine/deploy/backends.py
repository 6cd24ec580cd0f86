"""Latency of one model in several runtimes, measured in one run: PyTorch, ONNX Runtime, OpenVINO, fp32 or INT8.

    hmpe bench model=hmpe-n imgsz=640 backend=[torch,onnxruntime,openvino] threads=2 runs=20
    hmpe bench model=hmpe-n imgsz=640 backend=[onnxruntime,onnxruntime-int8,openvino,openvino-int8] threads=2

The model is built once and put in deploy mode (``DetectionModel.fuse()``, unless ``fuse=false``);
the runtimes get it exported as :mod:`hmpe.engine.deploy.export` does (ONNX graph with the post-processing
inside; OpenVINO IR converted from it, f32 inference precision) into a temporary folder. Timing
follows :mod:`hmpe.engine.deploy.bench`: ``warmup`` untimed calls each, then ``runs`` rounds in which every
backend is timed once, in a rotated order (so load from other processes hits all alike), each timed call right
after one untimed call of the same backend (``SETTLE``: a runtime leaves its threads spinning for a while after a
call, which the next backend's time would otherwise include); median, p90 and minimum per backend. ``torch``
times the raw module forward (the bench convention); the exported graphs also run the top-K post-processing
(no NMS), a small fixed cost.

    hmpe bench files=[best.onnx,best_int8.onnx,best_openvino/best.xml] threads=2 runs=20   # files you exported

``files=`` times exported files as they are (:func:`file_latencies`): each in its runtime at its exported size.

``onnxruntime-int8`` / ``openvino-int8`` quantize that graph as ``hmpe export int8=true`` does
(:mod:`hmpe.engine.deploy.quantize`), calibrated on :data:`INT8_CALIB` random images: the bench model has random
weights, so these figures are speed only (the int8 kernels cost the same whatever the ranges); the accuracy
of an INT8 file is what ``hmpe export ... int8=true`` measures on a dataset.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hmpe.engine.deploy.bench import percentile
from hmpe.engine.deploy.export import onnx_to_openvino, runtime_session, write_onnx
from hmpe.engine.deploy.quantize import quantize_onnx, quantize_openvino, require_int8
from hmpe.engine.deploy.runtime import EXPORTED_SUFFIXES, exported_metadata

BENCH_BACKENDS = ("torch", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
INT8_CALIB = 8  # random calibration images of the int8 backends (speed only: see the module docstring)
SETTLE = 1  # untimed calls of a backend right before each timed one (see the module docstring)

__all__ = ["BENCH_BACKENDS", "INT8_CALIB", "SETTLE", "backend_latencies", "file_latencies", "interleaved_times",
           "parse_backends"]


def parse_backends(value) -> list[str]:
    """``"torch"``, ``"onnxruntime,openvino"`` or a list -> validated list (order kept, no repeats)."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out: list[str] = []
    for b in (str(v).strip().lower() for v in items):
        if b not in BENCH_BACKENDS:
            raise ValueError(f"backend={b!r}: choose from {', '.join(BENCH_BACKENDS)} "
                             "(a list: backend=[torch,openvino,openvino-int8])")
        if b not in out:
            out.append(b)
    return out


def interleaved_times(fns: dict[str, Callable[[], object]], warmup: int = 3, runs: int = 20,
                      settle: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each function: ``warmup`` untimed calls each, then ``runs`` rounds that time
    every function once in a rotated order.

    ``settle`` untimed calls of the same function precede each timed one: a runtime session leaves its threads
    spinning for a while after a call (ONNX Runtime's and OpenVINO's do) and evicts the caches, so that with many
    sessions the timed call would also pay for its predecessor. With ``settle >= 1`` each time is that of a
    session running alone, and the rotation still spreads any drift in machine load over all of them."""
    names = list(fns)
    for n in names:
        for _ in range(warmup):
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        for n in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(settle):
                fns[n]()
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def _summary(times: list[float]) -> dict:
    return {"latency_ms_median": statistics.median(times) * 1e3, "latency_ms_p90": percentile(times, 0.9) * 1e3,
            "latency_ms_min": min(times) * 1e3, "runs": len(times)}


def _runtime_files(model: nn.Module, postprocessor: nn.Module, imgsz: tuple[int, int], backends: list[str],
                   tmp: Path) -> dict[str, tuple[str, Path]]:
    """``{backend: (runtime, file)}`` for every backend but torch, exported (and quantized) into ``tmp``."""
    int8 = [b for b in backends if b.endswith("-int8")]
    for b in int8:  # before any work: a missing quantizer is one line naming the extra
        require_int8("onnx" if b == "onnxruntime-int8" else "openvino")
    onnx_path, _ = write_onnx(model, postprocessor, imgsz, tmp / "model.onnx")
    files: dict[str, tuple[str, Path]] = {"onnxruntime": ("onnxruntime", onnx_path)}
    if any(b.startswith("openvino") for b in backends):
        files["openvino"] = ("openvino", onnx_to_openvino(onnx_path, tmp / "model.xml"))
    g = np.random.default_rng(0)
    calib = [g.random((1, 3, *imgsz), dtype=np.float32) for _ in range(INT8_CALIB if int8 else 0)]
    for b in int8:
        runtime, fp32 = files[b.removesuffix("-int8")]
        quantize = quantize_onnx if runtime == "onnxruntime" else quantize_openvino
        files[b] = (runtime, quantize(fp32, tmp / f"{b}{fp32.suffix}", calib))
    return files


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
        files = _runtime_files(model, postprocessor, imgsz, backends, Path(tmp)) if backends != ["torch"] else {}
        for b in backends:
            if b == "torch":
                fns[b] = lambda: model(x)
            else:
                fns[b] = (lambda run: lambda: run(xn))(runtime_session(files[b][1], files[b][0], threads))
        times = interleaved_times(fns, warmup, runs, settle=SETTLE)
    return {b: _summary(t) for b, t in times.items()}


def file_latencies(paths: Sequence[str | Path], batch: int = 1, threads: int | None = None, warmup: int = 3,
                   runs: int = 20) -> dict[str, dict]:
    """``{path: {imgsz, runtime, latency_ms_median, latency_ms_p90, latency_ms_min, runs}}`` of exported files
    (``hmpe export``: ``.onnx`` in ONNX Runtime, ``.xml`` in OpenVINO), each on a random ``[batch,3,H,W]`` input at
    its exported size, timed in the same interleaved rounds (see the module docstring); CPU only."""
    fns: dict[str, Callable[[], object]] = {}
    info: dict[str, dict] = {}
    for path in map(str, paths):
        h, w = (int(v) for v in json.loads(exported_metadata(path)["imgsz"]))
        runtime = EXPORTED_SUFFIXES[Path(path).suffix.lower()]
        x = np.random.default_rng(0).random((batch, 3, h, w), dtype=np.float32)
        fns[path] = (lambda run, x: lambda: run(x))(runtime_session(path, runtime, threads), x)
        info[path] = {"imgsz": f"{h}x{w}", "runtime": runtime}
    times = interleaved_times(fns, warmup, runs, settle=SETTLE)
    return {p: {**info[p], **_summary(t)} for p, t in times.items()}

