"""The one inference preprocessing: resize or letterbox by the checkpoint's own training config, and the
inverse box mapping.

Used by the trainer's validation (through :meth:`Preprocess.transform`, the evaluation pipeline of
:func:`hmpe.data.transforms.build_transforms`), ``Detector.val / predict / heatmap``, sliced inference and the
ONNX export's parity input, so a model trained with ``augment.keep_ratio=true`` (letterbox) is scored and
deployed on letterboxed inputs, and a squashing model on squashed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors

from hmpe.data.transforms import DetectionTransform, build_transforms, letterbox_orig_size
from hmpe.utils.config import default_train_config
from hmpe.utils.keys import check_imgsz


@dataclass(frozen=True)
class Preprocess:
    """``imgsz`` square network input; ``keep_ratio``: letterbox (pad bottom/right with ``pad_fill``) instead
    of squashing the image to a square."""

    imgsz: int
    keep_ratio: bool = False
    pad_fill: int = 0

    @classmethod
    def from_train_cfg(cls, train_cfg: dict | None, imgsz: int | None = None) -> "Preprocess":
        """The preprocessing a checkpoint was validated with (``ckpt["train_cfg"]``); ``imgsz`` overrides (a
        :class:`~hmpe.utils.keys.UsageError` unless a multiple of the model's largest stride)."""
        if imgsz is not None:
            check_imgsz(imgsz)
        cfg = default_train_config(train_cfg)  # a key the config lacks: its training default
        aug = cfg["augment"]
        opts = aug if isinstance(aug, dict) else {}
        return cls(int(imgsz or cfg["imgsz"]), bool(opts.get("keep_ratio", False)),
                   int(opts.get("pad_fill", 0)))

    @cached_property
    def transform(self) -> DetectionTransform:
        """The ``(image, target)`` evaluation transform (datasets: images and their boxes)."""
        return build_transforms(False, self.imgsz, {"keep_ratio": self.keep_ratio, "pad_fill": self.pad_fill})

    def __call__(self, image: Image.Image | np.ndarray | Tensor) -> Tensor:
        """PIL image, ``uint8 [H,W,3]`` array or ``uint8 [3,H,W]`` tensor -> float ``[3,imgsz,imgsz]`` in [0,1],
        bit for bit what the evaluation dataset returns for the same pixels."""
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        h, w = image.shape[-2:]
        empty = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w))
        out, _ = self.transform(image, {"boxes": empty})
        return out.as_subclass(torch.Tensor)

    def post_size(self, width: int, height: int) -> tuple[int, int]:
        """The ``(w, h)`` by which the post-processor scales normalised boxes to original-image pixels."""
        return letterbox_orig_size(width, height) if self.keep_ratio else (int(width), int(height))

    def input_scale(self, width: int, height: int) -> tuple[float, float]:
        """``(sx, sy)``: the factors by which this preprocessing scales an image's x and y into pixels of the
        ``imgsz`` input (letterbox: one factor, ``imgsz / max(w, h)``); the inverse of :meth:`to_original`'s."""
        pw, ph = self.post_size(width, height)
        return self.imgsz / pw, self.imgsz / ph

    def post_sizes(self, orig_sizes: Tensor) -> Tensor:
        """``[B,2]`` original (w, h) -> ``[B,2]`` post-processor sizes."""
        if not self.keep_ratio:
            return orig_sizes
        side = orig_sizes.amax(1, keepdim=True)
        return torch.cat((side, side), 1)

    def to_original(self, boxes: Tensor, width: int, height: int) -> Tensor:
        """xyxy boxes in pixels of the ``imgsz`` input (e.g. the ONNX outputs) -> original-image pixels."""
        pw, ph = self.post_size(width, height)
        scale = torch.tensor([pw / self.imgsz, ph / self.imgsz] * 2, dtype=boxes.dtype, device=boxes.device)
        return boxes * scale
