"""Peak memory of ``hmpe predict`` on GeoTIFFs of growing size: it should stay flat, since the raster is read
window by window (:mod:`hmpe.engine.eval.raster`), never held whole.

    python -m benchmarks.geotiff_memory [--sizes 5000 10000 20000] [--weights tiny | hmpe-n-nwpu | CKPT]
        [--dtype uint8 | uint16] [--window 4096] [--slice 1024] [--threads N] [--work-dir DIR] [--keep]
        [--out benchmarks/results/geotiff_memory.json]

Per size (a square raster of that many pixels a side):

1. A synthetic GeoTIFF (EPSG:32633, 0.5 m pixels, 3 bands, tiled 256 x 256, deflate with the horizontal
   predictor): a smooth background, bright rectangles as objects and a nodata strip over the left quarter. It is
   written 1024 x 1024 px at a time, so making it is flat in memory as well.
2. ``python -m hmpe predict RASTER weights=... device=cpu`` in a subprocess; its peak resident set size is that
   child's own ``ru_maxrss`` (``os.wait4``), its time the wall-clock time of the command.

``--weights tiny`` (default): a random-weight rtdetr-n with one decoder layer and a 256 input, written into the
work folder (no training: what is measured is the reading); ``--weights hmpe-n-nwpu`` runs the shipped model
(more time per tile, the same reading). ``--slice 1024`` (default; ``0``: the model input size, as ``hmpe
predict`` does by default) keeps the tile count, and so the time of a 20k raster, down; the windows read and
their size (``--window``) are what matter for the memory.

The result file: ``date``, ``cpu``, ``versions`` (+ rasterio), the command and settings, and per size the
raster's pixels decoded whole (MiB, for scale), the file size, peak RSS (MiB), seconds, detections and the
summary line ``hmpe predict`` printed (windows, nodata windows skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import RESULTS, command_line, load_hmpe_model_config, provenance

CHUNK = 1024  # pixels a side written at once
CRS, ORIGIN, PIXEL = "EPSG:32633", (500000.0, 5000000.0), 0.5


def synthetic_chunk(x0: int, y0: int, w: int, h: int, size: int, dtype: str):
    """``[3, h, w]`` pixels of the synthetic raster at ``(x0, y0)``: deterministic from the position alone."""
    import numpy as np

    ys, xs = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
    grey = 90 + 30 * np.sin(xs / 317) * np.cos(ys / 251)  # smooth: compresses, never 0 (nodata)
    img = np.stack([grey, grey * 0.9 + 10, grey * 0.8 + 20])
    rng = np.random.default_rng([x0, y0])
    for _ in range(max(1, w * h // 50_000)):  # about 20 objects per full chunk
        bw, bh = rng.integers(8, 40, 2)
        bx, by = rng.integers(0, max(1, w - bw)), rng.integers(0, max(1, h - bh))
        img[:, by:by + bh, bx:bx + bw] = rng.integers(180, 256, 3)[:, None, None]
    img[:, :, : max(0, size // 4 - x0)] = 0  # the nodata strip
    scale = 256 if dtype == "uint16" else 1
    return (img * scale).astype(dtype)


def make_raster(path: Path, size: int, dtype: str) -> Path:
    """A ``size x size`` synthetic GeoTIFF at ``path``, written ``CHUNK`` px at a time."""
    import rasterio
    from rasterio.windows import Window

    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype=dtype, crs=CRS, nodata=0,
                   transform=rasterio.Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1]), tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", predictor=2, BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, CHUNK):
            for x in range(0, size, CHUNK):
                w, h = min(CHUNK, size - x), min(CHUNK, size - y)
                dst.write(synthetic_chunk(x, y, w, h, size, dtype), window=Window(x, y, w, h))
    return path


def tiny_checkpoint(path: Path, imgsz: int = 256) -> Path:
    """A random-weight rtdetr-n (one decoder layer, 30 queries) as a training checkpoint at ``path``."""
    import torch

    from hmpe.models.detector import build_model
    from hmpe.utils.config import default_train_config

    torch.manual_seed(0)
    cfg = load_hmpe_model_config("rtdetr-n", {"decoder.num_layers": 1, "decoder.num_queries": 30,
                                              "decoder.num_denoising": 0})
    names = ["object"]
    torch.save({"model": build_model(cfg, len(names)).state_dict(), "ema": None, "epoch": 0, "model_cfg": cfg,
                "train_cfg": {**default_train_config(), "imgsz": imgsz}, "names": names, "metrics": {}}, path)
    return path


def run_predict(raster: Path, weights: str, args, project: Path) -> dict:
    """``hmpe predict`` on ``raster`` in a subprocess -> peak RSS (MiB, that child's own), seconds, output."""
    cmd = [sys.executable, "-m", "hmpe", "predict", str(raster), f"weights={weights}", "device=cpu",
           f"project={project}", f"name={raster.stem}", f"window={args.window}"]
    cmd += [f"slice={args.slice}"] if args.slice else []
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    log = project / f"{raster.stem}.log"
    project.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    text = log.read_text()
    if child.returncode != 0:
        raise SystemExit(f"hmpe predict on {raster} failed (exit {child.returncode}); output in {log}:\n"
                         f"{text[-2000:]}")
    run_dir = re.search(r"results saved to (.+)$", text, re.M)  # the CLI's last line names the run folder
    preds = json.loads((Path(run_dir.group(1).strip()) / "predictions.json").read_text())
    summary = re.search(rf"^{re.escape(str(raster))}: .*$", text, re.M)
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(seconds, 1),
            "detections": len(preds[0]["detections"]), "summary": summary.group(0).replace(str(raster.parent) + "/", "") if summary else None}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000], help="raster sides in pixels")
    p.add_argument("--weights", default="tiny", help="tiny (a random-weight model made here), a shipped name or a "
                                                     "checkpoint")
    p.add_argument("--dtype", default="uint8", choices=["uint8", "uint16"])
    p.add_argument("--window", type=int, default=None, help="hmpe predict window= (default: its own)")
    p.add_argument("--slice", type=int, default=1024, help="hmpe predict slice= (0: the model input size)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the predict processes")
    p.add_argument("--work-dir", type=Path, default=None, help="rasters and runs (default: a temporary folder, "
                                                               "removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep each raster after its run")
    p.add_argument("--out", type=Path, default=RESULTS / "geotiff_memory.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    import rasterio

    from hmpe.engine.eval.raster import RASTER_WINDOW

    args = parse_args(argv)
    args.window = args.window or RASTER_WINDOW
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hmpe-geotiff-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    weights = str(tiny_checkpoint(work / "tiny.pt")) if args.weights == "tiny" else args.weights
    rows = []
    try:
        for size in args.sizes:
            raster = make_raster(work / f"synthetic_{size}.tif", size, args.dtype)
            row = {"size": size, "pixels": size * size, "decoded_rgb_mib": round(size * size * 3 / 2**20, 1),
                   "file_mib": round(raster.stat().st_size / 2**20, 1)}
            row.update(run_predict(raster, weights, args, work / "runs"))
            print(json.dumps(row))
            rows.append(row)
            if not args.keep:
                raster.unlink()
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    record = {**provenance(), "command": command_line(argv), "weights": args.weights, "dtype": args.dtype,
              "window": args.window, "slice": args.slice, "threads": args.threads, "rows": rows}
    record["versions"]["rasterio"] = rasterio.__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print("peak RSS (MiB) by raster side: " + ", ".join(f"{r['size']}: {r['peak_rss_mib']}" for r in rows)
          + f" -> {args.out}")
    return record


if __name__ == "__main__":
    main()
