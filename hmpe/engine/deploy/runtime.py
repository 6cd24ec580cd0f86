"""Exported files as detectors: ``hmpe predict`` / ``hmpe val`` with ``weights=`` an ``hmpe export`` file.

    hmpe predict images/ weights=best.onnx                 # ONNX Runtime (fp32, or the INT8 QDQ file)
    hmpe predict images/ weights=best_openvino/best.xml    # OpenVINO (fp32 or the NNCF INT8 IR)
    hmpe val weights=best_int8.onnx data=my-data.yaml      # the file's accuracy, as hmpe val scores a .pt

The file's graph already holds the post-processing (:mod:`hmpe.engine.deploy.export`): ``boxes`` xyxy in input
pixels, ``scores`` descending, ``labels``. :class:`ExportedModel` hands them to the rest of hmpe as the heads a
PyTorch detector returns -- ``pred_boxes`` normalised cxcywh, ``pred_logits`` the logit of each score at its label
and ``-inf`` elsewhere -- so that the one post-processor (top-K over query x class, with K the file's detection
count) picks the same detections with the same scores and maps them to original pixels, and predict, sliced
predict, GeoTIFF windows and val run unchanged. The preprocessing comes from the file's metadata (``imgsz``,
``keep_ratio``, ``pad_fill``), the class names from ``names``. The spatial size is the one exported; the batch
is free. Heatmaps need the PyTorch model (its internals are not outputs of the graph). An exported file names its
dataset only when that is a shipped one (``nwpu-vhr10``), never a path: elsewhere ``hmpe val`` asks for ``data=``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hmpe.engine.deploy.export import runtime_session
from hmpe.models.rtdetr.postprocess import PostProcessor
from hmpe.utils.boxes import box_xyxy_to_cxcywh

__all__ = ["EXPORTED_SUFFIXES", "ExportedModel", "exported_metadata", "is_exported", "load_exported"]

#: file suffix -> the runtime that runs it
EXPORTED_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino"}


def is_exported(weights: str | Path | None) -> bool:
    """Whether ``weights`` names an exported file (``.onnx`` or an OpenVINO ``.xml``) rather than a checkpoint."""
    return weights is not None and Path(str(weights)).suffix.lower() in EXPORTED_SUFFIXES


def exported_metadata(path: str | Path) -> dict[str, str]:
    """The metadata ``hmpe export`` wrote into the file: ONNX ``metadata_props``, OpenVINO ``rt_info``
    (``model_info``). A file without ``names`` and ``imgsz`` was not written by ``hmpe export``: a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights={path}: no such file")
    if path.suffix.lower() == ".onnx":
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    else:
        import openvino as ov

        info = ov.Core().read_model(str(path)).get_rt_info()
        meta = {k: info["model_info"][k].astype(str) for k in info["model_info"]} if "model_info" in info else {}
    if not {"names", "imgsz"} <= set(meta):
        raise ValueError(f"weights={path}: no hmpe metadata (names, imgsz) in this file; predict and val take "
                         f"files written by hmpe export, checkpoints (.pt), pretrained folders and shipped names")
    return meta


class ExportedModel(nn.Module):
    """An exported file run by its runtime, returning PyTorch-style heads (module docstring).

    ``forward(images float [B,3,H,W])`` -> ``{"pred_logits": [B,K,C], "pred_boxes": [B,K,4]}`` on the CPU."""

    def __init__(self, path: str | Path, num_classes: int, imgsz: tuple[int, int], threads: int | None = None):
        super().__init__()
        self.path, self.num_classes, self.imgsz = Path(path), int(num_classes), imgsz
        self.run = runtime_session(self.path, EXPORTED_SUFFIXES[self.path.suffix.lower()], threads)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if tuple(images.shape[-2:]) != self.imgsz:
            raise ValueError(f"weights={self.path}: exported for {self.imgsz[0]}x{self.imgsz[1]} inputs, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")
        boxes, scores, labels = (torch.from_numpy(np.asarray(t)) for t in
                                 self.run(images.detach().cpu().float().numpy()))
        h, w = self.imgsz
        cxcywh = box_xyxy_to_cxcywh(boxes.float() / torch.tensor([w, h, w, h], dtype=torch.float32))
        logits = torch.full((*scores.shape, self.num_classes), float("-inf"))  # [B,K,C]
        logits.scatter_(-1, labels.long().unsqueeze(-1), torch.logit(scores.float()).unsqueeze(-1))
        return {"pred_logits": logits, "pred_boxes": cxcywh}


def load_exported(path: str | Path, threads: int | None = None) -> tuple[ExportedModel, PostProcessor, dict]:
    """An exported file -> ``(model, postprocessor, record)``, as :func:`hmpe.engine.checkpoint.load_for_inference`
    returns for a checkpoint; ``record`` holds what a checkpoint would: ``names``, the preprocessing in
    ``train_cfg`` and ``model_cfg.name``, plus ``exported`` (the file) and ``data`` (the name of the shipped dataset
    the model was trained on, or None: files record no dataset path)."""
    meta = exported_metadata(path)
    names = json.loads(meta["names"])
    h, w = (int(v) for v in json.loads(meta["imgsz"]))
    keep_ratio = meta.get("keep_ratio", "false") == "true"
    fill = re.search(r"pad bottom/right with (\d+)", meta.get("preprocess", ""))  # files before the pad_fill entry
    pad_fill = int(meta.get("pad_fill", fill.group(1) if fill else 0))
    model = ExportedModel(path, len(names), (h, w), threads)
    k = int(model(torch.zeros(1, 3, h, w))["pred_logits"].shape[1])  # detections per image of the graph
    record = {"names": names, "exported": str(path), "data": meta.get("data"),
              "model_cfg": {"name": meta.get("model", "")},
              "train_cfg": {"imgsz": h, "augment": {"keep_ratio": keep_ratio, "pad_fill": pad_fill}}}
    return model.eval(), PostProcessor(len(names), num_top_queries=k), record
