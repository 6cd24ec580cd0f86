"""Deployed runtimes of the peers benchmark (``--backends``, ``--fuse``): deploy-mode fusion, ONNX export,
ONNX Runtime / OpenVINO runners.

Every model (hmpe or peer) goes the same way, so that the runtimes compare like with like:

* ``deploy(model)``: the library's own inference fusion where it has one (hmpe ``DetectionModel.fuse()``,
  ultralytics ``DetectionModel.fuse()``: BatchNorm into the convs); HF D-FINE has none and runs as built.
* ``export_raw_onnx``: ``torch.onnx.export`` (TorchScript exporter, opset 17, batch 1) of the raw forward,
  outputs = the model's tensors before any post-processing (hmpe / D-FINE: class logits and boxes;
  YOLO: the head's concatenated predictions, no NMS) -- the same convention as the PyTorch timing.
* ``runner``: the ONNX file in ONNX Runtime, or converted to OpenVINO IR (``openvino.convert_model``)
  and compiled for the CPU at f32 precision, with a fixed thread count
  (:func:`hmpe.engine.deploy.export.runtime_session`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

RUNTIMES = ("torch", "onnxruntime", "openvino")


def deploy(name: str, model: nn.Module) -> str:
    """Fuse in place where the model's library offers it; returns what was done (for the report)."""
    fuse = getattr(model, "fuse", None)
    if not callable(fuse):
        return "as built (no fusion offered by its library)"
    if "verbose" in inspect.signature(fuse).parameters:  # ultralytics' fuse() prints unless told not to
        fuse(verbose=False)
        return "ultralytics fuse() (BN folded)"
    fuse()
    return "hmpe fuse() (deploy mode)"


class _Raw(nn.Module):
    """The model's raw tensors as a tuple (dict / HF output -> logits, boxes; tuple -> its first item)."""

    def __init__(self, model: nn.Module, forward: Callable | None):
        super().__init__()
        self.model, self.fn = model, forward

    def forward(self, x):
        out = self.fn(self.model, x) if self.fn is not None else self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, torch.Tensor):
            return (out,)
        if isinstance(out, dict) and "pred_logits" in out:
            return out["pred_logits"], out["pred_boxes"]
        return out.logits, out.pred_boxes  # transformers' DFineObjectDetectionOutput


def export_raw_onnx(model: nn.Module, forward: Callable | None, x: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Raw(model, forward).eval(), (x,), str(path), opset_version=17, dynamo=False,
                          input_names=["images"], do_constant_folding=True)
    return path


def runner(onnx_path: Path, backend: str, threads: int) -> Callable:
    """``run(images np.float32)`` for the file in ``backend`` (OpenVINO: the IR converted beside it)."""
    from hmpe.engine.deploy.export import runtime_session

    path = onnx_path.with_suffix(".xml") if backend == "openvino" else onnx_path
    return runtime_session(path, backend, threads, outputs=None)
