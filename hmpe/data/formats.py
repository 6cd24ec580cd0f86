"""Dataset readers and writers: NWPU VHR-10, Pascal VOC, COCO JSON, YOLO txt, and the dataset YAML.

Every reader turns its format into the one internal form, a list of :class:`~hmpe.data.types.Sample`
(absolute-pixel xyxy boxes, contiguous 0..C-1 labels, ignore flags), so that nothing downstream ever
has to know about 0- vs 1-based category ids, xywh vs cxcywh or VOC's ``difficult``.

Bad input policy (the same for every format)
--------------------------------------------
Anything wrong with the data raises :class:`DataError`, whose message names the file, the line where
the format has lines, and what is wrong: a missing / corrupt / truncated image, a missing or malformed
annotation file or line, an unknown class, an invalid box (see :func:`checked_box`), a split that is
missing or empty. With ``skip_bad=True`` the offending *sample* (the whole image, so that a half-read
image never trains with missing objects) is left out instead, and every such error is kept in
``samples.skipped`` of the returned :class:`SampleList` and summarised through the ``hmpe.data``
logger at the end of the load. Nothing is dropped silently.

``Sample.image_id`` is the sample's position in the split's listing (merged lists count on), so ids
are stable when bad samples are skipped; COCO keeps the file's own image ids.

Image integrity is checked cheaply while indexing: the header is parsed (``Image.open(p).size``, no
pixel decode) and JPEG / PNG files must end with their end marker, which catches the usual truncated
download. Damage inside the compressed data is only found when the pixels are decoded; the dataset's
image loader then raises a ``DataError`` naming the file (see :mod:`hmpe.data.dataset`).
Measured on NWPU VHR-10 (640 images, 2 busy cores): indexing train + val takes about 0.1 s, of which
the end-marker check is 0.04 s; decoding every image instead would take over a second.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import yaml
from PIL import Image

from hmpe.data.detect_format import detect_format
from hmpe.data.types import Sample
from hmpe.utils.keys import ConfigKeyError, check_data_keys

LOG = logging.getLogger("hmpe.data")

#: How far (in pixels) a box may overshoot the image border before it counts as bad. Annotation tools
#: and float round-trips routinely produce boxes that end at ``width + 0.5`` or ``-0.3``; those are
#: clipped. Anything further out is an annotation error, not rounding.
BOX_TOLERANCE_PX = 1.0

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FORMATS = ("nwpu", "voc", "coco", "yolo", "synthetic")
SPLIT_KEYS = ("train", "val", "test")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "datasets"

NWPU_NAMES = [
    "airplane", "ship", "storage tank", "baseball diamond", "tennis court",
    "basketball court", "ground track field", "harbor", "bridge", "vehicle",
]  # fmt: skip
VOC_NAMES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip

# How many bytes at the end of a file are searched for the format's end marker. Entropy-coded JPEG
# data never contains FF D9 (0xFF is byte-stuffed), so a cut-off file shows no marker here.
_TAIL_BYTES = 64 * 1024


# ----------------------------------------------------------------------------------------------
# errors and results
# ----------------------------------------------------------------------------------------------
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
        skipped: the :class:`DataError` of every sample left out under ``skip_bad=True`` (and of
            annotations that belong to no sample, such as a COCO annotation of an unknown image).
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
    ):
        super().__init__(samples)
        self.skipped: list[DataError] = list(skipped)
        self.category_ids = category_ids
        self.source = source

    def summary(self, max_reasons: int = 5) -> str:
        """One human-readable paragraph: how many were loaded/skipped and the first reasons."""
        text = f"{self.source}: {len(self)} samples loaded, {len(self.skipped)} skipped as bad"
        reasons = [f"\n  - {err}" for err in self.skipped[:max_reasons]]
        more = len(self.skipped) - max_reasons
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return text + "".join(reasons) + tail


class _BadInputGuard:
    """Runs one sample's reader; re-raises its DataError, or records it when skipping bad input."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.skipped: list[DataError] = []

    def attempt(self, build: Callable[[], Sample | None]) -> Sample | None:
        try:
            return build()
        except DataError as err:
            if not self.skip_bad:
                raise
            self.skipped.append(err)
            return None

    def record(self, err: DataError) -> None:
        """A problem that belongs to no single sample (e.g. an orphan COCO annotation)."""
        if not self.skip_bad:
            raise err
        self.skipped.append(err)


