"""Reader of COCO detection JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hmpe.data.formats.checks import BadInputGuard, checked_box, image_size_checked
from hmpe.data.types import DataError, Sample


def read_coco(cfg: dict, spec: Any, guard: BadInputGuard, check_images: bool):
    """COCO JSON. ``spec`` is the annotation file (images resolve against ``path``) or
    ``{ann_file: ..., img_dir: ...}``. Category ids (any base, any gaps) map to contiguous labels in
    sorted-id order; ``category_ids`` keeps the way back. ``iscrowd`` (or ``ignore``) -> ignore=True;
    ``bbox`` is xywh. Images keep their COCO ids as ``image_id``.
    """
    root = Path(cfg["path"])
    ann_file, img_dir = _coco_split_files(root, spec, cfg["_source"])
    data = _read_json(ann_file)
    category_ids, names = _coco_categories(data, ann_file, cfg["names"])
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    images = data.get("images")
    if not isinstance(images, list):
        raise DataError(ann_file, "missing 'images' list")
    annotations_by_image = _coco_group_annotations(data, images, ann_file, guard)
    samples = []
    for entry in images:
        sample = guard.attempt(
            lambda: _coco_sample(entry, annotations_by_image, img_dir, ann_file, label_of, check_images, guard)
        )
        if sample is not None:
            samples.append(sample)
    return samples, names, category_ids


def _coco_split_files(root: Path, spec: Any, source: str) -> tuple[Path, Path]:
    if isinstance(spec, dict):
        if "ann_file" not in spec:
            raise DataError(source, f"COCO split {spec} needs 'ann_file' (and optionally 'img_dir')")
        return root / spec["ann_file"], root / spec.get("img_dir", ".")
    return root / str(spec), root


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(path, "annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, f"invalid JSON: {err.msg}", err.lineno) from None
    if not isinstance(data, dict):
        raise DataError(path, "a COCO file must be a JSON object with images/annotations/categories")
    return data


def _coco_categories(data: dict, ann_file: Path, yaml_names: list[str] | None) -> tuple[list[int], list[str]]:
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DataError(ann_file, "missing or empty 'categories' list")
    try:
        by_id = {int(c["id"]): str(c["name"]) for c in categories}
    except (KeyError, TypeError, ValueError):
        raise DataError(ann_file, "every category needs an integer 'id' and a 'name'") from None
    if len(by_id) != len(categories):
        raise DataError(ann_file, "duplicate category ids in 'categories'")
    category_ids = sorted(by_id)
    names = [by_id[c] for c in category_ids]
    if yaml_names is not None and yaml_names != names:
        raise DataError(ann_file, f"categories (sorted by id) are {names}, but the dataset YAML names {yaml_names}")
    return category_ids, names


def _coco_group_annotations(data: dict, images: list, ann_file: Path, guard: BadInputGuard) -> dict:
    image_ids = {entry.get("id") for entry in images if isinstance(entry, dict)}
    grouped: dict[Any, list[dict]] = {}
    for ann in data.get("annotations") or []:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in image_ids:
            guard.record(DataError(ann_file, f"annotation {_ann_label(ann)} refers to image_id {image_id!r}, "
                                             "which is not in 'images'"))  # fmt: skip
            continue
        grouped.setdefault(image_id, []).append(ann)
    return grouped


def _ann_label(ann: Any) -> str:
    return f"id {ann.get('id')!r}" if isinstance(ann, dict) else repr(ann)


def _coco_sample(entry: Any, annotations_by_image: dict, img_dir: Path, ann_file: Path,
                 label_of: dict[int, int], check_images: bool, guard: BadInputGuard) -> Sample:  # fmt: skip
    if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
        raise DataError(ann_file, f"image entry {entry!r} needs 'id' and 'file_name'")
    image_path = img_dir / entry["file_name"]
    declared = (entry.get("width"), entry.get("height")) if "width" in entry and "height" in entry else None
    width, height = image_size_checked(image_path, check_images, declared, ann_file, str(entry["file_name"]))
    boxes, labels, ignore = [], [], []
    for ann in annotations_by_image.get(entry["id"], []):
        where = f"{ann_file} (annotation {_ann_label(ann)}, image {entry['file_name']})"
        read = guard.box(lambda: _coco_box(ann, where, width, height, label_of))
        if read is not None:
            boxes.append(read[0])
            labels.append(read[1])
            ignore.append(bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0)))
    return Sample(int(entry["id"]), str(image_path), width, height, boxes, labels, ignore)


def _coco_box(ann: dict, where: str, width: int, height: int, label_of: dict[int, int]) -> tuple[list[float], int]:
    """One annotation -> (checked xyxy box, contiguous label)."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise DataError(where, f"bbox must be [x, y, w, h], got {bbox!r}")
    try:
        x, y, w, h = (float(v) for v in bbox)
        category = int(ann.get("category_id"))
    except (TypeError, ValueError):
        raise DataError(where, f"non-numeric bbox {bbox!r} or category_id {ann.get('category_id')!r}") from None
    if category not in label_of:
        raise DataError(where, f"unknown category_id {category} (categories: {sorted(label_of)})")
    return checked_box([x, y, x + w, y + h], width, height, where), label_of[category]
