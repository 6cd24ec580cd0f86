"""Image files: the suffixes read as images, the cheap header probe used while indexing, and the one decoder.

Every image in the package is opened here: :func:`probe_image` (size from the header, plus the
end-marker check for truncated files) while a dataset is indexed, :func:`load_image` (pixels) when it is
used. Both turn any failure into a :class:`~hmpe.data.types.DataError` naming the file.
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


#: ``image_loader(sample) -> uint8 [H, W, 3]`` (numpy or PIL): how a dataset or a writer gets a sample's pixels.
ImageLoader = Callable[[Sample], Any]


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W, 3]`` RGB; a corrupt or truncated file raises DataError.

    EXIF orientation is not applied: annotations in every supported format refer to the stored
    pixel grid (the size the header reports), so rotating here would misalign the boxes.
    """
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except Exception as err:  # any decode failure is this file's fault
        raise DataError(path, f"cannot decode image, corrupt or truncated ({type(err).__name__}: {err})") from None


def load_sample_image(sample: Sample) -> np.ndarray:
    """Default image loader: decode ``sample.path``."""
    if sample.path is None:
        raise DataError(f"sample {sample.image_id}", "has no image file (generated samples need their image_loader)")
    return load_image(sample.path)
