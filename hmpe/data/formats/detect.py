"""Tell a dataset's format from its folder when the dataset YAML names none.

Users arrive with dataset YAMLs written for other tools (an ultralytics ``data.yaml`` has ``path``,
``train: images/train``, ``names`` and no ``format``). Rather than reject those, the format is read
off the layout, and the reason is reported so that a wrong guess is visible in the first line of
every task's output. The checks go from the most specific layout to the least specific one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Folder names of NWPU VHR-10's native layout.
NWPU_DIRS = ("positive image set", "ground truth")


def _split_specs(cfg: dict) -> list[Any]:
    specs = []
    for key in ("train", "val", "test"):
        value = cfg.get(key)
        specs.extend(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    return specs


def _is_voc_year_dir(folder: Path) -> bool:
    return (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir()


def detect_format(root: Path, cfg: dict) -> tuple[str | None, str]:
    """Return ``(format, reason)`` for the dataset under ``root``; ``(None, what was seen)`` if unknown.

    ``cfg`` supplies the split entries: an annotation ``.json`` (or ``{ann_file: ...}``) means COCO
    whatever the folders look like.
    """
    specs = _split_specs(cfg)
    if any(isinstance(s, dict) and "ann_file" in s or str(s).lower().endswith(".json") for s in specs):
        return "coco", "the splits name annotation .json files"
    if not root.is_dir():
        return None, f"the dataset folder {root} does not exist"
    if all((root / name).is_dir() for name in NWPU_DIRS):
        return "nwpu", "the folders 'positive image set' and 'ground truth'"
    if _is_voc_year_dir(root) or any(_is_voc_year_dir(d) for d in root.iterdir() if d.is_dir()):
        return "voc", "the folders Annotations and JPEGImages"
    if (root / "labels").is_dir() and ((root / "images").is_dir() or specs):
        return "yolo", "the folders images/ and labels/"
    if (root / "annotations").is_dir() and any((root / "annotations").glob("*.json")):
        return "coco", "annotations/*.json"
    seen = sorted(p.name for p in root.iterdir())[:8]
    return None, f"the folder {root} holds {seen}, which matches no known layout"
