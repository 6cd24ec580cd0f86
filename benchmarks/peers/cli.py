"""Command line of the peers benchmark (``python -m benchmarks.peers``; the package docstring is its help)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import benchmarks.peers as package
from hmpe.engine.deploy.backends import SETTLE
from benchmarks.peers.runtimes import RUNTIMES
from benchmarks.peers.speed import run_speed
from benchmarks.peers.training import run_train

DEFAULT_MODELS = "hmpe-n,hmpe-s,rtdetr-n,yolo11n,rtdetr-l,dfine-n"
DEFAULT_TRAIN_MODELS = "hmpe-n,yolo11n,dfine-n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=package.__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true", help="Part B: same-budget training comparison on NWPU")
    p.add_argument("--smoke", action="store_true", help="tiny run of the chosen part (seconds)")
    p.add_argument("--models", default=None,
                   help=f"comma-separated rows (default A: {DEFAULT_MODELS}; B: {DEFAULT_TRAIN_MODELS}); "
                        "hmpe rows may carry overrides: 'rtdetr-n:decoder.num_layers=3'")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default A: 640, B: 512; smoke: 64)")
    p.add_argument("--nc", type=int, default=80, help="Part A: classes of every model (default 80, COCO)")
    p.add_argument("--rounds", type=int, default=20, help="Part A: interleaved timed rounds")
    p.add_argument("--warmup", type=int, default=3, help="Part A: untimed calls per model first")
    p.add_argument("--settle", type=int, default=SETTLE,
                   help="Part A: untimed calls of a model right before each timed one, so that no time includes "
                        "threads another runtime session left spinning (0: none, as before 2026-12-07)")
    p.add_argument("--threads", default="2", help="torch thread counts, e.g. '2' or '2,1' (Part B: the first)")
    p.add_argument("--backends", default="torch",
                   help="Part A: runtimes, e.g. 'torch,onnxruntime,openvino' (each model exported as raw ONNX)")
    p.add_argument("--fuse", action="store_true",
                   help="Part A: each library's inference fusion first (hmpe / ultralytics fuse(); HF has none)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--minutes", type=float, default=35.0, help="Part B: CPU minutes per model")
    p.add_argument("--data", default="nwpu-vhr10", help="Part B: dataset YAML or shipped name")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=1000, help="Part B: cap before the time budget sizes it")
    p.add_argument("--yolo-epochs", type=int, default=0, help="Part B: fixed YOLO epochs (0: calibrate)")
    p.add_argument("--curve-every", type=int, default=0,
                   help="Part B: keep a checkpoint every N epochs and score each after the run: a learning curve "
                        "(hmpe rows and yolo11n; 0 = off)")
    p.add_argument("--hmpe-args", nargs="*", default=[], help="Part B: key=value overrides for hmpe train")
    p.add_argument("--workdir", default=None, help="runs and converted data (default: runs/peers under the working "
                                                   "directory; --smoke: a temporary folder)")
    p.add_argument("--out", default=None, help="markdown output (default benchmarks/results/peers[_train].md)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments with the defaults of the chosen part (and the smoke sizes) filled in."""
    p = _parser()
    a = p.parse_args(argv)
    a.models = a.models or (DEFAULT_TRAIN_MODELS if a.train else DEFAULT_MODELS)
    if a.smoke:
        a.imgsz = a.imgsz or 64
        a.rounds = min(a.rounds, 2)
        a.warmup = min(a.warmup, 1)
        a.minutes = min(a.minutes, 0.1)
        a.batch = min(a.batch, 4)
        a.workers = 0
    a.imgsz = a.imgsz or (512 if a.train else 640)
    a.threads = [int(t) for t in str(a.threads).split(",") if t.strip()]
    a.backends = ["torch"] + [b for b in (k.strip().lower() for k in a.backends.split(",")) if b and b != "torch"]
    bad = [b for b in a.backends if b not in RUNTIMES]
    if bad:
        p.error(f"--backends {','.join(bad)}: choose from {', '.join(RUNTIMES)}")
    if a.settle < 0 or a.rounds < 1 or a.warmup < 0:
        p.error(f"--rounds {a.rounds}, --warmup {a.warmup}, --settle {a.settle}: rounds >= 1, the others >= 0")
    # relative by default, so that the result files record the run folders without this machine's folders
    a.workdir = a.workdir or (tempfile.mkdtemp(prefix="hmpe-peers-") if a.smoke else str(Path("runs") / "peers"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(a.workdir).resolve() / "ultralytics-config"))
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    return run_train(args) if args.train else run_speed(args)
