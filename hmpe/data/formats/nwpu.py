"""Reader of NWPU VHR-10's native layout (``positive image set/``, ``negative image set/``, ``ground truth/``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from hmpe.data.formats.checks import BadInputGuard, as_list, checked_box, read_list_file
from hmpe.data.images import probe_image
from hmpe.data.types import DataError, Sample

NWPU_NAMES = [
    "airplane", "ship", "storage tank", "baseball diamond", "tennis court",
    "basketball court", "ground track field", "harbor", "bridge", "vehicle",
]  # fmt: skip

_NWPU_NUMBER = r"\s*([-+]?\d+(?:\.\d*)?)\s*"
_NWPU_LINE = re.compile(rf"^\({_NWPU_NUMBER},{_NWPU_NUMBER}\)\s*,\s*\({_NWPU_NUMBER},{_NWPU_NUMBER}\)\s*,\s*(\d+)\s*$")
NWPU_NEGATIVE_DIR = "negative image set"


def read_nwpu(cfg: dict, spec: Any, guard: BadInputGuard, check_images: bool):
    """NWPU VHR-10 native layout; ``spec`` is a split list (or lists) of image paths under ``path``.

    Images in ``negative image set/`` have no annotations; any other image needs
    ``ground truth/<stem>.txt`` with lines ``(x1,y1),(x2,y2),class`` (class 1..C, spaces allowed).
    """
    root = Path(cfg["path"])
    names = cfg["names"] or NWPU_NAMES
    samples = []
    entries = [(root / f, n, e) for f in as_list(spec) for n, e in read_list_file(root / f)]
    for image_id, (list_file, number, entry) in enumerate(entries):
        sample = guard.attempt(
            lambda: _nwpu_sample(root, list_file, number, entry, image_id, len(names), check_images, guard)
        )
        if sample is not None:
            samples.append(sample)
    return samples, names, list(range(1, len(names) + 1))


def _nwpu_sample(root: Path, list_file: Path, number: int, entry: str, image_id: int,
                 num_classes: int, check_images: bool, guard: BadInputGuard) -> Sample:  # fmt: skip
    image_path = root / entry
    if not image_path.is_file():
        raise DataError(list_file, f"listed image '{entry}' not found ({image_path})", number)
    width, height = probe_image(image_path, check_images)
    if image_path.parent.name == NWPU_NEGATIVE_DIR:
        return Sample(image_id, str(image_path), width, height)
    annotation = root / "ground truth" / f"{image_path.stem}.txt"
    if not annotation.is_file():
        raise DataError(annotation, f"annotation file missing for positive image '{entry}'")
    boxes, labels = _parse_nwpu_annotation(annotation, width, height, num_classes, guard)
    return Sample(image_id, str(image_path), width, height, boxes, labels)


def _parse_nwpu_annotation(annotation: Path, width: int, height: int, num_classes: int, guard: BadInputGuard):
    boxes, labels = guard.box_lines(
        annotation, lambda text, number: _nwpu_line(text, annotation, number, width, height, num_classes))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def _nwpu_line(text: str, annotation: Path, number: int, width: int, height: int,
               num_classes: int) -> tuple[list[float], int]:  # fmt: skip
    match = _NWPU_LINE.match(text.strip())
    if match is None:
        raise DataError(annotation, f"malformed line {text.strip()!r}: expected (x1,y1),(x2,y2),class", number)
    class_id = int(match.group(5))
    if not 1 <= class_id <= num_classes:
        raise DataError(annotation, f"unknown class id {class_id} (expected 1..{num_classes})", number)
    coords = [float(match.group(i)) for i in range(1, 5)]
    return checked_box(coords, width, height, annotation, number), class_id - 1
