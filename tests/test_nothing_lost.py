"""Nothing a user gave is lost without a word: every detection of a sliced image, every same-stem output,
the upright view of an EXIF-rotated photo, every good box beside a bad one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import SYNTHETIC_NAMES, tiny_model_cfg
from hmpe.data.dataset import build_dataset
from hmpe.data.formats import DataError, load_dataset
from hmpe.data.images import load_image, probe_image
from hmpe.data.tools import data_stats, format_stats


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from test_export import make_checkpoint

    return str(make_checkpoint(tmp_path_factory.mktemp("lost") / "tiny.pt", imgsz=64))


# ------------------------------------------------------------------ EXIF orientation
def _sideways_jpeg(path: Path) -> Path:
    """Stored 40 wide x 32 high with a white 8 px block top-left and EXIF orientation 6 (rotate 90 CW to
    view): shown 32 wide x 40 high, the block top-right."""
    stored = np.zeros((32, 40, 3), np.uint8)
    stored[:8, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=100)
    return path


def _block_top_right(image: np.ndarray) -> bool:  # image [H,W,3] as shown: 40 x 32, block at rows 0:8, cols 24:32
    return image.shape[:2] == (40, 32) and image[:8, 24:].mean() > 200 and image[:8, :8].mean() < 50


def test_exif_orientation_applied_by_load_and_probe(tmp_path):
    path = _sideways_jpeg(tmp_path / "photo.jpg")
    assert probe_image(path) == (32, 40)  # (width, height) as shown
    assert _block_top_right(load_image(path))


def test_exif_rotated_dataset_and_predict_are_upright(tmp_path, ckpt):
    path = _sideways_jpeg(tmp_path / "images" / "train" / "photo.jpg")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    # the block as a labelling tool shows it: top right of the 32 x 40 upright image
    (tmp_path / "labels" / "train" / "photo.txt").write_text(f"0 {28 / 32} {4 / 40} {8 / 32} {8 / 40}\n")
    (tmp_path / "data.yaml").write_text("path: .\nformat: yolo\ntrain: images/train\nnames: [block]\n")
    dataset = build_dataset(str(tmp_path / "data.yaml"), "train")
    sample = dataset.samples[0]
    assert (sample.width, sample.height) == (32, 40)
    image, _ = dataset.load(0)
    x1, y1, x2, y2 = (int(round(v)) for v in sample.boxes[0])
    assert (x1, y1, x2, y2) == (24, 0, 32, 8) and float(image[:, y1:y2, x1:x2].float().mean()) > 200

    from hmpe.api import Detector

    (pred,) = Detector(weights=ckpt, device="cpu").predict(path, conf=0.0, save=False)
    assert (pred.width, pred.height) == (32, 40)


# ------------------------------------------------------------------ detection caps
class GridModel:
    """A fake ``PredictFn``: 100 separate 4 px boxes on a 10 x 10 grid of every input, distinct scores."""

    def __init__(self, imgsz: int):
        xy = torch.stack(torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij"), -1).reshape(-1, 2)
        self.boxes = torch.cat((3 + 6 * xy, 7 + 6 * xy), 1).float() * (imgsz / 64)  # [100,4] in input pixels
        self.scores = torch.linspace(0.9, 0.3, 100)

    def __call__(self, x: torch.Tensor):
        b = x.shape[0]
        return (self.boxes.expand(b, -1, -1), self.scores.expand(b, -1),
                torch.zeros(b, 100, dtype=torch.int64))


def test_sliced_predict_keeps_every_detection_unless_capped(ckpt, tmp_path, monkeypatch, capsys):
    import hmpe.api
    from hmpe.api import Detector

    monkeypatch.setattr(hmpe.api, "model_predict_fn", lambda model, post, device, imgsz: GridModel(imgsz))
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((128, 256, 3), np.uint8)).save(path)
    det = Detector(weights=ckpt, device="cpu")
    (every,) = det.predict(path, conf=0.25, slice=128, overlap=0.0, save=False)  # 2 tiles x 100
    assert len(every.scores) == 200 and "warning" not in capsys.readouterr().err
    (capped,) = det.predict(path, conf=0.25, slice=128, overlap=0.0, max_det=50, save=False)
    assert len(capped.scores) == 50 and capped.scores.min() >= np.sort(every.scores)[-50]
    err = capsys.readouterr().err
    assert f"{path}: 200 detections, kept the max_det=50 highest; pass max_det=0 for all" in err


def test_whole_image_cap_warns_when_it_drops_detections(tmp_path, capsys):
    from hmpe.api import Detector
    from test_export import make_checkpoint

    cfg = tiny_model_cfg() | {"postprocess": {"num_top_queries": 150}}  # top 150 of 30 queries x 5 classes
    det = Detector(weights=str(make_checkpoint(tmp_path / "top150.pt", model_cfg=cfg, imgsz=64)), device="cpu")
    Image.new("RGB", (64, 48), (90, 120, 60)).save(tmp_path / "a.jpg")
    (top,) = det.predict(tmp_path / "a.jpg", conf=0.0, save=False)
    assert len(top.scores) == 100
    assert "a.jpg: 150 detections, kept the max_det=100 highest" in capsys.readouterr().err
    (five,) = det.predict(tmp_path / "a.jpg", conf=0.0, max_det=5, save=False)
    assert len(five.scores) == 5 and "kept the max_det=5 highest" in capsys.readouterr().err
    (every,) = det.predict(tmp_path / "a.jpg", conf=0.0, max_det=0, save=False)
    assert len(every.scores) == 150 and "warning" not in capsys.readouterr().err


# ------------------------------------------------------------------ same-stem outputs
def test_output_names_are_unique_and_readable():
    from hmpe.engine.eval.predict import output_names

    paths = [Path(p) for p in ("d/a.jpg", "d/a.png", "d/b.tif", "x/c.jpg", "y/c.jpg", "d/a_png.bmp")]
    assert output_names(paths, ".jpg") == ["a_jpg.jpg", "a_png.jpg", "b.jpg", "x_c_jpg.jpg", "y_c_jpg.jpg",
                                           "a_png_2.jpg"]
    assert output_names([Path("d/b.png")], "_heatmap.png") == ["b_heatmap.png"]


def test_predict_writes_one_drawing_per_same_stem_input(ckpt, tmp_path):
    from hmpe.api import Detector

    src = tmp_path / "in"
    src.mkdir()
    for name, colour in (("a.jpg", (200, 0, 0)), ("a.png", (0, 200, 0)), ("b.png", (0, 0, 200))):
        Image.new("RGB", (64, 48), colour).save(src / name)
    det = Detector(weights=ckpt, device="cpu")
    det.predict(src, save=True, project=str(tmp_path / "runs"), name="p")
    run = tmp_path / "runs" / "predict" / "p"
    assert sorted(p.name for p in run.glob("*.jpg")) == ["a_jpg.jpg", "a_png.jpg", "b.jpg"]
    assert np.asarray(Image.open(run / "a_png.jpg"))[24, 32, 1] > 150  # the green one, not overwritten
    saved = json.loads((run / "predictions.json").read_text())
    assert sorted(e["image"] for e in saved) == sorted(str(src / n) for n in ("a.jpg", "a.png", "b.png"))


def test_heatmap_writes_one_figure_per_same_stem_input(tmp_path):
    from hmpe.api import Detector
    from test_export import make_checkpoint

    cfg = tiny_model_cfg()
    cfg["name"], cfg["heatmap"] = "tiny-heat", {"tau": 0.05}
    weights = make_checkpoint(tmp_path / "heat.pt", model_cfg=cfg, imgsz=64)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.jpg", "a.png"):
        Image.new("RGB", (64, 48), (90, 120, 60)).save(src / name)
    Detector(weights=str(weights), device="cpu").heatmap(src, out=tmp_path / "figs", dpi=30)
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["a_jpg_heatmap.png", "a_png_heatmap.png"]


# ------------------------------------------------------------------ skip_bad drops the bad box, not the image
def _noise(path: Path, width: int = 64, height: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_skip_bad_drops_bad_yolo_boxes_and_keeps_their_image(tmp_path, caplog):
    for name in ("a", "b"):
        _noise(tmp_path / "images" / "train" / f"{name}.png")
    (tmp_path / "images" / "train" / "c.png").write_bytes(b"not an image")  # unreadable: the sample goes
    labels = tmp_path / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2\n1 0.25 0.25 0.1 0.1\nzero 0.5 0.5 0.1 0.1\n")
    (labels / "b.txt").write_text("1 0.5 0.5 0.4 0.4\n")
    (tmp_path / "data.yaml").write_text(f"path: .\nformat: yolo\ntrain: images/train\nnames: {SYNTHETIC_NAMES}\n")
    with pytest.raises(DataError, match=r"a\.txt:2: box .* lies outside"):
        load_dataset(str(tmp_path / "data.yaml"), "train")
    with caplog.at_level(logging.WARNING, logger="hmpe.data"):
        samples, _ = load_dataset(str(tmp_path / "data.yaml"), "train", skip_bad=True)
    assert [Path(s.path).name for s in samples] == ["a.png", "b.png"] and samples[0].labels.tolist() == [0, 1]
    assert len(samples.skipped) == 1 and len(samples.skipped_boxes) == 2
    assert "1 skipped as bad, 2 bad boxes dropped" in caplog.text and "a.txt:4" in caplog.text
    stats = data_stats(str(tmp_path / "data.yaml"), skip_bad=True)
    assert (stats["total"]["objects"], stats["total"]["skipped"], stats["total"]["skipped_boxes"]) == (3, 1, 2)
    assert "bad boxes dropped" in format_stats(stats) and "a.txt:2" in format_stats(stats)


def test_skip_bad_drops_bad_coco_annotations_and_keeps_their_image(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        _noise(tmp_path / name)
    ann = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20]},
           {"id": 2, "image_id": 1, "category_id": 9, "bbox": [1, 2, 10, 20]},  # unknown category
           {"id": 3, "image_id": 1, "category_id": 2, "bbox": [5, 5, -3, 4]},  # negative size
           {"id": 4, "image_id": 1, "category_id": 2, "bbox": [30, 20, 10, 10]},
           {"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 64, 48]},
           {"id": 6, "image_id": 77, "category_id": 1, "bbox": [0, 0, 4, 4]}]  # no such image
    payload = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                          {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}],
               "annotations": ann, "categories": [{"id": 1, "name": "plane"}, {"id": 2, "name": "ship"}]}
    (tmp_path / "ann.json").write_text(json.dumps(payload))
    cfg = {"path": str(tmp_path), "format": "coco", "train": "ann.json"}
    with pytest.raises(DataError, match="refers to image_id 77"):  # checked before the images
        load_dataset(cfg, "train")
    samples, _ = load_dataset(cfg, "train", skip_bad=True)
    assert [s.image_id for s in samples] == [1, 2] and samples[0].labels.tolist() == [0, 1]
    np.testing.assert_allclose(samples[0].boxes, [[1, 2, 11, 22], [30, 20, 40, 30]])
    assert len(samples.skipped) == 0 and len(samples.skipped_boxes) == 3
    assert "0 skipped as bad, 3 bad boxes dropped" in samples.summary()
