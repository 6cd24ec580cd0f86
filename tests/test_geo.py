"""GeoTIFF in, GeoJSON out (hmpe.data.geo, hmpe.engine.eval.raster, Detector.predict's routing): a synthetic GeoTIFF in
EPSG:32633 with 0.5 m pixels, objects drawn at known pixels, a nodata strip; a stub detector that finds exactly
the drawn objects in the tiles it is given stands in for the model."""

import json
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

rasterio = pytest.importorskip("rasterio")
from rasterio.windows import Window  # noqa: E402

from hmpe.data import geo  # noqa: E402
from hmpe.data.types import DataError  # noqa: E402
from hmpe.engine.eval.raster import predict_raster, raster_windows  # noqa: E402
from hmpe.engine.eval.slicing import tile_grid  # noqa: E402

X0, Y0, PX = 500000.0, 5000000.0, 0.5  # upper-left corner (m) and pixel size of the rasters
W, H = 1200, 900
SLICE, OVERLAP, WINDOW = 128, 0.25, 320  # tile stride 96: windows of 320 px (3 x 3 tiles) overlapping by 32
NODATA_X = 600  # columns left of it are nodata: the windows starting at x = 0 hold no valid pixel
# windows start at x = 0, 288, 576, 864, 1152 and y = 0, 288, 576, 864 (inner sides: x = 608, 864, 896, 1152,
# 1184; y = 288, 320, 576, 608, 864, 896)
OBJECTS = [  # x1, y1, x2, y2, class (0: red, 1: green)
    (880, 100, 920, 140, 0),  # across x = 896 (a fragment in one window, whole in the next)
    (700, 300, 740, 330, 1),  # across y = 320
    (1000, 590, 1030, 620, 0),  # across y = 576 and y = 608
    (1170, 400, 1195, 430, 1),  # in the narrow last column, cut at x = 1184 by its neighbour
    (620, 880, 660, 900, 0),  # on the raster's bottom border
    (602, 50, 640, 80, 1),  # beside the nodata strip, cut at x = 608 by the window over it
    (850, 700, 950, 760, 0),  # wider than the window overlap: cut by both windows -> their union
]
COLOURS = {0: (255, 0, 0), 1: (0, 255, 0)}


def scene(dtype=np.uint8, extra_band=False) -> np.ndarray:
    """``[bands, H, W]``: grey background with the same noise in every band, the objects, zeros (nodata) on the
    left. 16-bit: the 8-bit values x 200 + 1000. ``extra_band``: bands 1-3 without objects and a fourth band
    that holds the red objects only."""
    grey = (30 + np.random.default_rng(0).integers(0, 20, (H, W))).astype(np.float64)
    img, fourth = np.stack([grey] * 3), grey.copy()
    for x1, y1, x2, y2, c in OBJECTS:
        img[:, y1:y2, x1:x2] = np.array(COLOURS[c], float)[:, None, None]
        if c == 0:
            fourth[y1:y2, x1:x2] = 255
    if extra_band:
        img = np.stack([grey, grey, grey, fourth])
    if dtype == np.uint16:
        img = img * 200 + 1000
    img[:, :, :NODATA_X] = 0
    return img.astype(dtype)


def write_tif(path, data: np.ndarray, crs="EPSG:32633", transform=None, nodata=0, **kw):
    """``data [bands, h, w]`` -> a tiled, compressed GeoTIFF at ``path``."""
    kw = {"crs": crs, "transform": transform or rasterio.Affine(PX, 0, X0, 0, -PX, Y0), "nodata": nodata, **kw}
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, tiled=True, blockxsize=128, blockysize=128, compress="deflate",
                       **{k: v for k, v in kw.items() if v is not None}) as dst:
        dst.write(data)
    return path


