"""GeoTIFF in, GeoJSON out: sliced inference over a raster read window by window.

    hmpe predict mosaic.tif weights=hmpe-n-nwpu [bands=[1,2,3] window=4096 slice=512 overlap=0.2]

Which sources come here, and how a window's pixels are read (bands, 8-bit scaling, nodata): :mod:`hmpe.data.geo`.
The raster is never held whole: one window's pixels at a time, plus the detections found so far.

1. **Windows** (:func:`raster_windows`). The tile size is ``slice`` (default: the model input size, so tiles are
   seen at native resolution). A window spans ``slice + k * step`` px, ``step`` being the tile stride of
   :func:`~hmpe.engine.eval.slicing.tile_starts` (``slice * (1 - overlap)``) and ``k`` the largest that keeps the
   window within ``window`` px; neighbouring windows overlap by ``slice - step``, the overlap of two neighbouring
   tiles. The windows' tiles therefore fall on the one grid that :func:`~hmpe.engine.eval.slicing.sliced_predict`
   would lay over the whole raster: no tile is predicted twice, and an object across a window border is met as
   one across a tile border is. The last window of a row or column is cut short at the raster border (not
   moved back as :func:`~hmpe.engine.eval.slicing.tile_grid` moves tiles, which would predict most of it twice);
   inside it the slicer lays its tiles as on any image. ``window`` must hold two tile strides (``slice + step``).
2. **Per window**: its pixels (:class:`~hmpe.data.geo.RasterReader`; a window that is nodata everywhere is
   skipped: no prediction runs on it), then :func:`~hmpe.engine.eval.slicing.sliced_predict` on them (tiles,
   ``batch`` per forward pass, the merge across the window's tiles; ``full_image=True``: one pass on the whole
   window).
3. **Across windows**: :func:`~hmpe.engine.eval.slicing.merge_detections` with the windows as the tiles: a detection
   touching a window side inside the raster is a border fragment (the slicer's ``edge_margin``), fragments of
   an object another window saw whole go, fragments only become their union, then class-wise NMS (or WBF)
   removes the objects two overlapping windows both saw. The same merge, at the same thresholds, as across tiles.
4. **Output**: boxes in raster pixels (``predictions.json``) and, for a raster with a CRS and a geotransform,
   a GeoJSON FeatureCollection (:func:`raster_geojson`): each box a Polygon whose corners are the box corners
   through the raster's affine transform, in the raster's CRS, recorded as a ``crs`` member (``{"type":
   "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}``, the form GDAL and QGIS read; the WKT where
   the CRS has no EPSG code); rings counter-clockwise; properties ``class``, ``class_id``, ``score`` and
   ``box_px`` (the pixel box). A raster without a CRS or a geotransform gets no GeoJSON, and a one-line note.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from hmpe.data.geo import RasterInfo, RasterReader
from hmpe.engine.eval.slicing import (PredictFn, Tile, as_preprocess, cut_flags, merge_detections, sliced_predict,
                                 tile_starts)
from hmpe.utils.keys import defaults

#: Largest window read at once (the ``window`` key's default).
RASTER_WINDOW = defaults("predict")["window"]
# the slicer's own border margin (fraction of the tile): windows flag their border fragments as tiles do
EDGE_MARGIN = inspect.signature(sliced_predict).parameters["edge_margin"].default


@dataclass
class RasterPrediction:
    """Detections on one raster, in raster pixels, by score; ``windows`` read, ``skipped`` (nodata) of them."""

    info: RasterInfo
    boxes: np.ndarray  # (K,4) xyxy
    scores: np.ndarray  # (K,)
    labels: np.ndarray  # (K,)
    windows: int
    skipped: int


def raster_windows(width: int, height: int, size: int, window: int, overlap: float) -> list[Tile]:
    """The windows of a ``width x height`` raster for tiles of ``size`` px (see the module doc, step 1)."""
    step = tile_starts(2 * size, size, overlap)[1]  # the tile stride sliced_predict uses
    k = (int(window) - size) // step
    if k < 1:
        raise ValueError(f"window={window}: a raster window must hold two tile strides, at least {size + step} px "
                         f"for slice={size} overlap={overlap}; raise window= or lower slice=")
    span, stride = size + k * step, (k + 1) * step  # neighbours overlap by size - step

    def starts(length: int) -> range:  # the last window ends on the border, shorter (see the module doc)
        return range(0, max(1, length - (size - step)), stride)

    return [(x, y, min(x + span, width), min(y + span, height)) for y in starts(height) for x in starts(width)]


def _window_detections(predict_fn: PredictFn, pixels: np.ndarray, win: Tile, wid: int, info: RasterInfo,
                       size: int, pre, opts: dict) -> tuple:
    """``sliced_predict`` on one window's pixels -> (boxes in raster px, scores, labels, window ids, cut)."""
    b, s, l = sliced_predict(predict_fn, pixels, size, pre, **opts)
    x0, y0 = win[:2]
    b = b + torch.tensor([x0, y0, x0, y0], dtype=b.dtype)
    cut = cut_flags(b, win, info.width, info.height, EDGE_MARGIN * size)
    return b, s, l, torch.full((len(b),), wid, dtype=torch.int64), cut


