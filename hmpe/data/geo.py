"""GeoTIFF input: which TIFFs are read window by window, and that reading (rasterio, the optional extra
``pip install "hmpe[geo]"``; imported inside the functions, so ``import hmpe`` does not load it).

Which sources (:func:`is_raster_source`): a ``.tif`` / ``.tiff`` that is georeferenced (rasterio finds a CRS or a
geotransform other than the identity; without rasterio installed, the file's GeoTIFF tags say so) or larger
than :data:`RASTER_MIN_PIXELS`. Other images are decoded whole (:mod:`hmpe.data.images`). Without rasterio such a
TIFF is a one-line error naming the extra (:class:`MissingGeoExtra`).

What :class:`RasterReader` returns for a window ``(x0, y0, x1, y1)`` of raster pixels: ``uint8 [h, w, 3]``, or
None when the window holds no valid pixel. Only that window is read; the raster is never held whole, and GDAL's
block cache is held to :data:`GDAL_CACHE_MB` while the raster is open (it would otherwise keep the decoded
blocks of the raster read so far, up to 5% of the RAM).

- **Bands** (``bands=``, 1-based as GDAL counts them): three bands, or one band repeated x3. Default: bands
  1, 2, 3; band 1 repeated x3 when the raster has fewer than three.
- **Scaling to 8 bits.** ``uint8`` bands are taken as they are. Any other type (16-bit, float): each band is
  mapped linearly from its :data:`STRETCH_PERCENTILES` (2nd..98th percentile) to 0..255 and clipped. The
  percentiles are computed once per raster, over the valid pixels of one decimated read of at most
  :data:`STATS_SIZE` px on the long side (GDAL takes it from the raster's overviews when it has them), so that
  every window is scaled alike: per-window percentiles would change the contrast from one window to the next
  and stretch the noise of empty windows into texture. Robust to a few saturated or dark outliers (they fall
  outside the percentiles and clip).
- **Nodata.** GDAL's per-band mask (the nodata value, an alpha band or an internal mask): masked values become
  0. A window in which every chosen band is masked everywhere is not read further (None): no prediction runs
  on it.
"""

from __future__ import annotations

import struct
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hmpe.data.types import DataError
from hmpe.utils.keytypes import show

#: File suffixes (lower case) that may be rasters read window by window.
RASTER_SUFFIXES = (".tif", ".tiff")
#: A TIFF with more pixels than this is read window by window even without georeferencing (decoded whole, its
#: RGB pixels alone would take 192 MiB).
RASTER_MIN_PIXELS = 8192 * 8192
#: Long side of the decimated read that the 8-bit scaling's percentiles come from.
STATS_SIZE = 1024
#: The percentiles of each band that map to 0 and 255 (rasters that are not 8-bit).
STRETCH_PERCENTILES = (2.0, 98.0)
#: GDAL's block cache while a raster is read (MiB). GDAL keeps decoded blocks up to GDAL_CACHEMAX (default: 5% of
#: the RAM), which would grow with the raster; each window is read once, so a small cache costs only the
#: re-decoding of the strips where windows overlap.
GDAL_CACHE_MB = 64
#: ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory: the tags of a GeoTIFF.
_GEO_TAGS = {33550, 33922, 34264, 34735}
GEO_EXTRA = 'pip install "hmpe[geo]"'

Window = tuple[int, int, int, int]  # (x0, y0, x1, y1) raster pixels, x1/y1 exclusive


class MissingGeoExtra(DataError, ImportError):
    """rasterio is not installed. A :class:`DataError` naming the file (the command line prints it as one
    line) and an ImportError; the message names the extra."""


def import_rasterio(path: str | Path):
    """The ``rasterio`` module, or :class:`MissingGeoExtra` naming ``path`` and the extra."""
    try:
        import rasterio
    except ImportError:
        raise MissingGeoExtra(path, f"a GeoTIFF (or a TIFF over {RASTER_MIN_PIXELS // 2**20} Mpx) is read window "
                                    f"by window with rasterio, which is not installed: {GEO_EXTRA}") from None
    return rasterio


