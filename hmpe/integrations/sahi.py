"""An hmpe checkpoint as a SAHI ``DetectionModel`` (optional extra ``hmpe[sahi]``).

    from sahi.predict import get_sliced_prediction
    from hmpe.integrations.sahi import HmpeDetectionModel

    model = HmpeDetectionModel(model_path="best.pt", confidence_threshold=0.25, device="cpu")
    result = get_sliced_prediction("big.png", model, slice_height=512, slice_width=512,
                                   overlap_height_ratio=0.2, overlap_width_ratio=0.2)

``model_path``: what :class:`~hmpe.api.Detector` takes as weights (a ``.pt``, a ``save_pretrained`` folder or a
shipped name); or ``model=`` an existing :class:`~hmpe.api.Detector` (it keeps its own device). Each image SAHI
hands over (a slice, or the whole image for SAHI's standard pass) goes through the checkpoint's own
preprocessing (resize or letterbox to its ``imgsz``, or to ``image_size=``), the batch of slices in one forward
pass. Detections with score >= ``confidence_threshold`` are kept, boxes clipped to the image they were predicted
on (as hmpe's own slicer clips them to the tile); category ids are the checkpoint's class indices (0-based),
names its class names.

SAHI then merges the slices by its own postprocess (``postprocess_type``); hmpe's own slicer
(:mod:`hmpe.engine.eval.slicing`) additionally resolves border fragments before its NMS, so the two agree only
where that step changes nothing (README, "Inside SAHI").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hmpe.api import Detector

try:
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction
except ImportError as _err:  # one line, naming the extra
    raise ImportError(f'hmpe.integrations.sahi needs sahi ({_err}): pip install "hmpe[sahi]"') from None

__all__ = ["HmpeDetectionModel"]


def _rgb(image: np.ndarray) -> np.ndarray:
    """A SAHI image (``[H,W]`` grey, ``[H,W,3]`` RGB or ``[H,W,4]`` RGBA) -> contiguous ``uint8 [H,W,3]``."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an image array [H,W,3], got shape {tuple(image.shape)}")
    return np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)


def _nested(values: list | None) -> list | None:
    """SAHI's single-image form ``[a, b]`` -> ``[[a, b]]`` (older SAHI versions pass it so)."""
    if values and isinstance(values[0], (int, float)):
        return [values]
    return values


class HmpeDetectionModel(DetectionModel):
    """SAHI ``DetectionModel`` backed by an hmpe :class:`~hmpe.api.Detector` (see the module doc)."""

    def load_model(self) -> None:
        if not self.model_path:
            raise ValueError("HmpeDetectionModel: give model_path= (a .pt checkpoint, a save_pretrained folder or "
                             "a shipped weights name) or model= (an hmpe Detector)")
        self.set_model(Detector(model=None, weights=str(self.model_path), device=str(self.device)))

    def set_model(self, model: Any, **kwargs: Any) -> None:
        if not isinstance(model, Detector):
            raise TypeError(f"HmpeDetectionModel: model= expects an hmpe.api.Detector, got {type(model).__name__}")
        self._pre = model.preprocess(self.image_size)  # loads the weights: a bad checkpoint fails here
        self.model = model
        if self.category_mapping is None:
            self.category_mapping = {str(i): name for i, name in enumerate(model.names)}

    def perform_inference(self, image: np.ndarray) -> None:
        self.perform_batch_inference([image])

    @torch.no_grad()
    def perform_batch_inference(self, images: list[np.ndarray]) -> None:
        """All ``images`` in one forward pass (each resized to the model input); stores one hmpe
        :class:`~hmpe.api.Prediction` per image (score >= ``confidence_threshold``, boxes in its pixels)."""
        if self.model is None:
            raise RuntimeError("HmpeDetectionModel: no model loaded (load_model() or set_model() first)")
        arrays = [_rgb(im) for im in images]
        # the Detector's whole-image path (slice=None: the merge arguments are not used)
        self._original_predictions = self.model._predict_arrays(
            [""] * len(arrays), arrays, conf=float(self.confidence_threshold), pre=self._pre, batch=len(arrays),
            slice=None, overlap=0.0, merge="nms", merge_iou=0.5, full_image=False)
        self._original_shapes = [im.shape for im in arrays]

    @property
    def num_categories(self) -> int:
        return len(self.category_mapping)

    @property
    def has_mask(self) -> bool:
        return False

    @property
    def category_names(self) -> list[str]:
        return list(self.category_mapping.values())

    def _create_object_prediction_list_from_original_predictions(
            self, shift_amount_list: list | None = [[0, 0]], full_shape_list: list | None = None) -> None:
        shift_amount_list = _nested(shift_amount_list) or [[0, 0]]
        full_shape_list = _nested(full_shape_list)
        per_image = []
        for i, pred in enumerate(self._original_predictions):
            shift = shift_amount_list[i] if i < len(shift_amount_list) else shift_amount_list[0]
            full_shape = full_shape_list[i] if full_shape_list and i < len(full_shape_list) else None
            boxes = pred.boxes.astype(np.float64).copy()
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, pred.width)  # the model saw this image only
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, pred.height)
            per_image.append([
                ObjectPrediction(bbox=box.tolist(), category_id=int(c), score=float(s), shift_amount=list(shift),
                                 category_name=self.category_mapping.get(str(int(c)), str(int(c))),
                                 full_shape=full_shape)
                for box, s, c in zip(boxes, pred.scores, pred.labels)])
        self._object_prediction_list_per_image = per_image