class StubDetector:
    """Finds what was drawn, in the tile it gets: one box per connected region where one channel exceeds the
    other by half the range (channel 0: class 0, channel 1: class 1). Counts the tiles."""

    def __init__(self, k: int = 16):
        self.k, self.tiles = k, 0

    def __call__(self, x: torch.Tensor):
        B = x.shape[0]
        self.tiles += B
        boxes, scores = torch.zeros(B, self.k, 4), torch.zeros(B, self.k)
        labels = torch.zeros(B, self.k, dtype=torch.long)
        for b in range(B):
            img, n = x[b].numpy(), 0
            for c, on in ((0, img[0] - img[1] > 0.5), (1, img[1] - img[0] > 0.5)):
                for ys, xs in ndimage.find_objects(ndimage.label(on)[0]):
                    boxes[b, n] = torch.tensor([xs.start, ys.start, xs.stop, ys.stop], dtype=torch.float32)
                    scores[b, n], labels[b, n] = 0.9, c
                    n += 1
        return boxes, scores, labels


def run(path, stub=None, **kw):
    return predict_raster(stub or StubDetector(), path, SLICE, slice=SLICE, window=WINDOW, overlap=OVERLAP,
                          progress=False, **kw)


def assert_objects(boxes, labels, objects=OBJECTS, tol=1.0):
    assert len(boxes) == len(objects), (boxes, labels)
    for *box, c in objects:
        d = np.abs(boxes - np.array(box, float)).max(1)
        assert ((d <= tol) & (labels == c)).sum() == 1, (box, c, boxes)


@pytest.fixture(scope="module")
def tif8(tmp_path_factory):
    return write_tif(tmp_path_factory.mktemp("geo") / "mosaic.tif", scene())


class ReadLog:
    """``rasterio.open`` wrapped: every read / read_masks records its window and out_shape."""

    def __init__(self, monkeypatch):
        self.calls, real = [], rasterio.open
        log = self

        class Proxy:
            def __init__(self, ds):
                self._ds = ds

            def __getattr__(self, name):
                return getattr(self._ds, name)

            def read(self, *a, **kw):
                log.calls.append(("read", kw.get("window"), kw.get("out_shape")))
                return self._ds.read(*a, **kw)

            def read_masks(self, *a, **kw):
                log.calls.append(("read_masks", kw.get("window"), kw.get("out_shape")))
                return self._ds.read_masks(*a, **kw)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._ds.close()

        monkeypatch.setattr(rasterio, "open", lambda *a, **kw: Proxy(real(*a, **kw)))


# ---------------------------------------------------------------------------------------------- the engine
def test_windows_hold_tiles_of_one_grid_and_cover_the_raster():
    wins = raster_windows(W, H, SLICE, WINDOW, OVERLAP)
    assert sorted({w[0] for w in wins}) == [0, 288, 576, 864, 1152]
    assert sorted({w[1] for w in wins}) == [0, 288, 576, 864]
    cover = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in wins:
        assert x1 - x0 <= WINDOW and y1 - y0 <= WINDOW and x0 % 96 == 0 and y0 % 96 == 0  # on the tile grid
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    with pytest.raises(ValueError, match=r"^window=200: .* at least 224 px"):
        raster_windows(W, H, SLICE, 200, OVERLAP)


def test_objects_across_window_borders_once_nodata_windows_skipped_reads_windowed(tif8, monkeypatch):
    log = ReadLog(monkeypatch)
    stub = StubDetector()
    r = run(tif8, stub)
    assert_objects(r.boxes, r.labels)
    wins = raster_windows(W, H, SLICE, WINDOW, OVERLAP)
    nodata = [w for w in wins if w[2] <= NODATA_X]
    assert r.windows == len(wins) == 20 and r.skipped == len(nodata) == 4
    # only the windows with valid pixels reached the model, each cut into its tiles
    assert stub.tiles == sum(len(tile_grid(x1 - x0, y1 - y0, SLICE, OVERLAP)) for x0, y0, x1, y1 in wins
                             if (x0, y0, x1, y1) not in nodata)
    data_reads = [c for c in log.calls if c[0] == "read"]
    assert len(data_reads) == len(wins) - len(nodata)  # a nodata window: its masks only
    for _, win, out_shape in log.calls:  # never more than a window (8-bit: no statistics read)
        assert isinstance(win, Window) and win.width <= WINDOW and win.height <= WINDOW, (win, out_shape)
    with geo.RasterReader(tif8) as reader:  # GDAL's block cache bounded: it would grow with the raster read
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == geo.GDAL_CACHE_MB and reader.info.width == W


