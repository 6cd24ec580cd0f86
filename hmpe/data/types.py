"""The one internal sample form every reader produces and every consumer reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """One image and its annotations.

    boxes are absolute pixel xyxy in the original image; labels are contiguous 0..C-1;
    ignore marks boxes that neither count as misses nor make detections false positives
    (VOC ``difficult``, COCO ``iscrowd``).
    """

    image_id: int
    path: str | None  # image file; None for generated (synthetic) samples
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (N,4) xyxy
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (N,)
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))  # (N,)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.ignore is None or len(self.ignore) == 0:
            self.ignore = np.zeros(len(self.labels), dtype=bool)
        self.ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.ignore)):
            raise ValueError(
                f"sample {self.path or self.image_id}: {len(self.boxes)} boxes, "
                f"{len(self.labels)} labels, {len(self.ignore)} ignore flags"
            )

    @property
    def is_negative(self) -> bool:
        return len(self.labels) == 0
