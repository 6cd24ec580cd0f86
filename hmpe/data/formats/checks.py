"""Checks every reader shares: box validation, declared-vs-real image size, split list files, and the
guard that turns a bad sample into an error or a recorded skip (the bad-input policy of
:mod:`hmpe.data.formats`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from hmpe.data.images import probe_image
from hmpe.data.types import DataError, Sample

#: How far (in pixels) a box may overshoot the image border before it counts as bad. Annotation tools
#: and float round-trips routinely produce boxes that end at ``width + 0.5`` or ``-0.3``; those are
#: clipped. Anything further out is an annotation error, not rounding.
BOX_TOLERANCE_PX = 1.0

T = TypeVar("T")


class BadInputGuard:
    """Runs one sample's reader; re-raises its DataError, or records it when skipping bad input.

    Two granularities: :meth:`attempt` a whole sample (its image or annotation file cannot be used: the
    sample goes, in ``skipped``), :meth:`box` one annotation (the box goes, in ``skipped_boxes``, and the
    rest of its image stays)."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.skipped: list[DataError] = []
        self.skipped_boxes: list[DataError] = []

    def attempt(self, build: Callable[[], Sample | None]) -> Sample | None:
        try:
            return build()
        except DataError as err:
            if not self.skip_bad:
                raise
            self.skipped.append(err)
            return None

    def box(self, read: Callable[[], T]) -> T | None:
        """One annotation's ``read()`` (parse, class check, :func:`checked_box`); its DataError is raised,
        or with ``skip_bad`` recorded in ``skipped_boxes`` and None returned (the caller drops the box)."""
        try:
            return read()
        except DataError as err:
            self.record(err)
            return None

    def box_lines(self, path: Path, parse: Callable[[str, int], tuple[list[float], int]]
                  ) -> tuple[list[list[float]], list[int]]:
        """Boxes and labels of a text annotation file with one object per non-empty line: ``parse(text,
        line_number) -> (box, label)`` through :meth:`box` (under ``skip_bad`` a bad line is dropped, counted)."""
        boxes, labels = [], []
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if text.strip():
                read = self.box(lambda: parse(text, number))
                if read is not None:
                    boxes.append(read[0])
                    labels.append(read[1])
        return boxes, labels

    def record(self, err: DataError) -> None:
        """A bad annotation found outside :meth:`box` (e.g. a COCO annotation of an image not in the file)."""
        if not self.skip_bad:
            raise err
        self.skipped_boxes.append(err)


def checked_box(
    box: Sequence[float],
    width: int,
    height: int,
    file: str | os.PathLike,
    line: int | None = None,
    tolerance: float = BOX_TOLERANCE_PX,
) -> list[float]:
    """Validate an absolute xyxy box against its image and return it clipped to the image.

    The rule: coordinates must be finite; ``x2 > x1`` and ``y2 > y1`` (a zero-area box cannot be
    learnt or matched); the box may overshoot the image ``[0, width] x [0, height]`` by at most
    ``tolerance`` pixels (:data:`BOX_TOLERANCE_PX`, default 1 px) on any side, in which case it is
    clipped to the image; further out it is an error. A box that clipping leaves with zero area
    (it lay entirely in the tolerance band) is an error too.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    shown = f"({_num(x1)}, {_num(y1)}, {_num(x2)}, {_num(y2)})"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DataError(file, f"box {shown} has non-finite coordinates", line)
    if x2 <= x1 or y2 <= y1:
        raise DataError(file, f"invalid box x1,y1,x2,y2 = {shown}: needs x2 > x1 and y2 > y1", line)
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise DataError(
            file,
            f"box x1,y1,x2,y2 = {shown} lies outside the {width}x{height} image "
            f"(more than {tolerance:g} px over the border)",
            line,
        )
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
               min(max(x2, 0.0), width), min(max(y2, 0.0), height)]  # fmt: skip
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise DataError(file, f"box {shown} lies outside the {width}x{height} image", line)
    return clipped


def _num(value: float) -> str:
    return f"{value:g}"


def image_size_checked(path: Path, check_images: bool, declared: tuple[Any, Any] | None,
                        annotation: str | os.PathLike, shown: str) -> tuple[int, int]:  # fmt: skip
    """Header size of ``path``; if the annotation declares a size (and calls the image ``shown``),
    the two must agree: a mismatch means the boxes were drawn on some other version of the image."""
    width, height = probe_image(path, check_images)
    if declared is not None:
        try:
            declared_w, declared_h = int(float(declared[0])), int(float(declared[1]))
        except (TypeError, ValueError):
            raise DataError(annotation, f"image size {declared} for {shown} is not a number") from None
        if declared_w > 0 and declared_h > 0 and (declared_w, declared_h) != (width, height):
            raise DataError(
                annotation,
                f"declares {shown} as {declared_w}x{declared_h} but the image is {width}x{height}",
            )
    return width, height


def as_list(spec: Any) -> list:
    return list(spec) if isinstance(spec, (list, tuple)) else [spec]


def read_list_file(list_file: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, entry) of a split list, skipping blank lines and ``#`` comments."""
    if not list_file.is_file():
        raise DataError(list_file, "split list file not found")
    for number, text in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        entry = text.strip()
        if entry and not entry.startswith("#"):
            yield number, entry
