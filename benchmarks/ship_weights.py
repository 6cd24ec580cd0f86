"""Ship a trained checkpoint inside the package: ``hmpe/weights/NAME/`` = the fp16 pretrained folder
(``config.json`` + ``model.safetensors``) and ``metrics.json``, the figures ``hmpe val weights=NAME`` measures
on those very files (not the fp32 checkpoint's: accuracy, objects per size bucket, the heatmap mask per level and
the gate), with the command, date, CPU and versions.

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
    from hmpe.engine.checkpoint import PRETRAINED_CONFIG, SHIPPED_METRICS, load_checkpoint, save_pretrained
    from hmpe.utils import shipped

    out = shipped.WEIGHTS_DIR / name
    if out.exists():
        shutil.rmtree(out)
    save_pretrained(load_checkpoint(ckpt), out, half=True)
    _drop_machine_paths(out / PRETRAINED_CONFIG)
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    if size_mb > max_mb:
        shutil.rmtree(out)
        raise SystemExit(f"{out}: {size_mb:.1f} MB, over --max-mb {max_mb}; nothing shipped")
    det = Detector(weights=name, device="cpu")
    metrics = det.val(data=data, name=f"ship-{name}", exist_ok=True)
    source = shown_path(ckpt)
    record = {**provenance(), "name": name, "trained": trained, "source_checkpoint": source,
              "size_mb": round(size_mb, 2), "dtype": "float16", "data": data or "the training dataset",
              "split": "val",
              "imgsz": det.preprocess().imgsz, "command": command_line().replace(str(ckpt), source),
              "reproduce": f"hmpe val weights={name}" + (f" data={data}" if data else ""),
              "metrics": shipped_metrics(metrics)}
    (out / SHIPPED_METRICS).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def shipped_metrics(metrics: dict) -> dict:
    """What ``metrics.json`` states: the accuracy figures, the objects per size bucket (``n_small``, ...) and, for
    a model with the heatmap embedding, its mask per level (``mask_bg_masked/S5``: background cells masked,
    ``mask_obj_hot/S5``: object cells kept) and the gate lambda of eq. 4 (``gate/S5``), all as ``hmpe val``
    reports them."""
    extra = sorted(k for k in metrics if k.startswith(("n_", "mask_", "gate/")))
    keep = [k for k in METRIC_KEYS if k in metrics] + extra
    return {k: round(float(metrics[k]), 4) for k in keep}


def shown_path(path: str | Path) -> str:
    """``path`` as ``metrics.json`` records it: relative to the working directory when below it, else
    ``RUNS/`` and its last five parts (a ``hmpe train`` checkpoint: ``RUNS/PROJECT/train/NAME/weights/FILE``),
    ``RUNS`` standing for the folder of the training runs (BENCHMARKS.md); never this machine's folders."""
    path = Path(path).absolute()
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return "/".join(("RUNS", *path.parts[-5:]))


def _drop_machine_paths(config_file: Path) -> None:
    """The shipped ``config.json`` records no folder of the machine that trained the weights: the paths
    :func:`hmpe.engine.checkpoint.save_pretrained` wrote relative to that machine's folders become null (the
    dataset's folder is left out: a shipped dataset is found by its name, ``nwpu-vhr10``, on every machine)."""
    from hmpe.engine.checkpoint import map_paths

    config = json.loads(config_file.read_text(encoding="utf-8"))
    config = map_paths(config, lambda v: None if v.startswith(("./", "../")) or Path(v).is_absolute() else v)
    if config.get("data_cfg") and config["data_cfg"].get("path", "") is None:
        del config["data_cfg"]["path"]
    config_file.write_text(json.dumps(config, indent=1, default=str), encoding="utf-8")


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