def test_geojson_polygons_are_the_pixel_boxes_through_the_transform(tif8, tmp_path, monkeypatch):
    from hmpe.cli import main
    from test_export import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "tiny.pt", imgsz=SLICE)
    stub = StubDetector()
    monkeypatch.setattr("hmpe.api.model_predict_fn", lambda *a, **kw: stub)
    assert main(["predict", str(tif8), f"weights={ckpt}", "device=cpu", f"slice={SLICE}", f"overlap={OVERLAP}",
                 f"window={WINDOW}", f"project={tmp_path / 'runs'}"]) == 0
    run_dir = tmp_path / "runs" / "predict" / "exp"
    gj = json.loads((run_dir / "detections.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    names = torch.load(ckpt, weights_only=False)["names"]
    boxes = np.array([f["properties"]["box_px"] for f in gj["features"]])
    assert_objects(boxes, np.array([f["properties"]["class_id"] for f in gj["features"]]))
    for f in gj["features"]:
        x1, y1, x2, y2 = f["properties"]["box_px"]
        ring = np.array(f["geometry"]["coordinates"][0])
        # corners in map metres: x = X0 + 0.5 col, y = Y0 - 0.5 row; closed, counter-clockwise
        expect = [(X0 + PX * x, Y0 - PX * y) for x, y in ((x1, y1), (x1, y2), (x2, y2), (x2, y1), (x1, y1))]
        np.testing.assert_allclose(ring, expect, atol=PX * 0.011)  # box_px is rounded to 0.01 px
        area2 = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring[:-1], ring[1:]))
        assert area2 > 0
        assert f["properties"]["class"] == names[f["properties"]["class_id"]] and f["properties"]["score"] == 0.9
    (pred,) = json.loads((run_dir / "predictions.json").read_text())  # pixel boxes as for any image
    assert pred["width"] == W and len(pred["detections"]) == len(OBJECTS)
    assert not list(run_dir.glob("*.jpg"))  # a raster is never drawn whole


def test_16_bit_stretch_from_global_percentiles(tmp_path, monkeypatch):
    data = scene(np.uint16)
    path = write_tif(tmp_path / "m16.tif", data)
    log = ReadLog(monkeypatch)
    with geo.RasterReader(path) as reader:
        for b in (1, 2, 3):  # nodata left out of the statistics; decimation moves them by a sample or so
            valid = data[b - 1][data[b - 1] > 0]
            lo, hi = np.percentile(valid, geo.STRETCH_PERCENTILES)
            assert reader.stretch[b] == pytest.approx((lo, hi), abs=0.1 * (hi - lo))
    (stats,) = [c for c in log.calls if c[1] is None]  # the one read without a window: decimated
    assert max(stats[2][1:]) <= geo.STATS_SIZE
    stretched = geo.to_uint8(np.array([0, 100, 150, 200, 60000], np.uint16), (100.0, 200.0))
    assert stretched.tolist() == [0, 0, 128, 255, 255]
    r = run(path)
    assert_objects(r.boxes, r.labels)


