"""Command line of the front benchmark (``python -m benchmarks.front``; the package docstring is its help)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import benchmarks.front as package
from benchmarks._common import RESULTS, command_line, no_network, provenance
from benchmarks.front import hmpe_side, yolo_side
from benchmarks.front.check import front_check, recheck_file
from benchmarks.front.plot import plot_front
from benchmarks.front.points import Context, make_points, time_points

DEFAULT_SIZES = [320, 384, 448, 512, 576, 640]
SMOKE_SIZES = [64, 96]
SMOKE_IMAGES = 4  # --smoke: at most this many val and calibration images
STRIDE = 32  # the largest stride of hmpe and YOLO models: input sizes are multiples of it
SIDES = {"hmpe": hmpe_side, "yolo": yolo_side}
NOTES = [
    "hmpe fp32 accuracy: the exported OpenVINO fp32 IR run by OpenVINO (f32 inference precision) over the val split; "
    "ONNX Runtime and OpenVINO fp32 run the same graph and give the same detections up to float error (hmpe's "
    "export parity check), so that one score stands for both fp32 runtimes.",
    "hmpe INT8 accuracy: the INT8 IR itself (hmpe.engine.deploy.quantize.export_int8, NNCF) run by OpenVINO.",
    "YOLO fp32 accuracy: the .pt in ultralytics' predictor (letterbox, NMS at conf 0.001, IoU 0.7, max 100) scored "
    "by hmpe's COCOEvaluator (benchmarks.peers.scoring.score_yolo); its ONNX / OpenVINO exports run the same "
    "network. YOLO INT8 accuracy: the same predictor on ultralytics' exported INT8 OpenVINO folder, compiled with "
    "ultralytics' own OpenVINO settings (LATENCY hint, OpenVINO's default inference precision for the ops left "
    "in floating point: bf16 on CPUs with native bf16, else f32); the timings compile every file at f32.",
    "Exports: each library's own defaults (hmpe: opset 17; ultralytics: its opset, simplify=False because onnxslim "
    "is not a dependency; ONNX Runtime optimises either graph when it loads it).",
    "Timed: the runtime's forward on a fixed random preprocessed tensor, batch 1, --threads threads; hmpe's file "
    "includes its top-k post-processing (it needs no NMS), YOLO's excludes NMS (as ultralytics exports it); "
    "neither includes image decoding or resizing. One interleaved run over every file of every size (every round "
    "times every file once, rotated, after one untimed call of the same file), so that points of different sizes "
    "compare in the same minutes and no time includes threads another session left spinning.",
    "A point is a model's fastest runtime of that precision at that size; accuracy is the mean over the seeds "
    "(spread: max - min), latency is measured on the first seed's files.",
    "Paths: RUNS/ stands for the --workdir folder.",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.front", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hmpe", action="append", default=[], metavar="NAME=W1[,W2,...]",
                   help="hmpe checkpoints of one model (paths or shipped names), one per seed; repeatable")
    p.add_argument("--yolo", action="append", default=[], metavar="NAME=Y1[,Y2,...]",
                   help="ultralytics YOLO .pt checkpoints of one model, one per seed; repeatable")
    p.add_argument("--data", default="nwpu-vhr10", help="dataset YAML or shipped name (train: calibration, val)")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help=f"input sizes (default {' '.join(map(str, DEFAULT_SIZES))}; --smoke: "
                        f"{' '.join(map(str, SMOKE_SIZES))})")
    p.add_argument("--threads", type=int, default=2, help="threads of every runtime session")
    p.add_argument("--rounds", type=int, default=10, help="interleaved timed rounds per size")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per file first")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="fp32 points only")
    p.add_argument("--calib-images", type=int, default=300, help="INT8 calibration: at most this many train images")
    p.add_argument("--val-images", type=int, default=None, help="score this many val images, evenly spaced "
                                                                "(default: the whole split)")
    p.add_argument("--workdir", default=None, help="exports and cached scores (default runs/front under the "
                                                   "working directory; --smoke: a temporary folder)")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/front.json; --smoke: in "
                                               "the work folder); the PNG goes beside it")
    p.add_argument("--prepare-seeds", type=int, nargs="+", default=None, metavar="I",
                   help="only export and score these seeds (0: each model's first checkpoint) into --workdir, then "
                        "stop: no timing, no result file; two such runs, one per core, prepare seeds in parallel")
    p.add_argument("--smoke", action="store_true", help="the whole path with tiny sizes, one round, few images")
    p.add_argument("--recheck", type=Path, default=None, metavar="FILE",
                   help="only recompute the front check of result FILE from its points (nothing timed or scored)")
    return p


def _models(p: argparse.ArgumentParser, specs: list[str], kind: str) -> list[dict]:
    out = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        weights = [w.strip() for w in rest.split(",") if w.strip()]
        if not sep or not name.strip() or not weights:
            p.error(f"--{kind} {spec!r}: expected NAME=W1[,W2,...]")
        out.append({"name": name.strip(), "kind": kind, "weights": weights})
    return out


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments with the models parsed (``args.models``) and the smoke / default sizes and folders filled in."""
    p = _parser()
    a = p.parse_args(argv)
    if a.recheck is not None:
        return a
    a.models = _models(p, a.hmpe, "hmpe") + _models(p, a.yolo, "yolo")
    names = [m["name"] for m in a.models]
    if not a.models:
        p.error("give at least one model: --hmpe NAME=W1[,W2] and/or --yolo NAME=Y1[,Y2]")
    if len(set(names)) != len(names):
        p.error(f"model names must differ: {names}")
    a.sizes = a.sizes or (SMOKE_SIZES if a.smoke else DEFAULT_SIZES)
    bad = [s for s in a.sizes if s <= 0 or s % STRIDE]
    if bad:
        p.error(f"--sizes {bad}: input sizes are positive multiples of {STRIDE}")
    most = max(len(m["weights"]) for m in a.models)
    if a.prepare_seeds is not None and not all(0 <= i < most for i in a.prepare_seeds):
        p.error(f"--prepare-seeds {a.prepare_seeds}: seed indices from 0 to {most - 1} (the checkpoints of a model)")
    if a.calib_images < 2:  # ultralytics reads a fraction of 1 as the whole split
        p.error(f"--calib-images {a.calib_images}: at least 2")
    if a.smoke:
        a.rounds, a.warmup = 1, min(a.warmup, 1)
        a.calib_images = min(a.calib_images, SMOKE_IMAGES)
        a.val_images = min(a.val_images or SMOKE_IMAGES, SMOKE_IMAGES)
    # relative by default, so that the result file records nothing of this machine's folders
    a.workdir = Path(a.workdir or (tempfile.mkdtemp(prefix="hmpe-front-smoke-") if a.smoke else Path("runs") / "front"))
    a.out = Path(a.out or (a.workdir / "front.json" if a.smoke else RESULTS / "front.json"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(a.workdir.resolve() / "ultralytics-config"))
    return a


def _require(args) -> None:
    """A one-line error naming the extra for each optional package the run needs and lacks."""
    from hmpe.engine.deploy.quantize import MissingExtraError, require_int8

    missing = [m for m in ("onnx", "onnxruntime", "openvino") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"benchmarks.front needs {', '.join(missing)}: pip install \"hmpe[export]\"")
    if args.int8:
        try:
            require_int8("openvino")
        except MissingExtraError as e:
            raise SystemExit(f"benchmarks.front: INT8 points: {e} (or --no-int8)") from None
    if any(m["kind"] == "yolo" for m in args.models) and importlib.util.find_spec("ultralytics") is None:
        raise SystemExit('benchmarks.front: --yolo needs ultralytics: pip install "hmpe[peers]"')


def make_context(args) -> Context:
    """The dataset read once: its config, the val samples scored, the size of the train split."""
    from hmpe.data.dataset import build_dataset
    from hmpe.data.formats import DataError, load_data_config
    from hmpe.data.preprocess import Preprocess
    from hmpe.engine.deploy.quantize import SplitImages

    try:
        cfg = load_data_config(args.data)
        val = SplitImages(cfg, "val", Preprocess(args.sizes[0]), args.val_images)
        train = len(build_dataset(cfg, "train"))
    except (DataError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--data {args.data}: {e}") from None
    return Context(workdir=args.workdir, data=str(args.data), data_cfg=cfg, val_images=args.val_images,
                   val_indices=list(val.indices), train_images=train, calib_images=args.calib_images,
                   int8=args.int8, threads=args.threads)


def prepare(args, ctx: Context) -> tuple[dict, list[dict]]:
    """Every seed's files and scores at every size (cached): ``({(model, precision, size): [metrics per seed]},
    [the first seed's files: model, kind, imgsz, runtime, precision, path, file])``; with ``--prepare-seeds`` only
    those seeds."""
    accuracy: dict = {}
    entries: list[dict] = []
    if any(m["kind"] == "yolo" for m in args.models):
        yolo_side.prepare(ctx)
    for m in args.models:
        for size in args.sizes:
            for seed, w in enumerate(m["weights"]):
                if args.prepare_seeds is not None and seed not in args.prepare_seeds:
                    continue
                print(f"benchmarks.front: {m['name']} seed {seed} ({ctx.shown(w)}) at {size}", flush=True)
                files, metrics = SIDES[m["kind"]].seed_point(m["name"], w, seed, size, ctx)
                for prec, met in metrics.items():
                    accuracy.setdefault((m["name"], prec, size), []).append(met)
                if seed == 0:
                    entries += [{"model": m["name"], "kind": m["kind"], "imgsz": size, "runtime": rt,
                                 "precision": prec, "path": f, "file": ctx.shown(f)} for (rt, prec), f in files.items()]
    return accuracy, entries


def result(args, ctx: Context, accuracy: dict, timings: list[dict], argv) -> dict:
    """The result file's content."""
    kinds = {m["name"]: m["kind"] for m in args.models}
    points = make_points(accuracy, timings, kinds)
    models = {m["name"]: {"kind": m["kind"], "weights": [ctx.shown(w) for w in m["weights"]],
                          **({"int8_calibration": SIDES[m["kind"]].calibration(ctx)} if args.int8 else {})}
              for m in args.models}
    return {**provenance(), "command": command_line(argv), "threads": args.threads,
            "rounds": args.rounds, "warmup": args.warmup, "sizes": args.sizes, "data": ctx.shown(ctx.data),
            "val_images": len(ctx.val_indices), "calib_images": args.calib_images if args.int8 else None,
            "notes": NOTES, "models": models, "points": points, "timings": timings,
            "front_check": front_check(points)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.recheck is not None:
        return recheck_file(args.recheck)
    _require(args)
    ctx = make_context(args)
    attempts: list[str] = []
    with no_network(attempts):
        accuracy, entries = prepare(args, ctx)
        if args.prepare_seeds is not None:
            print(f"benchmarks.front: seeds {args.prepare_seeds} prepared in {args.workdir}; run again "
                  "without --prepare-seeds to time every file and write the result", flush=True)
            return {}
        # fresh on every run (only exports and scores are cached): every file of every size in one interleaved run
        print(f"benchmarks.front: timing {len(entries)} files, {args.rounds} rounds", flush=True)
        timings = time_points(entries, args.threads, args.warmup, args.rounds)
    if attempts:
        raise SystemExit(f"benchmarks.front: network access was attempted: {attempts}")
    res = result(args, ctx, accuracy, timings, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    png = plot_front(res["points"], args.out.with_suffix(".png"),
                     f"{res['data']}, {args.threads} threads, {res['cpu']}")
    print(f"benchmarks.front: wrote {args.out} and {png}; all beaten: {res['front_check']['all_beaten']}")
    return res
