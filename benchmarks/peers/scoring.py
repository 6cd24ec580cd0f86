"""Scoring of the peers benchmark: every trained row scored by hmpe's COCOEvaluator on the same val samples.

hmpe rows and D-FINE-N are scored by the trainer's own final validation (hmpe's eval transform, square
resize); YOLO11n here, through its own letterbox predictor; boxes are mapped back to original pixels in both
cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hmpe.data.dataset import build_dataset
from hmpe.data.formats import load_data_config
from hmpe.data.preprocess import Preprocess
from hmpe.engine.eval.evaluator import COCOEvaluator


def val_dataset(data, imgsz: int):
    return build_dataset(load_data_config(data), "val", transforms=Preprocess(imgsz).transform)


def score_yolo(weights: Path, data, imgsz: int, batch: int, indices: list[int] | None = None) -> dict:
    """YOLO predictions (its own letterbox + NMS, conf 0.001, max 100 per image) scored by hmpe's evaluator;
    ``indices``: the val samples scored (default all)."""
    from ultralytics import YOLO

    ds = val_dataset(data, imgsz)
    order = list(range(len(ds))) if indices is None else [int(i) for i in indices]
    # AP_small_input: YOLO's letterbox scales each image by imgsz / its longer side
    ev = COCOEvaluator([ds.samples[j] for j in order], list(ds.names), max_dets=100,
                       input_scale=Preprocess(imgsz, keep_ratio=True).input_scale)
    model = YOLO(str(weights))
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        ims = [np.ascontiguousarray(ds.load(j)[0].permute(1, 2, 0).numpy()[:, :, ::-1]) for j in idx]  # RGB->BGR
        res = model.predict(ims, imgsz=imgsz, conf=0.001, iou=0.7, max_det=100, device="cpu", verbose=False)
        ev.update([int(ds.samples[j].image_id) for j in idx],
                  [{"boxes": r.boxes.xyxy.cpu(), "scores": r.boxes.conf.cpu(), "labels": r.boxes.cls.long().cpu()}
                   for r in res])
    return ev.compute()
