"""Image files: the suffixes read as images, the cheap header probe used while indexing, and the one decoder.

Every image in the package is opened here: :func:`probe_image` (size from the header, plus the
end-marker check for truncated files) while a dataset is indexed, :func:`load_image` (pixels) when it is
used. Both turn any failure into a :class:`~hmpe.data.types.DataError` naming the file.

Both apply the EXIF orientation tag (0x0112, as ``PIL.ImageOps.exif_transpose``): a photo stored sideways
with orientation 6 is read upright, the way image viewers, browsers and OpenCV's ``imread`` show it, and its
size is the upright size. Annotations are drawn on the image as shown, so COCO / YOLO / VOC boxes and declared
sizes refer to the upright image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from hmpe.data.types import DataError, Sample

#: File suffixes (lower case) taken as images when a folder or a glob is listed.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# How many bytes at the end of a file are searched for the format's end marker. Entropy-coded JPEG
# data never contains FF D9 (0xFF is byte-stuffed), so a cut-off file shows no marker here.
_TAIL_BYTES = 64 * 1024

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (the table of PIL.ImageOps.exif_transpose);
# 5..8 swap width and height
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of a just-opened image from what its header gave (1, upright, when absent or
    unreadable: a damaged EXIF block must not make the pixels unreadable, and probe and decode must agree)."""
    try:
        # the base method: PNG's override decodes the whole file to look for an eXIf chunk after the pixels,
        # which would make indexing decode every image (the spec puts eXIf before them)
        value = Image.Image.getexif(image).get(_ORIENTATION_TAG, 1)
        return int(value) if int(value) in _UPRIGHT else 1
    except Exception:  # malformed EXIF: PIL raises assorted errors
        return 1


def probe_image(path: str | os.PathLike, check_integrity: bool = True) -> tuple[int, int]:
    """Return the displayed ``(width, height)`` from the image header without decoding the pixels (swapped
    when the EXIF orientation turns the image by 90 degrees, as :func:`load_image` does).

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
            if _orientation(image) >= 5:
                width, height = height, width
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


#: ``image_loader(sample) -> uint8 [H, W, 3]`` (numpy or PIL): how a dataset or a writer gets a sample's pixels.
ImageLoader = Callable[[Sample], Any]


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W, 3]`` RGB, upright by its EXIF orientation (the size that
    :func:`probe_image` reports); a corrupt or truncated file raises DataError."""
    try:
        with Image.open(path) as image:
            orientation = _orientation(image)
            rgb = image.convert("RGB")
            return np.array(rgb.transpose(_UPRIGHT[orientation]) if orientation != 1 else rgb)
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except Exception as err:  # any decode failure is this file's fault
        raise DataError(path, f"cannot decode image, corrupt or truncated ({type(err).__name__}: {err})") from None


def load_sample_image(sample: Sample) -> np.ndarray:
    """Default image loader: decode ``sample.path``."""
    if sample.path is None:
        raise DataError(f"sample {sample.image_id}", "has no image file (generated samples need their image_loader)")
    return load_image(sample.path)
