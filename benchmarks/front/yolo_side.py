"""The YOLO side of the front: ultralytics' own exports of a trained ``.pt`` at each input size (ONNX and OpenVINO
fp32, OpenVINO INT8 by ultralytics' NNCF export calibrated on train images), and their accuracy by
:func:`benchmarks.peers.scoring.score_yolo` (hmpe's evaluator, ultralytics' letterbox predictor)."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.front.points import Context, cached, fingerprint, scalars

#: images per predict call when the .pt is scored (the exports are static batch 1: scored one image at a time)
SCORE_BATCH = 8


def prepare(ctx: Context) -> None:
    """The YOLO-format copy of the dataset and its ultralytics data YAML (in the work folder); no font fetch."""
    from benchmarks.peers.train_yolo import _ultralytics_no_font_fetch, ultralytics_data_yaml

    _ultralytics_no_font_fetch()
    ctx.extra["yolo_yaml"] = ultralytics_data_yaml(ctx.data, ctx.workdir)


def calibration(ctx: Context) -> dict:
    """How the YOLO INT8 files were calibrated (the result file's record)."""
    return {"split": "train", "images": ctx.calib_count,
            "selection": "the first images of the train split by file name (ultralytics' fraction as a count)",
            "by": f"ultralytics export(format='openvino', quantize=8, split='train', fraction={_fraction(ctx)})"}


def _fraction(ctx: Context) -> int | float:
    """ultralytics' ``fraction`` for ``--calib-images`` train images: a count (> 1), or 1.0 for the whole split."""
    return 1.0 if ctx.calib_images >= ctx.train_images else int(ctx.calib_images)


def _export(pt: Path, size: int, **kwargs) -> Path:
    """ultralytics' export of ``pt`` beside it; the ``.onnx`` file or the ``.xml`` inside the exported folder."""
    from ultralytics import YOLO

    f = Path(YOLO(str(pt)).export(imgsz=size, batch=1, device="cpu", verbose=False, **kwargs))
    return f if f.suffix == ".onnx" else f / f"{pt.stem}.xml"


def files(pt: Path, size: int, folder: Path, ctx: Context, first: bool, settings: dict) -> dict[tuple[str, str], Path]:
    """``{(runtime, precision): file}`` of one ``.pt`` at ``size``, exported once (cached in ``folder``): ONNX and
    OpenVINO fp32 for the ``first`` (timed) seed, OpenVINO INT8 for every seed unless ``--no-int8``."""
    out = {}
    if first:
        # simplify=False: onnxslim is not a dependency (ultralytics would try to install it); ONNX Runtime folds
        # and fuses the graph itself when it loads it, as it does for hmpe's file
        out["onnxruntime", "fp32"] = ctx.export(folder / "onnx.json", settings,
                                                lambda: _export(pt, size, format="onnx", simplify=False))
        out["openvino", "fp32"] = ctx.export(folder / "openvino.json", settings,
                                             lambda: _export(pt, size, format="openvino"))
    if ctx.int8:
        out["openvino", "int8"] = ctx.export(
            folder / "openvino-int8.json", {**settings, "data": ctx.data, "calib_images": ctx.calib_images},
            lambda: _export(pt, size, format="openvino", quantize=8, data=str(ctx.extra["yolo_yaml"]),
                            split="train", fraction=_fraction(ctx)))
    return out


def seed_point(model: str, weights: str, seed: int, size: int, ctx: Context) -> tuple[dict, dict]:
    """``(files, {precision: metrics})`` of one seed's ``.pt`` at ``size``: fp32 scored on the ``.pt`` itself, INT8
    on its exported folder (both cached in the work folder)."""
    from benchmarks.peers.scoring import score_yolo

    src = Path(weights)
    if not src.is_file():
        raise SystemExit(f"--yolo {model}={weights}: no such file (an ultralytics .pt checkpoint)")
    folder = ctx.folder("yolo", model, seed, size)
    folder.mkdir(parents=True, exist_ok=True)
    pt = folder / "model.pt"  # ultralytics exports beside the checkpoint: one copy per size keeps them apart
    if fingerprint(pt) != fingerprint(src):
        shutil.copyfile(src, pt)
    settings = {"weights": ctx.shown(src), "sha256": fingerprint(src), "imgsz": size}
    out = files(pt, size, folder, ctx, seed == 0, settings)
    scored = {"fp32": (pt, SCORE_BATCH)}
    if ("openvino", "int8") in out:
        scored["int8"] = (out["openvino", "int8"].parent, 1)
    metrics = {}
    for prec, (path, batch) in scored.items():
        rec = {**settings, "file": ctx.shown(path), "data": ctx.data, "val_images": len(ctx.val_indices),
               "calib_images": ctx.calib_images if prec == "int8" else None}
        metrics[prec] = cached(folder / f"metrics-{prec}.json", rec, lambda path=path, batch=batch: scalars(
            score_yolo(path, ctx.data, size, batch, ctx.val_indices)))
    return out, metrics
