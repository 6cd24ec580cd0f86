"""``hmpe data stats`` and ``hmpe data convert`` (the command line: :mod:`hmpe.cli`, keys in the key table,
``TASKS["data"]``; :func:`run_data` runs one command).

Stats are what one checks before training a small-object detector: how many images and negatives,
objects per class, and objects by size. Size bins use the box area in original-image pixels and are
disjoint: tiny < 16², small 16²..32², medium 32²..96², large >= 96² (COCO's "small" is tiny + small).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from hmpe.data.formats import (
    SPLIT_KEYS,
    format_note,
    load_data_config,
    load_dataset,
    place_images,
    write_coco,
    write_data_yaml,
    write_yolo,
)
from hmpe.data.synthetic import SyntheticDataset
from hmpe.data.types import Sample

SIZE_BINS = (("tiny", 16**2), ("small", 32**2), ("medium", 96**2), ("large", float("inf")))


def _defined_splits(cfg: dict) -> list[str]:
    if cfg["format"] == "synthetic":
        return [k for k in SPLIT_KEYS if cfg.get(f"num_{k}") is not None]
    return [k for k in SPLIT_KEYS if cfg.get(k) is not None]


def count_samples(samples: Sequence[Sample], names: Sequence[str]) -> dict:
    """Counts for one list of samples (see :func:`data_stats` for the keys)."""
    per_class = np.zeros(len(names), np.int64)
    by_size = dict.fromkeys((name for name, _ in SIZE_BINS), 0)
    objects = ignored = negatives = 0
    for sample in samples:
        negatives += sample.is_negative
        objects += len(sample.labels)
        ignored += int(sample.ignore.sum())
        per_class += np.bincount(sample.labels, minlength=len(names))[: len(names)]
        areas = (sample.boxes[:, 2] - sample.boxes[:, 0]) * (sample.boxes[:, 3] - sample.boxes[:, 1])
        for area in areas:
            by_size[next(name for name, limit in SIZE_BINS if area < limit)] += 1
    return {
        "images": len(samples),
        "negative_images": int(negatives),
        "objects": int(objects),
        "ignored_objects": int(ignored),
        "objects_per_class": {name: int(n) for name, n in zip(names, per_class)},
        "objects_by_size": by_size,
    }


def _add_counts(total: dict, part: dict) -> dict:
    out = {}
    for key, value in part.items():
        if isinstance(value, dict):
            out[key] = {k: total.get(key, {}).get(k, 0) + v for k, v in value.items()}
        else:
            out[key] = total.get(key, 0) + value
    return out


def data_stats(data: str | os.PathLike | dict, splits: Sequence[str] | None = None, skip_bad: bool = False) -> dict:
    """Dataset statistics per split and in total.

    ``splits`` defaults to every split the YAML defines among train/val/test. Returns
    ``{"names", "splits": {split: counts}, "total": counts}``; counts hold ``images``,
    ``negative_images``, ``objects`` (ignore boxes included), ``ignored_objects``,
    ``objects_per_class`` {name: n}, ``objects_by_size`` {tiny, small, medium, large} and
    ``skipped`` (samples left out under ``skip_bad``: unreadable image or annotation file) and
    ``skipped_boxes`` (bad boxes dropped under ``skip_bad``, their images kept); the messages of both are in
    ``skipped_reasons``.
    """
    cfg = load_data_config(data)
    names: list[str] = []
    per_split: dict[str, dict] = {}
    total: dict = {}
    for split in splits or _defined_splits(cfg):
        samples, names = load_dataset(cfg, split, skip_bad=skip_bad)
        counts = count_samples(samples, names)
        counts["skipped"] = len(samples.skipped)
        counts["skipped_boxes"] = len(samples.skipped_boxes)
        per_split[split] = counts | {"skipped_reasons": [str(e) for e in samples.skipped + samples.skipped_boxes]}
        total = _add_counts(total, counts)
    return {"names": names, "source": f"{cfg['_source']} ({format_note(cfg)})", "splits": per_split, "total": total}


def format_stats(stats: dict) -> str:
    """A plain-text table of :func:`data_stats` output: one column per split plus the total."""
    columns = list(stats["splits"]) + ["total"]
    tables = [stats["splits"][c] for c in stats["splits"]] + [stats["total"]]
    rows: list[tuple[str, list]] = [
        ("images", [t["images"] for t in tables]),
        ("negative images", [t["negative_images"] for t in tables]),
        ("objects", [t["objects"] for t in tables]),
        ("  ignored (difficult/crowd)", [t["ignored_objects"] for t in tables]),
        ("skipped as bad", [t["skipped"] for t in tables]),
        ("bad boxes dropped", [t["skipped_boxes"] for t in tables]),
        ("objects per class:", [""] * len(tables)),
    ]
    rows += [(f"  {name}", [t["objects_per_class"].get(name, 0) for t in tables]) for name in stats["names"]]
    rows.append(("objects by box area (px):", [""] * len(tables)))
    labels = {"tiny": "tiny   < 16^2", "small": "small  16^2-32^2",
              "medium": "medium 32^2-96^2", "large": "large  >= 96^2"}  # fmt: skip
    rows += [(f"  {labels[k]}", [t["objects_by_size"][k] for t in tables]) for k, _ in SIZE_BINS]
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"dataset: {stats['source']}", "".ljust(width) + "".join(f"{c:>10}" for c in columns)]
    lines += [label.ljust(width) + "".join(f"{v:>10}" for v in values) for label, values in rows]
    for split, table in stats["splits"].items():
        lines += [f"skipped in {split}: {reason}" for reason in table["skipped_reasons"][:5]]
    return "\n".join(lines)


def print_stats(stats: dict, file=None) -> None:
    print(format_stats(stats), file=file or sys.stdout)


def data_convert(
    data: str | os.PathLike | dict,
    to: str,
    out_dir: str | os.PathLike,
    splits: Sequence[str] | None = None,
    skip_bad: bool = False,
    image_mode: str = "symlink",
) -> Path:
    """Convert every split of a dataset to ``coco`` or ``yolo`` under ``out_dir``; returns the new
    ``out_dir/data.yaml``, which :func:`load_data_config` reads directly.

    Images are symlinked (``image_mode="copy"`` copies) under ``out_dir/images/<split>/`` keeping
    their path relative to the source root; generated (synthetic) images are rendered to PNG.
    COCO output: ``annotations/<split>.json`` (a COCO source keeps its category ids, others get
    1..C). YOLO output: ``labels/<split>/...txt`` (ignore boxes are left out and counted, see
    :func:`hmpe.data.formats.write_yolo`).
    """
    if to not in ("coco", "yolo"):
        raise ValueError(f"convert to 'coco' or 'yolo', not {to!r}")
    cfg = load_data_config(data)
    out_dir = Path(out_dir)
    image_root = cfg.get("path")
    out_cfg: dict = {"path": ".", "format": to}
    names: list[str] = []
    for split in splits or _defined_splits(cfg):
        samples, names = load_dataset(cfg, split, skip_bad=skip_bad)
        loader = _image_loader_for(cfg, split)
        if to == "coco":
            placed = place_images(samples, out_dir / "images" / split, image_root, image_mode, loader)
            write_coco(placed, names, out_dir / "annotations" / f"{split}.json", out_dir / "images" / split,
                       samples.category_ids if cfg["format"] == "coco" else None)  # fmt: skip
            out_cfg[split] = {"ann_file": f"annotations/{split}.json", "img_dir": f"images/{split}"}
        else:
            write_yolo(samples, names, out_dir, split, image_root, image_mode, loader)
            out_cfg[split] = f"images/{split}"
    out_cfg["names"] = list(names)
    return write_data_yaml(out_dir / "data.yaml", out_cfg, f"converted by hmpe from {cfg['_source']}")


def _image_loader_for(cfg: dict, split: str):
    if cfg["format"] != "synthetic":
        return None
    return SyntheticDataset.from_config(cfg, split).render_sample


def run_data(command: str, data: str | os.PathLike | dict, splits: Sequence[str] | None = None,
             skip_bad: bool = False, to: str | None = None, out: str | os.PathLike | None = None,
             copy_images: bool = False) -> None:
    """``hmpe data stats`` (the table on stdout) or ``hmpe data convert`` (``to`` and ``out`` required; the
    written data.yaml named on stdout). Bad data raises :class:`~hmpe.data.formats.DataError` naming the file."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if command == "stats":
        print_stats(data_stats(data, splits, skip_bad))
    elif command == "convert":
        if to is None or out is None:
            raise ValueError("hmpe data convert needs to=coco|yolo and out=DIR")
        written = data_convert(data, to, out, splits, skip_bad, "copy" if copy_images else "symlink")
        print(f"wrote {written}")
    else:
        raise ValueError(f"hmpe data: unknown command {command!r} (stats, convert)")
