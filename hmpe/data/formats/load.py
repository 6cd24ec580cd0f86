"""``load_dataset``: one split of any supported format into a :class:`~hmpe.data.types.SampleList`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hmpe.data.formats.checks import BadInputGuard
from hmpe.data.formats.coco import read_coco
from hmpe.data.formats.config import SPLIT_KEYS, ensure_config
from hmpe.data.formats.nwpu import read_nwpu
from hmpe.data.formats.voc import read_voc
from hmpe.data.formats.yolo import read_yolo
from hmpe.data.synthetic import SyntheticDataset
from hmpe.data.types import DataError, SampleList

LOG = logging.getLogger("hmpe.data")


def load_dataset(
    cfg: str | os.PathLike | dict, split: str, skip_bad: bool = False, check_images: bool = True
) -> tuple[SampleList, list[str]]:
    """Read one split of a dataset into ``(samples, names)``.

    ``cfg`` is a dataset YAML, a shipped name or a dict (see :func:`load_data_config`); ``split`` a
    key of it (``train``, ``val``...). ``samples`` is a :class:`SampleList`: with ``skip_bad`` the
    samples whose image or annotation file is bad are left out and listed in ``samples.skipped``, bad
    boxes are dropped from their image and listed in ``samples.skipped_boxes`` (both logged as one
    warning). An empty
    result is an error either way. ``check_images=False`` skips the truncation check (header only).
    """
    cfg = ensure_config(cfg)
    source = cfg["_source"]
    # synthetic splits are generated, named by the split itself (num_train, num_val...)
    spec = split if cfg["format"] == "synthetic" else cfg.get(split)
    if spec is None:
        defined = [k for k in SPLIT_KEYS if cfg.get(k) is not None]
        raise DataError(source, f"no '{split}' split defined (defined: {defined})")
    if cfg["format"] != "synthetic" and not Path(cfg["path"]).is_dir():
        raise DataError(source, f"dataset folder {cfg['path']} does not exist (set `path`, or HMPE_DATASETS "
                                "for the shipped YAMLs)")  # fmt: skip
    guard = BadInputGuard(skip_bad)
    reader = _READERS[cfg["format"]]
    samples, names, category_ids = reader(cfg, spec, guard, check_images)
    result = SampleList(samples, guard.skipped, category_ids, f"{source} [{split}]", guard.skipped_boxes)
    if not result:
        reason = f"split '{split}' ({spec}) has no samples"
        if result.skipped:
            reason += f"; all {len(result.skipped)} were bad, first: {result.skipped[0]}"
        raise DataError(source, reason)
    if result.skipped or result.skipped_boxes:
        LOG.warning("skipped bad input: %s", result.summary())
    return result, names


def _read_synthetic(cfg: dict, spec: Any, guard: BadInputGuard, check_images: bool):
    dataset = SyntheticDataset.from_config(cfg, str(spec))
    return list(dataset.samples), list(dataset.names), None


_READERS = {"nwpu": read_nwpu, "voc": read_voc, "coco": read_coco, "yolo": read_yolo,
            "synthetic": _read_synthetic}  # fmt: skip