# ----------------------------------------------------------------------------------------------
# dataset YAML
# ----------------------------------------------------------------------------------------------
_ENV_PATTERN = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand_env(text: str, where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (shell syntax) in a YAML ``path``."""

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value:
            return value
        if default is None:
            raise DataError(where, f"path uses ${{{name}}} but the environment variable is not set")
        return default

    return _ENV_PATTERN.sub(substitute, text)


def shipped_datasets() -> list[str]:
    """Names of the dataset YAMLs shipped in ``hmpe/configs/datasets``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _find_data_yaml(spec: str) -> tuple[Path, bool]:
    """Return (yaml path, shipped?) for a YAML path, a folder holding data.yaml, or a shipped name."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path, False
    if path.is_dir() and (path / "data.yaml").is_file():
        return path / "data.yaml", False
    shipped = CONFIG_DIR / (spec if spec.endswith((".yaml", ".yml")) else f"{spec}.yaml")
    if "/" not in spec and shipped.is_file():
        return shipped, True
    raise DataError(
        spec, f"no such dataset YAML, and no shipped dataset of that name (shipped: {shipped_datasets()})"
    )


def normalise_names(names: Any, where: str) -> list[str] | None:
    """Accept ``names`` as a list or as ``{id: name}`` with ids 0..C-1; return a list (or None)."""
    if names is None:
        return None
    if isinstance(names, dict):
        try:
            keyed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(where, f"names: keys must be integers, got {list(names)}") from None
        if sorted(keyed) != list(range(len(keyed))):
            raise DataError(where, f"names: ids must be 0..{len(keyed) - 1}, got {sorted(keyed)}")
        return [keyed[i] for i in range(len(keyed))]
    if isinstance(names, (list, tuple)) and all(isinstance(n, (str, int)) for n in names):
        return [str(n) for n in names]
    raise DataError(where, f"names must be a list or an {{id: name}} mapping, got {names!r}")


def load_data_config(path_or_name: str | os.PathLike | dict, overrides: dict | None = None) -> dict:
    """Load a dataset YAML into a dict with an absolute ``path`` and ``names`` as a list.

    ``path_or_name`` is a YAML file, a folder containing ``data.yaml``, the name of a shipped YAML
    (``synthetic``, ``nwpu-vhr10``), or an already loaded dict. ``path`` may use ``${VAR:-default}``;
    a relative ``path`` resolves against the YAML's own folder, except in shipped YAMLs (which live
    inside the installed package), where it resolves against the current working directory.
    ``overrides`` replace keys after loading; a relative ``path`` there is relative to the cwd.
    The loaded dict records its origin in ``_source`` (used in error messages).
    """
    if isinstance(path_or_name, dict):
        cfg = dict(path_or_name)
        source = str(cfg.get("_source", "<dataset config>"))
        base = Path.cwd()
    else:
        yaml_path, shipped = _find_data_yaml(os.fspath(path_or_name))
        source = str(yaml_path if shipped else yaml_path.resolve())  # absolute: checkpoints store it
        cfg = _read_yaml(yaml_path)
        base = Path.cwd() if shipped else yaml_path.parent
    for key, value in (overrides or {}).items():
        cfg[key] = str(Path(value).expanduser().resolve()) if key == "path" else value
    cfg["_source"] = source
    fmt = str(cfg.get("format") or "").lower()
    if fmt != "synthetic":
        root = _expand_env(str(cfg.get("path") or "."), source)
        cfg["path"] = str((base / Path(root).expanduser()).resolve())
    if not fmt:
        fmt, reason = detect_format(Path(cfg["path"]), cfg)
        if fmt is None:
            raise DataError(source, f"no `format` given and none recognised: {reason}; add format: "
                                    f"{' | '.join(FORMATS[:-1])}")  # fmt: skip
        cfg["_format_note"] = f"format {fmt}, detected from {reason}"
    if fmt not in FORMATS:
        raise DataError(source, f"format must be one of {FORMATS}, got {cfg.get('format')!r}")
    cfg["format"] = fmt
    try:
        check_data_keys(cfg)
    except ConfigKeyError as e:
        raise DataError(source, str(e)) from None
    cfg["names"] = normalise_names(cfg.get("names"), source)
    return cfg


def format_note(cfg: dict) -> str:
    """``"format yolo, detected from ..."`` or ``"format nwpu"``: how the dataset is being read."""
    return cfg.get("_format_note") or f"format {cfg['format']}"


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise DataError(path, f"invalid YAML: {getattr(err, 'problem', err)}", line) from None
    if not isinstance(data, dict):
        raise DataError(path, "a dataset YAML must be a mapping with path/train/val/names/format")
    return data


def _ensure_config(cfg: str | os.PathLike | dict) -> dict:
    """Accept a loaded config (from load_data_config) or anything load_data_config takes."""
    if isinstance(cfg, dict) and "_source" in cfg:
        return cfg
    return load_data_config(cfg)


# ----------------------------------------------------------------------------------------------
# shared checks
# ----------------------------------------------------------------------------------------------
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


def probe_image(path: str | os.PathLike, check_integrity: bool = True) -> tuple[int, int]:
    """Return ``(width, height)`` from the image header without decoding the pixels.

    With ``check_integrity`` a JPEG must contain its end-of-image marker and a PNG its IEND chunk
    near the end of the file: the cheap test that catches truncated files at indexing time.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
            image_format = image.format
    except Exception as err:  # any failure to open is this file's fault; third-party PIL patches raise others
        raise DataError(path, f"not a readable image ({type(err).__name__}: {err})") from None
    if width <= 0 or height <= 0:
        raise DataError(path, f"image header gives an empty size {width}x{height}")
    if check_integrity:
        _check_end_marker(path, image_format)
    return width, height


