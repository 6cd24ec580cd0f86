"""hmpe's side of the front: the files a user deploys at each input size (``hmpe export``: ONNX and OpenVINO fp32,
OpenVINO INT8 by NNCF), and the accuracy of each file, run in its runtime over the val split."""

from __future__ import annotations

from pathlib import Path

from hmpe.data.preprocess import Preprocess
from hmpe.engine.checkpoint import load_checkpoint
from hmpe.engine.deploy.export import export_onnx, export_openvino
from hmpe.engine.deploy.quantize import SplitImages, export_int8, int8_paths, runtime_metrics
from hmpe.utils.config import default_train_config
from benchmarks.front.points import Context, cached, fingerprint, scalars

#: the file scored for each precision (ONNX Runtime fp32 gives OpenVINO fp32's detections up to float error)
SCORED = {"fp32": ("openvino", "fp32"), "int8": ("openvino", "int8")}


def calibration(ctx: Context) -> dict:
    """How hmpe's INT8 files were calibrated (the result file's record)."""
    return {"split": "train", "images": ctx.calib_count, "selection": "evenly spaced over the train split",
            "by": "hmpe.engine.deploy.quantize.export_int8(format='openvino') (NNCF, min-max ranges)"}


def files(weights: str, size: int, folder: Path, ctx: Context, first: bool) -> dict[tuple[str, str], Path]:
    """``{(runtime, precision): file}`` of one checkpoint at ``size``, exported once (cached in ``folder``):
    OpenVINO fp32 (and INT8 unless ``--no-int8``) for every seed, ONNX fp32 for the ``first`` (timed) one.

    With INT8 the fp32 IR is the one :func:`export_int8` writes beside the INT8 IR (:func:`export_openvino`, parity
    checked), not a second export of the same graph; its check also prints fp32 against INT8 mAP50 on the val
    images scored here."""
    settings = {"weights": ctx.shown(weights), "sha256": fingerprint(weights), "imgsz": size}
    out = {}
    if ctx.int8:
        q = ctx.export(folder / "openvino-int8.json", {**settings, "data": ctx.data, "calib_images": ctx.calib_images},
                       lambda: export_int8(weights, format="openvino", data=ctx.data, calib_images=ctx.calib_images,
                                           val_images=ctx.val_images, imgsz=size, out=folder / "openvino" /
                                           "model_int8.xml"))
        q, fp32 = int8_paths(Path(weights), "openvino", q)
        out["openvino", "fp32"], out["openvino", "int8"] = fp32, q
    else:
        out["openvino", "fp32"] = ctx.export(
            folder / "openvino.json", settings,
            lambda: export_openvino(weights, imgsz=size, out=folder / "openvino" / "model.xml"))
    if first:
        out["onnxruntime", "fp32"] = ctx.export(
            folder / "onnx.json", settings,
            lambda: export_onnx(weights, imgsz=size, out=folder / "onnx" / "model.onnx"))
    return out


def seed_point(model: str, weights: str, seed: int, size: int, ctx: Context) -> tuple[dict, dict]:
    """``(files, {precision: metrics})`` of one seed's checkpoint at ``size`` (both cached in the work folder)."""
    folder = ctx.folder("hmpe", model, seed, size)
    ckpt = load_checkpoint(weights)
    if list(ckpt["names"]) != list(ctx.data_cfg["names"]):
        raise SystemExit(f"--hmpe {model}={weights}: classes {list(ckpt['names'])} differ from those of --data "
                         f"{ctx.data} ({list(ctx.data_cfg['names'])}); pass the dataset the model was trained for")
    out = files(weights, size, folder, ctx, first=seed == 0)
    pre = Preprocess.from_train_cfg(ckpt.get("train_cfg"), size)
    max_dets = default_train_config(ckpt.get("train_cfg"))["max_dets"]
    metrics = {}
    for prec, key in SCORED.items():
        if key not in out:
            continue
        settings = {"file": ctx.shown(out[key]), "weights": ctx.shown(weights), "sha256": fingerprint(weights),
                    "imgsz": size, "data": ctx.data, "val_images": len(ctx.val_indices),
                    "calib_images": ctx.calib_images if prec == "int8" else None}
        metrics[prec] = cached(folder / f"metrics-{prec}.json", settings, lambda key=key: scalars(runtime_metrics(
            out[key], key[0], SplitImages(ctx.data_cfg, "val", pre, ctx.val_images), pre, max_dets)))
    return out, metrics
