"""Part A of the peers benchmark: speed and size of every row, interleaved, in each chosen runtime."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import torch

from hmpe.engine.deploy.backends import interleaved_times
from hmpe.engine.deploy.bench import count_gflops, count_params, environment, peak_forward_memory, percentile
from hmpe.engine.deploy.export import onnx_to_openvino
from benchmarks._common import RESULTS, SkipRow, command_line, load_avg, no_network, utc_stamp, versions
from benchmarks.peers.models import Built, build, call, peer_split, split_models
from benchmarks.peers.report import speed_markdown, write_report
from benchmarks.peers.runtimes import deploy, export_raw_onnx, runner


def build_rows(specs: list[str], nc: int, smoke: bool) -> tuple[list[Built], list[tuple[str, str]]]:
    """Every row in eval mode (seed 0 each), and the rows skipped with the reason."""
    built, skipped = [], []
    for spec in specs:
        try:
            torch.manual_seed(0)
            b = build(spec, nc, smoke)
            b.model.eval()
            built.append(b)
            print(f"built {spec}: {count_params(b.model) / 1e6:.2f}M params", flush=True)
        except SkipRow as e:
            skipped.append((spec, str(e)))
            print(f"skipped {spec}: {e}", flush=True)
    return built, skipped


def size_info(built: list[Built], x) -> dict:
    return {b.name: {"params": count_params(b.model), "split": peer_split(b),
                     "gflops": count_gflops(b.model, x, b.forward),
                     "peak_mem_mb": peak_forward_memory(b.model, x, b.forward)} for b in built}


def time_rows(built: list[Built], x, onnx: dict, args) -> dict:
    """``{threads: {label: {median_ms, p90_ms, times_ms}}}`` over interleaved rounds."""
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        fns = _runners(built, x, onnx, args.backends, threads)
        with torch.no_grad():
            times = interleaved_times(fns, args.warmup, args.rounds, settle=args.settle)
        results[threads] = {k: {"median_ms": statistics.median(v) * 1e3, "p90_ms": percentile(v, 0.9) * 1e3,
                                "times_ms": [t * 1e3 for t in v]} for k, v in times.items()}
    return results


def run_speed(args) -> dict:
    started_load = load_avg()
    attempts: list[str] = []
    with no_network(attempts):
        built, skipped = build_rows([s.strip() for s in split_models(args.models)], args.nc, args.smoke)
        if not built:
            raise SystemExit("benchmarks.peers: no model could be built")
        x = torch.rand(1, 3, args.imgsz, args.imgsz)
        info = size_info(built, x)
        deployed, onnx, backend_skipped = _prepare_backends(built, x, args)
        results = time_rows(built, x, onnx, args)
    if attempts:
        raise SystemExit(f"benchmarks.peers: network access was attempted: {attempts}")
    env = environment()
    report = {"date": utc_stamp(), "cpu": env["cpu"],
              "logical_cpus": env["logical_cpus"], "versions": versions(), "command": command_line(),
              "backends": args.backends, "deployed": deployed, "backend_skipped": backend_skipped,
              "imgsz": args.imgsz, "nc": args.nc, "rounds": args.rounds, "warmup": args.warmup, "settle": args.settle,
              "models": [{"name": b.name, "source": b.source, "levels": b.levels, **info[b.name]} for b in built],
              "latency": {str(t): v for t, v in results.items()}, "skipped": skipped,
              "load_start": started_load, "load_end": load_avg()}
    out = Path(args.out) if args.out else (Path(args.workdir) / "peers.md" if args.smoke else RESULTS / "peers.md")
    write_report(out, speed_markdown(report, built, args), report)
    report["markdown"] = str(out)
    return report


def file_stem(row: str) -> str:
    """A row as a file name: OpenVINO reads a path with a comma as several models, so overrides are spelled out."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", row)


def _prepare_backends(built: list[Built], x, args) -> tuple[dict, dict, list]:
    """``--fuse``: each library's deploy fusion; other backends than torch: one raw ONNX file per model."""
    deployed = {b.name: deploy(b.name, b.model) if args.fuse else "as built" for b in built}
    onnx, skipped = {}, []
    if any(k != "torch" for k in args.backends):
        folder = Path(args.workdir) / "onnx"
        for b in built:
            try:
                onnx[b.name] = export_raw_onnx(b.model, b.forward, x, folder / f"{file_stem(b.name)}.onnx")
                if "openvino" in args.backends:  # this run's graph, never an IR left by an earlier run
                    onnx_to_openvino(onnx[b.name], onnx[b.name].with_suffix(".xml"))
            except Exception as e:  # a peer whose graph does not export: its torch row stays
                skipped.append((b.name, f"ONNX export failed: {type(e).__name__}: {str(e)[:300]}"))
                print(f"{b.name}: {skipped[-1][1]}", flush=True)
    return deployed, onnx, skipped


def _runners(built: list[Built], x, onnx: dict, backends: list[str], threads: int) -> dict:
    """``{label: fn}``: ``name`` for the PyTorch forward, ``name@runtime`` for an exported one."""
    fns, xn = {}, x.numpy()
    for b in built:
        fns[b.name] = (lambda b=b: call(b, x))
        for rt in (k for k in backends if k != "torch" and b.name in onnx):
            fns[f"{b.name}@{rt}"] = (lambda run: lambda: run(xn))(runner(onnx[b.name], rt, threads))
    return fns