def _check_end_marker(path: Path, image_format: str | None) -> None:
    markers = {"JPEG": (b"\xff\xd9", "JPEG end-of-image marker (FF D9)"), "PNG": (b"IEND", "PNG IEND chunk")}
    if image_format not in markers:
        return
    marker, description = markers[image_format]
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - _TAIL_BYTES))
        tail = handle.read()
    if marker not in tail:
        raise DataError(path, f"truncated or corrupt image: no {description} at the end of the file")


def _image_size_checked(path: Path, check_images: bool, declared: tuple[Any, Any] | None,
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


def _as_list(spec: Any) -> list:
    return list(spec) if isinstance(spec, (list, tuple)) else [spec]


def _read_list_file(list_file: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, entry) of a split list, skipping blank lines and ``#`` comments."""
    if not list_file.is_file():
        raise DataError(list_file, "split list file not found")
    for number, text in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        entry = text.strip()
        if entry and not entry.startswith("#"):
            yield number, entry


# ----------------------------------------------------------------------------------------------
# load_dataset
# ----------------------------------------------------------------------------------------------
def load_dataset(
    cfg: str | os.PathLike | dict, split: str, skip_bad: bool = False, check_images: bool = True
) -> tuple[SampleList, list[str]]:
    """Read one split of a dataset into ``(samples, names)``.

    ``cfg`` is a dataset YAML, a shipped name or a dict (see :func:`load_data_config`); ``split`` a
    key of it (``train``, ``val``...). ``samples`` is a :class:`SampleList`: with ``skip_bad`` the
    bad samples are left out and listed in ``samples.skipped`` (also logged as a warning). An empty
    result is an error either way. ``check_images=False`` skips the truncation check (header only).
    """
    cfg = _ensure_config(cfg)
    source = cfg["_source"]
    # synthetic splits are generated, named by the split itself (num_train, num_val...)
    spec = split if cfg["format"] == "synthetic" else cfg.get(split)
    if spec is None:
        defined = [k for k in SPLIT_KEYS if cfg.get(k) is not None]
        raise DataError(source, f"no '{split}' split defined (defined: {defined})")
    if cfg["format"] != "synthetic" and not Path(cfg["path"]).is_dir():
        raise DataError(source, f"dataset folder {cfg['path']} does not exist (set `path`, or HMPE_DATASETS "
                                "for the shipped YAMLs)")  # fmt: skip
    guard = _BadInputGuard(skip_bad)
    reader = _READERS[cfg["format"]]
    samples, names, category_ids = reader(cfg, spec, guard, check_images)
    result = SampleList(samples, guard.skipped, category_ids, f"{source} [{split}]")
    if not result:
        reason = f"split '{split}' ({spec}) has no samples"
        if result.skipped:
            reason += f"; all {len(result.skipped)} were bad, first: {result.skipped[0]}"
        raise DataError(source, reason)
    if result.skipped:
        LOG.warning("skipped bad input: %s", result.summary())
    return result, names


# ---- NWPU VHR-10 ------------------------------------------------------------------------------
_NWPU_NUMBER = r"\s*([-+]?\d+(?:\.\d*)?)\s*"
_NWPU_LINE = re.compile(rf"^\({_NWPU_NUMBER},{_NWPU_NUMBER}\)\s*,\s*\({_NWPU_NUMBER},{_NWPU_NUMBER}\)\s*,\s*(\d+)\s*$")
NWPU_NEGATIVE_DIR = "negative image set"


def _read_nwpu(cfg: dict, spec: Any, guard: _BadInputGuard, check_images: bool):
    """NWPU VHR-10 native layout; ``spec`` is a split list (or lists) of image paths under ``path``.

    Images in ``negative image set/`` have no annotations; any other image needs
    ``ground truth/<stem>.txt`` with lines ``(x1,y1),(x2,y2),class`` (class 1..C, spaces allowed).
    """
    root = Path(cfg["path"])
    names = cfg["names"] or NWPU_NAMES
    samples = []
    entries = [(root / f, n, e) for f in _as_list(spec) for n, e in _read_list_file(root / f)]
    for image_id, (list_file, number, entry) in enumerate(entries):
        sample = guard.attempt(
            lambda: _nwpu_sample(root, list_file, number, entry, image_id, len(names), check_images)
        )
        if sample is not None:
            samples.append(sample)
    return samples, names, list(range(1, len(names) + 1))


def _nwpu_sample(root: Path, list_file: Path, number: int, entry: str, image_id: int,
                 num_classes: int, check_images: bool) -> Sample:  # fmt: skip
    image_path = root / entry
    if not image_path.is_file():
        raise DataError(list_file, f"listed image '{entry}' not found ({image_path})", number)
    width, height = probe_image(image_path, check_images)
    if image_path.parent.name == NWPU_NEGATIVE_DIR:
        return Sample(image_id, str(image_path), width, height)
    annotation = root / "ground truth" / f"{image_path.stem}.txt"
    if not annotation.is_file():
        raise DataError(annotation, f"annotation file missing for positive image '{entry}'")
    boxes, labels = _parse_nwpu_annotation(annotation, width, height, num_classes)
    return Sample(image_id, str(image_path), width, height, boxes, labels)


def _parse_nwpu_annotation(annotation: Path, width: int, height: int, num_classes: int):
    boxes, labels = [], []
    for number, text in enumerate(annotation.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        match = _NWPU_LINE.match(text.strip())
        if match is None:
            raise DataError(annotation, f"malformed line {text.strip()!r}: expected (x1,y1),(x2,y2),class", number)
        class_id = int(match.group(5))
        if not 1 <= class_id <= num_classes:
            raise DataError(annotation, f"unknown class id {class_id} (expected 1..{num_classes})", number)
        coords = [float(match.group(i)) for i in range(1, 5)]
        boxes.append(checked_box(coords, width, height, annotation, number))
        labels.append(class_id - 1)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


# ---- Pascal VOC -------------------------------------------------------------------------------
def _read_voc(cfg: dict, spec: Any, guard: _BadInputGuard, check_images: bool):
    """Pascal VOC: each split entry is ``[YEAR_DIR/]SET`` (``VOC2007/trainval``) naming
    ``YEAR_DIR/ImageSets/Main/SET.txt``, or a path to such a .txt; a list of entries is merged (VOC07+12).
    ``difficult`` objects are kept with ``ignore=True``. Coordinates are used as written.
    """
    root = Path(cfg["path"])
    names = cfg["names"] or VOC_NAMES
    class_index = {name: i for i, name in enumerate(names)}
    samples = []
    entries = [(year_dir, list_file, number, line)
               for entry in _as_list(spec)
               for year_dir, list_file in [_voc_split_files(root, str(entry))]
               for number, line in _read_list_file(list_file)]  # fmt: skip
    for image_id, (year_dir, list_file, number, line) in enumerate(entries):
        stem = line.split()[0]
        sample = guard.attempt(
            lambda: _voc_sample(year_dir, list_file, number, stem, image_id, class_index, check_images)
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
                class_index: dict[str, int], check_images: bool) -> Sample:  # fmt: skip
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
    width, height = _image_size_checked(image_path, check_images, declared, xml_path, filename)
    boxes, labels, ignore = [], [], []
    for k, obj in enumerate(tree.iter("object"), start=1):
        box, label, difficult = _voc_object(obj, k, xml_path, class_index, width, height)
        boxes.append(box)
        labels.append(label)
        ignore.append(difficult)
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


# ---- COCO JSON --------------------------------------------------------------------------------
def _read_coco(cfg: dict, spec: Any, guard: _BadInputGuard, check_images: bool):
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
            lambda: _coco_sample(entry, annotations_by_image, img_dir, ann_file, label_of, check_images)
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


def _coco_group_annotations(data: dict, images: list, ann_file: Path, guard: _BadInputGuard) -> dict:
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
                 label_of: dict[int, int], check_images: bool) -> Sample:  # fmt: skip
    if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
        raise DataError(ann_file, f"image entry {entry!r} needs 'id' and 'file_name'")
    image_path = img_dir / entry["file_name"]
    declared = (entry.get("width"), entry.get("height")) if "width" in entry and "height" in entry else None
    width, height = _image_size_checked(image_path, check_images, declared, ann_file, str(entry["file_name"]))
    boxes, labels, ignore = [], [], []
    for ann in annotations_by_image.get(entry["id"], []):
        where = f"{ann_file} (annotation {_ann_label(ann)}, image {entry['file_name']})"
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
        boxes.append(checked_box([x, y, x + w, y + h], width, height, where))
        labels.append(label_of[category])
        ignore.append(bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0)))
    return Sample(int(entry["id"]), str(image_path), width, height, boxes, labels, ignore)


