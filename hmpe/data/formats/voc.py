"""Reader of Pascal VOC (``Annotations/*.xml``, ``ImageSets/Main/*.txt``, ``JPEGImages/``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hmpe.data.formats.checks import BadInputGuard, as_list, checked_box, image_size_checked, read_list_file
from hmpe.data.types import DataError, Sample

VOC_NAMES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip


def read_voc(cfg: dict, spec: Any, guard: BadInputGuard, check_images: bool):
    """Pascal VOC: each split entry is ``[YEAR_DIR/]SET`` (``VOC2007/trainval``) naming
    ``YEAR_DIR/ImageSets/Main/SET.txt``, or a path to such a .txt; a list of entries is merged (VOC07+12).
    ``difficult`` objects are kept with ``ignore=True``. Coordinates are used as written.
    """
    root = Path(cfg["path"])
    names = cfg["names"] or VOC_NAMES
    class_index = {name: i for i, name in enumerate(names)}
    samples = []
    entries = [(year_dir, list_file, number, line)
               for entry in as_list(spec)
               for year_dir, list_file in [_voc_split_files(root, str(entry))]
               for number, line in read_list_file(list_file)]  # fmt: skip
    for image_id, (year_dir, list_file, number, line) in enumerate(entries):
        stem = line.split()[0]
        sample = guard.attempt(
            lambda: _voc_sample(year_dir, list_file, number, stem, image_id, class_index, check_images, guard)
        )
        if sample is not None:
            samples.append(sample)
    return samples, names, None


def _voc_split_files(root: Path, entry: str) -> tuple[Path, Path]:
    if entry.endswith(".txt"):
        list_file = root / entry
        return list_file.parents[2], list_file
    year_dir = root / Path(entry).parent
    return year_dir, year_dir / "ImageSets" / "Main" / f"{Path(entry).name}.txt"


def _voc_sample(year_dir: Path, list_file: Path, number: int, stem: str, image_id: int,
                class_index: dict[str, int], check_images: bool, guard: BadInputGuard) -> Sample:  # fmt: skip
    xml_path = year_dir / "Annotations" / f"{stem}.xml"
    if not xml_path.is_file():
        raise DataError(list_file, f"annotation {xml_path} not found for listed id '{stem}'", number)
    try:
        tree = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise DataError(xml_path, f"malformed XML: {err}", err.position[0]) from None
    filename = (tree.findtext("filename") or "").strip() or f"{stem}.jpg"
    image_path = year_dir / "JPEGImages" / filename
    size = tree.find("size")
    declared = (size.findtext("width"), size.findtext("height")) if size is not None else None
    width, height = image_size_checked(image_path, check_images, declared, xml_path, filename)
    boxes, labels, ignore = [], [], []
    for k, obj in enumerate(tree.iter("object"), start=1):
        read = guard.box(lambda: _voc_object(obj, k, xml_path, class_index, width, height))
        if read is not None:
            boxes.append(read[0])
            labels.append(read[1])
            ignore.append(read[2])
    return Sample(image_id, str(image_path), width, height, boxes, labels, ignore)


def _voc_object(obj: ET.Element, k: int, xml_path: Path, class_index: dict[str, int],
                width: int, height: int) -> tuple[list[float], int, bool]:  # fmt: skip
    name = (obj.findtext("name") or "").strip()
    if name not in class_index:
        raise DataError(xml_path, f"object {k}: unknown class '{name}' (known: {list(class_index)})")
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise DataError(xml_path, f"object {k} ('{name}'): missing <bndbox>")
    try:
        coords = [float(bndbox.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
    except (TypeError, ValueError):
        raise DataError(xml_path, f"object {k} ('{name}'): <bndbox> needs numeric xmin, ymin, xmax, ymax") from None
    try:
        difficult = bool(int(float(obj.findtext("difficult") or 0)))
    except ValueError:
        raise DataError(xml_path, f"object {k} ('{name}'): <difficult> is not 0/1") from None
    box = checked_box(coords, width, height, f"{xml_path} (object {k})")
    return box, class_index[name], difficult
