"""Ship a trained checkpoint inside the package: ``hmpe/weights/NAME/`` = the fp16 pretrained folder
(``config.json`` + ``model.safetensors``) and ``metrics.json``, the figures ``hmpe val weights=NAME`` measures
on those very files (not the fp32 checkpoint's), with the command, date, CPU and versions.

    python -m benchmarks.ship_weights --ckpt RUN/weights/last.pt --name hmpe-n-nwpu \
        --trained "hmpe-n from scratch, 150 CPU minutes, ..." [--data DATA] [--max-mb 12]

Afterwards ``hmpe val weights=NAME`` reproduces ``metrics.json`` (tests/test_shipped_weights.py checks it when
the dataset is present) and ``hmpe predict IMAGES weights=NAME`` works without any other file.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from benchmarks._common import command_line, default_datasets_env, provenance
from benchmarks.peers.report import METRIC_KEYS


def ship(ckpt: Path, name: str, trained: str, data: str | None = None, max_mb: float = 12.0) -> dict:
    """``ckpt`` -> ``hmpe/weights/NAME`` (fp16) + ``metrics.json`` scored on ``data``'s val split (default: the
    dataset the checkpoint was trained on) through ``weights=NAME``, as a user would."""
    from hmpe.api import Detector
    from hmpe.engine.checkpoint import SHIPPED_METRICS, WEIGHTS_DIR, load_checkpoint, save_pretrained

    out = WEIGHTS_DIR / name
    if out.exists():
        shutil.rmtree(out)
    save_pretrained(load_checkpoint(ckpt), out, half=True)
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    if size_mb > max_mb:
        shutil.rmtree(out)
        raise SystemExit(f"{out}: {size_mb:.1f} MB, over --max-mb {max_mb}; nothing shipped")
    det = Detector(weights=name, device="cpu")
    metrics = det.val(data=data, name=f"ship-{name}", exist_ok=True)
    record = {**provenance(), "name": name, "trained": trained, "source_checkpoint": str(ckpt),
              "size_mb": round(size_mb, 2), "dtype": "float16", "data": data or "the training dataset",
              "split": "val",
              "imgsz": det.preprocess().imgsz, "command": command_line(),
              "reproduce": f"hmpe val weights={name}" + (f" data={data}" if data else ""),
              "metrics": {k: round(float(metrics[k]), 4) for k in METRIC_KEYS if k in metrics}}
    (out / SHIPPED_METRICS).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by hmpe train (EMA weights used)")
    p.add_argument("--name", required=True, help="the name users type: weights=NAME")
    p.add_argument("--trained", required=True, help="one line: how the checkpoint was trained (budget, recipe)")
    p.add_argument("--data", default=None, help="dataset scored, its val split (default: the checkpoint's own)")
    p.add_argument("--max-mb", type=float, default=12.0, help="refuse to ship a bigger folder")
    args = p.parse_args(argv)
    default_datasets_env()
    record = ship(args.ckpt, args.name, args.trained, args.data, args.max_mb)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
