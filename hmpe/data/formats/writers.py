"""Writers used by ``hmpe data convert``: images placed (linked or copied) under an output folder, COCO JSON,
YOLO txt and the dataset YAML."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml
from PIL import Image

from hmpe.data.formats.config import SPLIT_KEYS
from hmpe.data.formats.yolo import yolo_label_path
from hmpe.data.images import ImageLoader
from hmpe.data.types import Sample

LOG = logging.getLogger("hmpe.data")


def image_relative_name(sample: Sample, image_root: str | os.PathLike | None) -> str:
    """Where a sample's image goes inside an output image folder: its path relative to the source
    root (keeps NWPU's ``positive image set/001.jpg`` and ``negative image set/001.jpg`` apart), or
    ``<image_id>_<name>`` when it is not under the root, or ``<image_id>.png`` for generated images.
    """
    if sample.path is None:
        return f"{sample.image_id:06d}.png"
    path = Path(sample.path)
    if image_root is not None:
        try:
            return path.resolve().relative_to(Path(image_root).resolve()).as_posix()
        except ValueError:
            pass
    return f"{sample.image_id:06d}_{path.name}"


def place_images(
    samples: Sequence[Sample],
    dest_dir: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    mode: str = "symlink",
    image_loader: ImageLoader | None = None,
) -> list[Sample]:
    """Put every sample's image under ``dest_dir`` and return the samples re-pointed there.

    ``mode`` is ``symlink`` (default: no copy of a large dataset; falls back to copying where links
    are not allowed) or ``copy``. Generated samples (``path=None``) are rendered with
    ``image_loader(sample)`` and saved as PNG.
    """
    if mode not in ("symlink", "copy"):
        raise ValueError(f"mode must be 'symlink' or 'copy', got {mode!r}")
    dest_dir = Path(dest_dir)
    placed = []
    for sample in samples:
        target = dest_dir / image_relative_name(sample, image_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if sample.path is None:
            if image_loader is None:
                raise ValueError(f"sample {sample.image_id} has no image file and no image_loader was given")
            Image.fromarray(np.asarray(image_loader(sample), dtype=np.uint8)).save(target)
        else:
            _link_or_copy(Path(sample.path), target, mode)
        placed.append(Sample(sample.image_id, str(target), sample.width, sample.height,
                             sample.boxes, sample.labels, sample.ignore))  # fmt: skip
    return placed


def _link_or_copy(source: Path, target: Path, mode: str) -> None:
    if mode == "symlink":
        try:
            target.symlink_to(source.resolve())
            return
        except OSError:
            pass
    shutil.copy2(source, target)


def write_coco(
    samples: Sequence[Sample],
    names: Sequence[str],
    out_json: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    category_ids: Sequence[int] | None = None,
) -> Path:
    """Write samples as a COCO detection JSON.

    ``file_name`` is the image path relative to ``image_root`` (absolute when no root is given or
    the image is elsewhere). Category ids are ``category_ids`` when given (so a COCO source keeps
    its ids), else 1..C. Ignore boxes become ``iscrowd: 1``; boxes are written as xywh.
    """
    ids = list(category_ids) if category_ids is not None else list(range(1, len(names) + 1))
    if len(ids) != len(names):
        raise ValueError(f"{len(ids)} category ids for {len(names)} names")
    images, annotations = [], []
    for sample in samples:
        images.append({"id": int(sample.image_id), "file_name": _coco_file_name(sample, image_root),
                       "width": int(sample.width), "height": int(sample.height)})  # fmt: skip
        for box, label, ignore in zip(sample.boxes.tolist(), sample.labels.tolist(), sample.ignore.tolist()):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(sample.image_id), "category_id": int(ids[label]),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(ignore), "segmentation": [],
            })  # fmt: skip
    categories = [{"id": int(cid), "name": str(name), "supercategory": "object"} for cid, name in zip(ids, names)]
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"images": images, "annotations": annotations, "categories": categories}
    out_json.write_text(json.dumps(payload), encoding="utf-8")
    return out_json


def _coco_file_name(sample: Sample, image_root: str | os.PathLike | None) -> str:
    if sample.path is None:
        raise ValueError(f"sample {sample.image_id} has no image file; place_images() it first")
    if image_root is not None:
        try:
            return Path(sample.path).relative_to(Path(image_root)).as_posix()
        except ValueError:
            pass
    return str(Path(sample.path).resolve())


def write_yolo(
    samples: Sequence[Sample],
    names: Sequence[str],
    out_dir: str | os.PathLike,
    split: str = "train",
    image_root: str | os.PathLike | None = None,
    image_mode: str = "symlink",
    image_loader: ImageLoader | None = None,
) -> dict[str, int]:
    """Write one split in YOLO layout: ``out_dir/images/<split>/...`` and ``out_dir/labels/<split>/...txt``.

    Images are linked or copied (see :func:`place_images`); every image gets a label file (empty for
    negatives). YOLO txt has no ignore flag, so ignore boxes are left out, as ultralytics' own VOC
    conversion does with ``difficult``; they are counted in the returned report
    (``{"images", "objects", "ignored_dropped"}``) and logged. Coordinates are written with 8 decimals.
    """
    out_dir = Path(out_dir)
    placed = place_images(samples, out_dir / "images" / split, image_root, image_mode, image_loader)
    report = {"images": 0, "objects": 0, "ignored_dropped": 0}
    for sample in placed:
        label_path = yolo_label_path(Path(sample.path))
        label_path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for box, label, ignore in zip(sample.boxes.tolist(), sample.labels.tolist(), sample.ignore.tolist()):
            if ignore:
                report["ignored_dropped"] += 1
                continue
            lines.append(_yolo_line(box, label, sample.width, sample.height))
        label_path.write_text("".join(lines), encoding="utf-8")
        report["images"] += 1
        report["objects"] += len(lines)
    if report["ignored_dropped"]:
        LOG.warning("%s [%s]: %d ignore (difficult/crowd) boxes left out: YOLO txt cannot mark them",
                    out_dir, split, report["ignored_dropped"])  # fmt: skip
    return report


def _yolo_line(box: Sequence[float], label: int, width: int, height: int) -> str:
    x1, y1, x2, y2 = box
    values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
    return f"{label} " + " ".join(f"{v:.8f}" for v in values) + "\n"


def write_data_yaml(out_path: str | os.PathLike, cfg: dict, comment: str = "") -> Path:
    """Write a dataset YAML (keys in a readable order; ``_``-prefixed bookkeeping keys left out)."""
    order = ["path", "format", *SPLIT_KEYS, "names"]
    public = {k: v for k, v in cfg.items() if not k.startswith("_")}
    ordered = {k: public[k] for k in order if k in public} | {k: v for k, v in public.items() if k not in order}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    out_path.write_text(header + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out_path