def test_bands_select_and_single_band_repeats(tmp_path):
    four = write_tif(tmp_path / "four.tif", scene(extra_band=True), photometric="minisblack")  # band 4: no alpha
    assert len(run(four).boxes) == 0  # bands 1, 2, 3 hold no object
    r = run(four, bands=[4, 2, 3])
    assert_objects(r.boxes, r.labels, [o for o in OBJECTS if o[4] == 0])
    with pytest.raises(DataError, match=r"four.tif: bands=\[5\]: .* 1..4"):
        run(four, bands=[5])
    one = write_tif(tmp_path / "one.tif", scene()[:1])
    with geo.RasterReader(one) as reader:
        assert reader.info.bands == (1, 1, 1)
        px = reader.read((NODATA_X, 0, NODATA_X + 64, 64))
        assert px.shape == (64, 64, 3) and (px == px[..., :1]).all()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the plain raster written
def test_routing_and_rasters_without_georeferencing(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from hmpe.engine.eval.raster import write_geojson

    plain = tmp_path / "small.tif"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(plain)
    geotif = write_tif(tmp_path / "g.tif", scene()[:, :64, :64])
    assert not geo.is_raster_source(plain) and geo.is_raster_source(geotif)
    assert not geo.is_raster_source(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"^bands=\[1\] applies to GeoTIFF sources"):
        geo.raster_sources([plain], bands=[1])
    big = write_tif(tmp_path / "big.tif", scene(), crs=None, transform=rasterio.Affine.identity(), nodata=None)
    assert not geo.is_raster_source(big)
    monkeypatch.setattr(geo, "RASTER_MIN_PIXELS", W * H - 1)  # "huge" now: read window by window, in pixels
    assert geo.is_raster_source(big)
    r = run(big)
    assert r.info.transform is None and r.info.crs_wkt is None and r.skipped == 0
    assert write_geojson(tmp_path / "d.geojson", r.info, r.boxes, r.scores, r.labels, ["a", "b"]) is None
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no CRS and no geotransform" in err
    assert not (tmp_path / "d.geojson").exists()


def test_tiff_header_reads_tiff_and_bigtiff(tmp_path):
    from PIL import Image

    data = scene()[:, :64, :96]
    assert geo.tiff_header(write_tif(tmp_path / "a.tif", data)) == (96, 64, True)
    assert geo.tiff_header(write_tif(tmp_path / "b.tif", data, BIGTIFF="YES")) == (96, 64, True)
    Image.fromarray(data.transpose(1, 2, 0)).save(tmp_path / "c.tif")  # no GeoTIFF tag
    assert geo.tiff_header(tmp_path / "c.tif") == (96, 64, False)
    (tmp_path / "d.tif").write_bytes(b"not a tiff")
    assert geo.tiff_header(tmp_path / "d.tif") is None


def test_missing_rasterio_is_one_line_naming_the_extra(tif8, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from hmpe.cli import main

    plain = tmp_path / "small.tif"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(plain)
    monkeypatch.setitem(sys.modules, "rasterio", None)  # `import rasterio` raises ImportError
    assert not geo.is_raster_source(plain)  # a plain small TIFF still goes to the image decoder
    with pytest.raises(geo.MissingGeoExtra, match=r'pip install "hmpe\[geo\]"') as e:
        geo.is_raster_source(tif8)
    assert isinstance(e.value, ImportError) and len(str(e.value).splitlines()) == 1
    assert main(["predict", str(tif8), "weights=hmpe-n-nwpu", "device=cpu", f"project={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mosaic.tif" in err and 'pip install "hmpe[geo]"' in err, err


def test_memory_benchmark_runs_end_to_end(tmp_path):
    """benchmarks.geotiff_memory at one small size (a subprocess of hmpe predict on a raster it writes)."""
    from benchmarks.geotiff_memory import main

    out = tmp_path / "geotiff_memory.json"
    rec = main(["--sizes", "300", "--slice", "128", "--work-dir", str(tmp_path / "w"), "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert rec["versions"]["rasterio"] and rec["cpu"] and rec["date"]
    assert row["size"] == 300 and row["peak_rss_mib"] > 0 and "300x300 px" in row["summary"]
    assert not (tmp_path / "w" / "synthetic_300.tif").exists()  # removed after its run (--keep keeps it)
