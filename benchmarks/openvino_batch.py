"""OpenVINO IRs with a dynamic batch axis against the same IRs compiled at batch 1, in one interleaved run.

``hmpe export format=openvino`` writes the batch axis dynamic; this times each given ``.xml`` (or ``.onnx``) as
written and reshaped to batch 1 (``model.reshape``), the choice behind
``hmpe.engine.deploy.export.runtime_session`` compiling once per batch size (docs/method.md, "INT8": a static
batch in OpenVINO). A file whose batch axis is already static is timed once. CPU plugin, f32 precision,
``--threads`` threads, each timed call settled as everywhere else
(``hmpe.engine.deploy.backends.interleaved_times``).

    python -m benchmarks.openvino_batch RUNS/front/hmpe/hmpe-t/seed0/640/openvino/model.xml \\
        RUNS/front/hmpe/hmpe-t/seed0/640/openvino/model_int8.xml --threads 2 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks._common import emit_report, header, load_avg, md_table
from hmpe.engine.deploy.backends import SETTLE, interleaved_times
from hmpe.engine.deploy.export import openvino_at_batch, openvino_cpu_config


def compiled_runs(path: Path, threads: int) -> dict[str, Callable[[], object]]:
    """``{label: call}``: the file as written and, when its batch axis is dynamic, reshaped to batch 1."""
    import openvino as ov

    core = ov.Core()
    config = openvino_cpu_config(threads)
    model = core.read_model(str(path))
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or any(d.is_dynamic for d in list(shape)[1:]):
        raise SystemExit(f"{path}: only the batch axis may be dynamic, got {shape}")
    x = np.random.default_rng(0).random([1] + [d.get_length() for d in list(shape)[1:]], dtype=np.float32)
    variants = {"dynamic batch": model, "batch 1": openvino_at_batch(model, 1)} if shape[0].is_dynamic else {
        "as written": model}
    out = {}
    for label, m in variants.items():
        compiled = core.compile_model(m, "CPU", config)
        out[f"{path} ({label})"] = (lambda c: lambda: c(x))(compiled)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="OpenVINO .xml (or .onnx) files")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None, help="markdown output (default: printed only)")
    args = p.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--threads and --rounds must be >= 1, --warmup >= 0")
    start = load_avg()
    fns = {k: v for f in args.files for k, v in compiled_runs(f, args.threads).items()}
    times = interleaved_times(fns, warmup=args.warmup, runs=args.rounds, settle=SETTLE)
    medians = {k: statistics.median(t) * 1e3 for k, t in times.items()}
    rows = [[k, f"{v:.1f}"] for k, v in medians.items()]
    setting = f"{args.threads} threads, batch 1, f32 inference precision, medians of {args.rounds} settled rounds"
    text = header("OpenVINO: a dynamic batch axis against batch 1", [setting], start)
    text += "\n" + md_table(["file", "median ms"], rows, "lr") + "\n"
    emit_report(text, args.out)
    return medians


if __name__ == "__main__":
    main()
