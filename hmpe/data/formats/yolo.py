"""Reader of YOLO txt (``images/<split>/`` beside ``labels/<split>/``, normalised ``cls cx cy w h`` lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hmpe.data.formats.checks import BadInputGuard, as_list, checked_box, read_list_file
from hmpe.data.images import IMAGE_SUFFIXES, probe_image
from hmpe.data.types import DataError, Sample


def read_yolo(cfg: dict, spec: Any, guard: BadInputGuard, check_images: bool):
    """YOLO txt: a split is an image folder (``images/train``, or ``train`` meaning ``images/train``)
    or a .txt list of images; labels live at the same place with the last ``images`` path component
    replaced by ``labels`` and the suffix ``.txt``, one ``cls cx cy w h`` line per object
    (normalised). An image without a label file is a negative.
    """
    root = Path(cfg["path"])
    names = cfg["names"]
    if names is None:
        raise DataError(cfg["_source"], "a YOLO dataset YAML needs 'names'")
    samples = []
    images = [(p, where) for entry in as_list(spec) for p, where in _yolo_images(root, str(entry), cfg["_source"])]
    for image_id, (image_path, where) in enumerate(images):
        sample = guard.attempt(lambda: _yolo_sample(image_path, where, image_id, len(names), check_images, guard))
        if sample is not None:
            samples.append(sample)
    return samples, names, None


def _yolo_images(root: Path, entry: str, source: str) -> list[tuple[Path, tuple[str, int | None]]]:
    """Image paths of one split entry, each with (listing file, line) for messages."""
    target = root / entry
    if target.is_file() and target.suffix == ".txt":
        return [((target.parent / line).resolve(), (str(target), number)) for number, line in read_list_file(target)]
    for folder in (target, root / "images" / entry):
        if folder.is_dir():
            found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            return [(p, (str(p), None)) for p in found]
    raise DataError(source, f"YOLO split '{entry}' is neither an image folder nor a list file under {root}")


def yolo_label_path(image_path: Path) -> Path:
    """``.../images/x/y.jpg`` -> ``.../labels/x/y.txt`` (last ``images`` component); else next to the image."""
    parts = list(image_path.parts)
    if "images" in parts[:-1]:
        index = len(parts) - 2 - parts[-2::-1].index("images")
        parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def _yolo_sample(image_path: Path, where: tuple[str, int | None], image_id: int, num_classes: int,
                 check_images: bool, guard: BadInputGuard) -> Sample:  # fmt: skip
    if not image_path.is_file():
        raise DataError(where[0], f"listed image {image_path} not found", where[1])
    width, height = probe_image(image_path, check_images)
    label_path = yolo_label_path(image_path)
    boxes, labels = [], []
    if label_path.is_file():
        boxes, labels = guard.box_lines(
            label_path, lambda text, number: _parse_yolo_line(text, label_path, number, width, height, num_classes))
    return Sample(image_id, str(image_path), width, height, boxes, labels)


def _parse_yolo_line(text: str, label_path: Path, number: int, width: int, height: int,
                     num_classes: int) -> tuple[list[float], int]:  # fmt: skip
    fields = text.split()
    if len(fields) != 5:
        raise DataError(label_path, f"malformed line {text.strip()!r}: expected 'cls cx cy w h' (5 values, "
                                    f"got {len(fields)})", number)  # fmt: skip
    try:
        class_value = float(fields[0])
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        raise DataError(label_path, f"malformed line {text.strip()!r}: non-numeric value", number) from None
    if class_value != int(class_value) or not 0 <= class_value < num_classes:
        raise DataError(label_path, f"unknown class {fields[0]} (expected 0..{num_classes - 1})", number)
    box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    return checked_box(box, width, height, label_path, number), int(class_value)