@torch.no_grad()
def predict_raster(predict_fn: PredictFn, path: str | Path, imgsz, slice: int | None = None,
                   window: int = RASTER_WINDOW, bands: Sequence[int] | None = None, overlap: float = 0.2,
                   batch: int = 4, conf: float = 0.25, merge: str = "nms", merge_iou: float = 0.5,
                   full_image: bool = False, progress: bool = True) -> RasterPrediction:
    """Detections on the raster at ``path``, window by window (see the module doc): ``predict_fn`` runs the model
    on a batch of tiles (:data:`~hmpe.engine.eval.slicing.PredictFn`); ``imgsz`` is the model input size or its
    :class:`~hmpe.data.preprocess.Preprocess`; ``slice`` the tile size (None or 0: the input size)."""
    pre = as_preprocess(imgsz)
    size = int(slice or pre.imgsz)
    opts = dict(overlap=overlap, batch=batch, conf=conf, merge=merge, merge_iou=merge_iou, full_image=full_image)
    found, skipped = [], 0
    with RasterReader(path, bands) as reader:
        info = reader.info
        windows = raster_windows(info.width, info.height, size, window, overlap)
        for wid, win in enumerate(tqdm(windows, desc=f"{Path(path).name}: windows", leave=False,
                                       disable=not progress)):
            pixels = reader.read(win)
            if pixels is None:  # nodata everywhere
                skipped += 1
                continue
            found.append(_window_detections(predict_fn, pixels, win, wid, info, size, pre, opts))
            del pixels  # before the next window is read
    if found:  # boxes, scores, labels, window ids, cut flags of every window, merged as tiles are
        b, s, l = merge_detections(*(torch.cat(p) for p in zip(*found)), method=merge, iou_thr=merge_iou,
                                   tiles=windows)
    else:
        b, s, l = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    print(f"{info.path}: {info.width}x{info.height} px, bands {list(info.bands)} ({info.dtype}), {len(windows)} "
          f"window{'s' if len(windows) != 1 else ''} ({skipped} nodata, skipped), tiles of {size} px: "
          f"{len(s)} detections")
    return RasterPrediction(info, b.numpy(), s.numpy(), l.numpy(), len(windows), skipped)


def _ring(box: Sequence[float], transform: Sequence[float]) -> list[list[float]]:
    """The box's corners through the affine ``transform``, a closed counter-clockwise ring (RFC 7946)."""
    a, b, c, d, e, f = transform
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = [(x0, y0), (x0, y1), (x1, y1), (x1, y0)]  # clockwise on the map when the map y axis is flipped
    if a * e - b * d > 0:  # a transform that keeps the pixel axes' handedness: the other way round
        corners.reverse()
    ring = [[a * x + b * y + c, d * x + e * y + f] for x, y in corners]
    return ring + [ring[0]]


def crs_name(info: RasterInfo) -> str | None:
    """The name GeoJSON readers (GDAL, QGIS) take for the raster's CRS: an OGC URN of its EPSG code, else WKT."""
    if info.epsg is not None:
        return f"urn:ogc:def:crs:EPSG::{info.epsg}"
    return info.crs_wkt


def raster_geojson(info: RasterInfo, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   names: Sequence[str]) -> dict:
    """A FeatureCollection of the pixel ``boxes`` as Polygons in the raster's CRS (see the module doc)."""
    features = [{"type": "Feature",
                 "geometry": {"type": "Polygon", "coordinates": [_ring(box, info.transform)]},
                 "properties": {"class": names[int(c)], "class_id": int(c), "score": round(float(s), 5),
                                "box_px": [round(float(v), 2) for v in box]}}
                for box, s, c in zip(boxes, scores, labels)]
    return {"type": "FeatureCollection", "name": Path(info.path).stem,
            "crs": {"type": "name", "properties": {"name": crs_name(info)}}, "features": features}


def write_geojson(out: str | Path, info: RasterInfo, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                  names: Sequence[str]) -> Path | None:
    """Write :func:`raster_geojson` to ``out``; a raster without a CRS or a geotransform: a one-line note on
    stderr instead, and None."""
    missing = [w for w, v in (("CRS", info.crs_wkt), ("geotransform", info.transform)) if v is None]
    if missing:
        print(f"note: {info.path} has no {' and no '.join(missing)}: no GeoJSON, detections in pixel coordinates "
              f"only (predictions.json)", file=sys.stderr)
        return None
    out = Path(out)
    with open(out, "w") as fh:
        json.dump(raster_geojson(info, boxes, scores, labels, names), fh)
    return out


__all__ = ["EDGE_MARGIN", "RASTER_WINDOW", "RasterPrediction", "crs_name", "predict_raster", "raster_geojson",
           "raster_windows", "write_geojson"]