def tiff_header(path: str | Path) -> tuple[int, int, bool] | None:
    """``(width, height, georeferenced)`` from the first directory of a TIFF or BigTIFF (no decoding, no
    rasterio); ``georeferenced``: it carries a GeoTIFF tag. None when the file is not a readable TIFF."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) < 8 or head[:2] not in (b"II", b"MM"):
                return None
            e = "<" if head[:2] == b"II" else ">"
            big = struct.unpack(e + "H", head[2:4])[0] == 43
            offset = struct.unpack(e + "Q", head[8:16])[0] if big else struct.unpack(e + "I", head[4:8])[0]
            count_fmt, entry, value_at = (e + "Q", 20, 12) if big else (e + "H", 12, 8)
            f.seek(offset)
            n = struct.unpack(count_fmt, f.read(struct.calcsize(count_fmt)))[0]
            data = f.read(n * entry)
    except (OSError, struct.error):
        return None
    tags: dict[int, int] = {}
    for i in range(len(data) // entry):
        tag, kind = struct.unpack(e + "HH", data[i * entry:i * entry + 4])
        fmt = {3: "H", 4: "I", 16: "Q"}.get(kind, "")  # SHORT, LONG, LONG8: the width and height
        start = i * entry + value_at
        tags[tag] = struct.unpack(e + fmt, data[start:start + struct.calcsize(e + fmt)])[0] if fmt else 0
    return tags.get(256, 0), tags.get(257, 0), bool(_GEO_TAGS & tags.keys())


def is_raster_source(path: str | Path) -> bool:
    """Whether ``path`` is read window by window (see the module doc); a georeferenced or huge TIFF without
    rasterio installed: :class:`MissingGeoExtra`."""
    path = Path(path)
    if path.suffix.lower() not in RASTER_SUFFIXES:
        return False
    try:
        import rasterio
        from rasterio.errors import RasterioIOError
    except ImportError:
        head = tiff_header(path)
        if head and (head[2] or head[0] * head[1] > RASTER_MIN_PIXELS):
            import_rasterio(path)  # raises, naming the extra
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning: a plain TIFF is what this asks about
        try:
            with rasterio.open(path) as src:
                return src.crs is not None or not src.transform.is_identity or \
                    src.width * src.height > RASTER_MIN_PIXELS
        except RasterioIOError:  # not a raster GDAL reads: the image decoder says why
            return False


def raster_sources(paths: Sequence[Path], bands: Sequence[int] | None = None) -> list[Path]:
    """The ``paths`` read window by window; ``bands`` given without one of them is an error (it would be
    ignored)."""
    rasters = [p for p in paths if is_raster_source(p)]
    if bands is not None and not rasters:
        raise ValueError(f"bands={show(bands)} applies to GeoTIFF sources (read window by window with rasterio); "
                         f"the source has none")
    return rasters


def choose_bands(count: int, bands: Sequence[int] | None, path: str | Path) -> tuple[int, int, int]:
    """The three 1-based band indexes read as R, G, B (see the module doc)."""
    if bands is None:
        return (1, 2, 3) if count >= 3 else (1, 1, 1)
    bands = [int(b) for b in bands]
    if len(bands) not in (1, 3) or not all(1 <= b <= count for b in bands):
        raise DataError(path, f"bands={show(bands)}: expected one band (repeated x3) or three, each in 1..{count} "
                              f"(the raster has {count} band{'s' if count > 1 else ''})")
    return tuple(bands * 3) if len(bands) == 1 else tuple(bands)


def band_stretch(src, bands: Sequence[int]) -> dict[int, tuple[float, float]]:
    """Band -> ``(lo, hi)``: its :data:`STRETCH_PERCENTILES` over the valid pixels of one decimated read of the
    rasterio dataset ``src`` (at most :data:`STATS_SIZE` px on the long side); ``hi > lo`` always."""
    scale = min(1.0, STATS_SIZE / max(src.width, src.height))
    shape = (max(1, round(src.height * scale)), max(1, round(src.width * scale)))
    uniq = sorted(set(bands))
    data = src.read(uniq, out_shape=(len(uniq), *shape), masked=True)
    out = {}
    for k, b in enumerate(uniq):
        valid = np.ma.compressed(data[k]).astype(np.float64)
        valid = valid[np.isfinite(valid)]
        lo, hi = np.percentile(valid, STRETCH_PERCENTILES) if valid.size else (0.0, 1.0)
        out[b] = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    return out


def to_uint8(band: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    """``band`` mapped linearly from ``lo..hi`` to 0..255, rounded and clipped (NaN -> 0)."""
    lo, hi = lo_hi
    x = (band.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo)) + np.float32(0.5)
    np.nan_to_num(x, copy=False, nan=0.0)
    return np.clip(x, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class RasterInfo:
    """What a raster is: its size, its bands, its georeferencing."""

    path: str
    width: int
    height: int
    count: int  # bands in the file
    dtype: str  # of the chosen bands (the first one's)
    bands: tuple[int, int, int]  # read as R, G, B
    # (a, b, c, d, e, f): map x = a*col + b*row + c, map y = d*col + e*row + f (pixel corners); None: identity
    transform: tuple[float, float, float, float, float, float] | None
    epsg: int | None  # the CRS's EPSG code, when it has one
    crs_wkt: str | None  # the CRS as WKT; None: no CRS


class RasterReader:
    """An open raster (a context manager): :attr:`info`, and :meth:`read` one window at a time (see the
    module doc)."""

    def __init__(self, path: str | Path, bands: Sequence[int] | None = None):
        rasterio = import_rasterio(path)
        from rasterio.enums import MaskFlags
        from rasterio.errors import RasterioIOError

        self.path = Path(path)
        self._stack = ExitStack()
        self._stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: a huge plain TIFF is read in pixels
            try:
                self._src = self._stack.enter_context(rasterio.open(self.path))
            except RasterioIOError as err:
                self._stack.close()
                raise DataError(self.path, f"not a raster rasterio reads ({err})") from None
        try:
            self.info = self._describe(bands)
            self._uniq = sorted(set(self.info.bands))
            flags = self._src.mask_flag_enums
            self._masked = not all(MaskFlags.all_valid in flags[b - 1] for b in self._uniq)
            self.stretch = None if self.info.dtype == "uint8" else band_stretch(self._src, self.info.bands)
        except BaseException:
            self.close()
            raise

    def _describe(self, bands: Sequence[int] | None) -> RasterInfo:
        src = self._src
        chosen = choose_bands(src.count, bands, self.path)
        transform = None if src.transform.is_identity else tuple(float(v) for v in tuple(src.transform)[:6])
        return RasterInfo(str(self.path), src.width, src.height, src.count, src.dtypes[chosen[0] - 1], chosen,
                          transform, src.crs.to_epsg() if src.crs else None, src.crs.to_wkt() if src.crs else None)

    def read(self, window: Window) -> np.ndarray | None:
        """``uint8 [y1-y0, x1-x0, 3]`` of ``window``; None when no chosen band has a valid pixel in it."""
        from rasterio.windows import Window as RioWindow

        x0, y0, x1, y1 = window
        win = RioWindow(x0, y0, x1 - x0, y1 - y0)
        masks = self._src.read_masks(self._uniq, window=win) if self._masked else None
        if masks is not None and not masks.any():
            return None
        data = self._src.read(self._uniq, window=win)
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for c, b in enumerate(self.info.bands):
            k = self._uniq.index(b)
            out[..., c] = data[k] if self.stretch is None else to_uint8(data[k], self.stretch[b])
            if masks is not None:
                out[..., c][masks[k] == 0] = 0
        return out

    def close(self) -> None:
        self._stack.close()  # the dataset, then GDAL's cache setting

    def __enter__(self) -> "RasterReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["GDAL_CACHE_MB", "GEO_EXTRA", "MissingGeoExtra", "RASTER_MIN_PIXELS", "RASTER_SUFFIXES", "RasterInfo",
           "RasterReader", "STATS_SIZE", "STRETCH_PERCENTILES", "band_stretch", "choose_bands", "import_rasterio",
           "is_raster_source", "raster_sources", "tiff_header", "to_uint8"]
