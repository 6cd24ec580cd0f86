"""The one internal sample form every reader produces and every consumer reads, the list the readers
return, and the error every bad input raises."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

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


class DataError(Exception):
    """Bad dataset input. ``str(err)`` is ``"FILE:LINE: what is wrong"`` (``"FILE: ..."`` without a line).

    ``DataError(file, what, line)`` is the normal form. The one-argument form ``DataError(message)``
    takes a finished message; it exists because torch's DataLoader re-raises worker exceptions as
    ``type(err)(message)``.
    """

    def __init__(self, file: str | os.PathLike, what: str = "", line: int | None = None):
        self.file = str(file)
        self.what = what
        self.line = line
        if not what:
            message = self.file
        elif line is None:
            message = f"{self.file}: {what}"
        else:
            message = f"{self.file}:{line}: {what}"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.file, self.what, self.line))


class SampleList(list):
    """``list[Sample]`` plus what the reader learnt while reading.

    Attributes:
        skipped: the :class:`DataError` of every sample left out under ``skip_bad=True`` (its image or
            annotation file cannot be used).
        skipped_boxes: the :class:`DataError` of every annotation dropped under ``skip_bad=True`` (a bad box,
            class or line; the rest of its image is kept), and of annotations that belong to no sample, such
            as a COCO annotation of an unknown image.
        category_ids: ``category_ids[label]`` is the class id the source format uses for the
            contiguous ``label`` (COCO category ids, NWPU's 1..10); ``None`` when the source has no
            ids of its own (VOC names, YOLO 0..C-1, synthetic). Needed to write predictions back.
        source: the annotation source that was read (for messages).
    """

    def __init__(
        self,
        samples: Sequence[Sample] = (),
        skipped: Sequence[DataError] = (),
        category_ids: list[int] | None = None,
        source: str = "",
        skipped_boxes: Sequence[DataError] = (),
    ):
        super().__init__(samples)
        self.skipped: list[DataError] = list(skipped)
        self.skipped_boxes: list[DataError] = list(skipped_boxes)
        self.category_ids = category_ids
        self.source = source

    def summary(self, max_reasons: int = 5) -> str:
        """One human-readable paragraph: how many samples were loaded / skipped, how many boxes dropped, and
        the first reasons."""
        text = (f"{self.source}: {len(self)} samples loaded, {len(self.skipped)} skipped as bad, "
                f"{len(self.skipped_boxes)} bad boxes dropped")
        errors = self.skipped + self.skipped_boxes
        reasons = [f"\n  - {err}" for err in errors[:max_reasons]]
        more = len(errors) - max_reasons
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return text + "".join(reasons) + tail
