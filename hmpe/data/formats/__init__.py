"""Dataset readers and writers: NWPU VHR-10, Pascal VOC, COCO JSON, YOLO txt, and the dataset YAML.

Every reader turns its format into the one internal form, a list of :class:`~hmpe.data.types.Sample`
(absolute-pixel xyxy boxes, contiguous 0..C-1 labels, ignore flags), so that nothing downstream ever
has to know about 0- vs 1-based category ids, xywh vs cxcywh or VOC's ``difficult``.

Modules: :mod:`~hmpe.data.formats.config` (the dataset YAML), :mod:`~hmpe.data.formats.detect` (format
detection), :mod:`~hmpe.data.formats.checks` (checks shared by the readers), one reader per format
(:mod:`~hmpe.data.formats.nwpu`, :mod:`~hmpe.data.formats.voc`, :mod:`~hmpe.data.formats.coco`,
:mod:`~hmpe.data.formats.yolo`), :mod:`~hmpe.data.formats.load` (``load_dataset``, which dispatches to
them) and :mod:`~hmpe.data.formats.writers` (``hmpe data convert``). This package re-exports their
public names.

Bad input policy (the same for every format)
--------------------------------------------
Anything wrong with the data raises :class:`DataError`, whose message names the file, the line where
the format has lines, and what is wrong: a missing / corrupt / truncated image, a missing or malformed
annotation file or line, an unknown class, an invalid box (see :func:`checked_box`), a split that is
missing or empty. With ``skip_bad=True`` a sample whose image or annotation file cannot be used (missing,
corrupt, truncated, malformed XML/JSON, a declared size that differs from the image) is left out, and a
bad *box* (invalid or outside the image beyond the tolerance, unknown class, unparsable line or entry) is
dropped from its image, which keeps its other boxes; the errors are kept in ``samples.skipped`` and
``samples.skipped_boxes`` of the returned :class:`SampleList` and summarised (both counts and the first
reasons) through the ``hmpe.data`` logger at the end of the load. Nothing is dropped silently.

``Sample.image_id`` is the sample's position in the split's listing (merged lists count on), so ids
are stable when bad samples are skipped; COCO keeps the file's own image ids.

Image integrity is checked cheaply while indexing (:func:`~hmpe.data.images.probe_image`): the header
is parsed (no pixel decode) and JPEG / PNG files must end with their end marker, which catches the
usual truncated download while reading only the file's tail. Damage inside the compressed data is only
found when the pixels are decoded; the dataset's image loader then raises a ``DataError`` naming the
file (see :func:`hmpe.data.images.load_image`).
"""

from hmpe.data.formats.checks import BOX_TOLERANCE_PX, checked_box
from hmpe.data.formats.config import (
    DATASETS_DIR,
    FORMATS,
    SPLIT_KEYS,
    format_note,
    load_data_config,
    normalise_names,
    shipped_datasets,
)
from hmpe.data.formats.detect import detect_format
from hmpe.data.formats.load import load_dataset
from hmpe.data.formats.nwpu import NWPU_NAMES, NWPU_NEGATIVE_DIR
from hmpe.data.formats.voc import VOC_NAMES
from hmpe.data.formats.writers import image_relative_name, place_images, write_coco, write_data_yaml, write_yolo
from hmpe.data.formats.yolo import yolo_label_path
from hmpe.data.types import DataError, SampleList

__all__ = [
    "BOX_TOLERANCE_PX",
    "DATASETS_DIR",
    "FORMATS",
    "NWPU_NAMES",
    "NWPU_NEGATIVE_DIR",
    "SPLIT_KEYS",
    "VOC_NAMES",
    "DataError",
    "SampleList",
    "checked_box",
    "detect_format",
    "format_note",
    "image_relative_name",
    "load_data_config",
    "load_dataset",
    "normalise_names",
    "place_images",
    "shipped_datasets",
    "write_coco",
    "write_data_yaml",
    "write_yolo",
    "yolo_label_path",
]
