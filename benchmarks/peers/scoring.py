"""Scoring of the peers benchmark: every trained row scored by hmpe's COCOEvaluator on the same val samples.

hmpe rows and D-FINE-N see the val images through hmpe's eval transform (square resize); YOLO11n through its
own letterbox predictor; boxes are mapped back to original pixels in both cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from hmpe.data.dataset import build_dataset, collate_fn
from hmpe.data.formats import load_data_config
from hmpe.data.preprocess import Preprocess
from hmpe.engine.evaluator import COCOEvaluator
from hmpe.engine.trainer import evaluate
from hmpe.models.postprocess import PostProcessor


def val_dataset(data, imgsz: int):
    return build_dataset(load_data_config(data), "val", transforms=Preprocess(imgsz).transform)


class _DetrOutputs(nn.Module):
    """A model's outputs as ``{pred_logits, pred_boxes}`` (HF ModelOutput: logits / pred_boxes)."""

    def __init__(self, model: nn.Module, forward=None):
        super().__init__()
        self.m, self.fn = model, forward

    def forward(self, x):
        o = self.fn(self.m, x) if self.fn else self.m(x)
        if hasattr(o, "pred_boxes") and hasattr(o, "logits"):  # HF ModelOutput (dict-like, other keys)
            return {"pred_logits": o.logits, "pred_boxes": o.pred_boxes}
        return o


def score_detr_like(model: nn.Module, data, imgsz: int, batch: int, workers: int, forward=None) -> dict:
    """Evaluate a model returning pred_logits / pred_boxes with hmpe's evaluator on the val split."""
    ds = val_dataset(data, imgsz)
    loader = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers, collate_fn=collate_fn)
    ev = COCOEvaluator(ds.samples, list(ds.names), max_dets=100)
    return evaluate(_DetrOutputs(model, forward), loader, PostProcessor(len(ds.names), 300), ev, torch.device("cpu"))


def score_yolo(weights: Path, data, imgsz: int, batch: int) -> dict:
    """YOLO predictions (its own letterbox + NMS, conf 0.001, max 100 per image) scored by hmpe's evaluator."""
    from ultralytics import YOLO

    ds = val_dataset(data, imgsz)
    ev = COCOEvaluator(ds.samples, list(ds.names), max_dets=100)
    model = YOLO(str(weights))
    for i in range(0, len(ds), batch):
        idx = list(range(i, min(i + batch, len(ds))))
        ims = [np.ascontiguousarray(ds.load(j)[0].permute(1, 2, 0).numpy()[:, :, ::-1]) for j in idx]  # RGB->BGR
        res = model.predict(ims, imgsz=imgsz, conf=0.001, iou=0.7, max_det=100, device="cpu", verbose=False)
        ev.update([int(ds.samples[j].image_id) for j in idx],
                  [{"boxes": r.boxes.xyxy.cpu(), "scores": r.boxes.conf.cpu(), "labels": r.boxes.cls.long().cpu()}
                   for r in res])
    return ev.compute()