# ---- YOLO txt ---------------------------------------------------------------------------------
def _read_yolo(cfg: dict, spec: Any, guard: _BadInputGuard, check_images: bool):
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
    images = [(p, where) for entry in _as_list(spec) for p, where in _yolo_images(root, str(entry), cfg["_source"])]
    for image_id, (image_path, where) in enumerate(images):
        sample = guard.attempt(lambda: _yolo_sample(image_path, where, image_id, len(names), check_images))
        if sample is not None:
            samples.append(sample)
    return samples, names, None


def _yolo_images(root: Path, entry: str, source: str) -> list[tuple[Path, tuple[str, int | None]]]:
    """Image paths of one split entry, each with (listing file, line) for messages."""
    target = root / entry
    if target.is_file() and target.suffix == ".txt":
        return [((target.parent / line).resolve(), (str(target), number)) for number, line in _read_list_file(target)]
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
                 check_images: bool) -> Sample:  # fmt: skip
    if not image_path.is_file():
        raise DataError(where[0], f"listed image {image_path} not found", where[1])
    width, height = probe_image(image_path, check_images)
    label_path = yolo_label_path(image_path)
    boxes, labels = [], []
    if label_path.is_file():
        for number, text in enumerate(label_path.read_text(encoding="utf-8").splitlines(), start=1):
            if text.strip():
                box, label = _parse_yolo_line(text, label_path, number, width, height, num_classes)
                boxes.append(box)
                labels.append(label)
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


def _read_synthetic(cfg: dict, spec: Any, guard: _BadInputGuard, check_images: bool):
    from hmpe.data.synthetic import SyntheticDataset  # lazy: synthetic imports nothing from here at import

    dataset = SyntheticDataset.from_config(cfg, str(spec))
    return list(dataset.samples), list(dataset.names), None


_READERS = {"nwpu": _read_nwpu, "voc": _read_voc, "coco": _read_coco, "yolo": _read_yolo,
            "synthetic": _read_synthetic}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# writers (used by `hmpe data convert`)
# ----------------------------------------------------------------------------------------------
ImageLoader = Callable[[Sample], Any]


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
