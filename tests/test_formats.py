"""Readers, writers, dataset YAML and bad-input handling of hmpe.data.formats (fixtures in tmp_path)."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmpe.data.formats import (
    BOX_TOLERANCE_PX,
    DataError,
    checked_box,
    load_data_config,
    load_dataset,
    write_coco,
    write_yolo,
)

NAMES3 = ["plane", "ship", "tank"]


def write_image(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    """A small noisy JPEG/PNG (noise so that a truncated copy really cuts compressed data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_nwpu(root: Path, lines_001: str | None = None) -> Path:
    """NWPU-like layout: 2 positives (one with spaced lines), 1 negative sharing a stem; returns the YAML."""
    write_image(root / "positive image set" / "001.jpg", 100, 80)
    write_image(root / "positive image set" / "002.jpg", 120, 90)
    write_image(root / "negative image set" / "001.jpg", 50, 40)
    gt = root / "ground truth"
    gt.mkdir(parents=True)
    (gt / "001.txt").write_text(lines_001 if lines_001 is not None else "(10,20),(30,40),1\n( 5, 6),(60 , 70),3 \n")
    (gt / "002.txt").write_text("\n(0,0),(120,90),2\n\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("positive image set/001.jpg\nnegative image set/001.jpg\n")
    (root / "splits" / "val.txt").write_text("positive image set/002.jpg\n")
    return write_yaml(
        root / "data.yaml",
        "path: .\nformat: nwpu\ntrain: splits/train.txt\nval: splits/val.txt\nnames: [plane, ship, tank]\n",
    )


def _error(cfg, split="train", **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(cfg, split, **kwargs)
    return str(info.value)


# ---- dataset YAML ------------------------------------------------------------------------------
def test_yaml_path_resolves_against_yaml_folder_and_names_dict(tmp_path, monkeypatch):
    yaml_path = write_yaml(tmp_path / "cfgs" / "d.yaml", "path: ../data\nformat: yolo\ntrain: t\nnames: {0: a, 1: b}\n")
    monkeypatch.chdir(tmp_path / "cfgs")
    cfg = load_data_config(str(yaml_path))
    assert cfg["path"] == str((tmp_path / "data").resolve())
    assert cfg["names"] == ["a", "b"]
    assert cfg["_source"] == str(yaml_path)


def test_shipped_configs_resolve_by_name(tmp_path, monkeypatch):
    assert load_data_config("synthetic")["format"] == "synthetic"
    monkeypatch.delenv("HMPE_DATASETS", raising=False)
    monkeypatch.chdir(tmp_path)
    default = load_data_config("nwpu-vhr10")
    assert default["path"] == str((tmp_path / ".." / "shared" / "datasets" / "nwpu-vhr10").resolve())
    monkeypatch.setenv("HMPE_DATASETS", str(tmp_path / "sets"))
    assert load_data_config("nwpu-vhr10")["path"] == str(tmp_path / "sets" / "nwpu-vhr10")
    assert load_data_config("nwpu-vhr10", overrides={"path": "elsewhere"})["path"] == str(tmp_path / "elsewhere")


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no-such.yaml"):
        load_data_config(str(tmp_path / "no-such.yaml"))
    bad_format = write_yaml(tmp_path / "f.yaml", "path: .\nformat: kitti\ntrain: x\n")
    with pytest.raises(DataError, match=r"f\.yaml.*format"):
        load_data_config(str(bad_format))
    broken = write_yaml(tmp_path / "b.yaml", "path: .\nformat: [unclosed\n")
    with pytest.raises(DataError, match=r"b\.yaml:\d+: invalid YAML"):
        load_data_config(str(broken))
    for text in ("", "- a list\n"):  # an empty file and a top-level list are no dataset YAML either
        shapeless = write_yaml(tmp_path / "s.yaml", text)
        with pytest.raises(DataError, match=r"s\.yaml: a dataset YAML must be a mapping"):
            load_data_config(str(shapeless))
    missing_root = write_yaml(tmp_path / "m.yaml", "path: nowhere\nformat: nwpu\ntrain: t.txt\n")
    assert "m.yaml: dataset folder" in _error(str(missing_root)) and "nowhere" in _error(str(missing_root))
    cfg = make_nwpu(tmp_path / "nwpu")
    assert "data.yaml" in _error(cfg, split="test") and "'test'" in _error(cfg, split="test")


# ---- NWPU ----------------------------------------------------------------------------------------
def test_nwpu_reader_parses_spaced_lines_and_negatives(tmp_path):
    cfg = make_nwpu(tmp_path)
    train, names = load_dataset(cfg, "train")
    assert names == NAMES3
    assert [Path(s.path).relative_to(tmp_path).as_posix() for s in train] == [
        "positive image set/001.jpg",
        "negative image set/001.jpg",
    ]
    positive, negative = train
    assert (positive.width, positive.height) == (100, 80)
    np.testing.assert_array_equal(positive.boxes, [[10, 20, 30, 40], [5, 6, 60, 70]])
    np.testing.assert_array_equal(positive.labels, [0, 2])
    assert negative.is_negative and (negative.width, negative.height) == (50, 40)
    assert train.category_ids == [1, 2, 3]
    val, _ = load_dataset(cfg, "val")
    np.testing.assert_array_equal(val[0].boxes, [[0, 0, 120, 90]])  # blank lines skipped


@pytest.mark.parametrize(
    "line, what",
    [
        ("(10,20),(30,40)", "malformed line"),
        ("(10,20),(30,40),x", "malformed line"),
        ("(10,20),(30,40),4", "unknown class id 4"),
        ("(10,20),(30,40),0", "unknown class id 0"),
        ("(30,20),(10,40),1", "needs x2 > x1"),
        ("(10,40),(30,40),1", "needs x2 > x1 and y2 > y1"),
        ("(10,20),(130,40),1", "outside the 100x80 image"),
    ],
)
def test_nwpu_bad_line_names_file_and_line(tmp_path, line, what):
    cfg = make_nwpu(tmp_path, lines_001=f"(1,1),(9,9),1\n{line}\n")
    message = _error(cfg)
    assert f"{tmp_path / 'ground truth' / '001.txt'}:2:" in message
    assert what in message


def test_nwpu_missing_files_and_empty_split(tmp_path):
    cfg = make_nwpu(tmp_path)
    (tmp_path / "ground truth" / "002.txt").unlink()
    message = _error(cfg, "val")
    assert "002.txt" in message and "annotation file missing" in message

    (tmp_path / "splits" / "val.txt").write_text("positive image set/001.jpg\npositive image set/404.jpg\n")
    message = _error(cfg, "val")
    assert f"{tmp_path / 'splits' / 'val.txt'}:2:" in message and "404.jpg" in message and "not found" in message

    (tmp_path / "splits" / "val.txt").write_text("\n# nothing here\n")
    message = _error(cfg, "val")
    assert "data.yaml" in message and "no samples" in message

    (tmp_path / "splits" / "val.txt").unlink()
    assert "val.txt" in _error(cfg, "val") and "split list file not found" in _error(cfg, "val")


def test_corrupt_and_truncated_images_name_the_file(tmp_path):
    cfg = make_nwpu(tmp_path)
    image = tmp_path / "positive image set" / "001.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    message = _error(cfg)
    assert str(image) in message and "truncated" in message
    image.write_bytes(b"this is not an image at all" * 10)
    message = _error(cfg)
    assert str(image) in message and "not a readable image" in message


def test_truncated_png_detected(tmp_path):
    root = tmp_path / "yolo"
    image = write_image(root / "images" / "train" / "a.png", 64, 48)
    image.write_bytes(image.read_bytes()[:-30])
    cfg = {"path": str(root), "format": "yolo", "train": "images/train", "names": NAMES3}
    message = _error(cfg)
    assert str(image) in message and "PNG IEND" in message


def test_skip_bad_skips_counts_and_logs(tmp_path, caplog):
    cfg = make_nwpu(tmp_path, lines_001="(10,20),(30,40),9\n")
    (tmp_path / "splits" / "train.txt").write_text(
        "positive image set/001.jpg\nnegative image set/001.jpg\npositive image set/002.jpg\npositive image set/7.jpg\n"
    )
    with caplog.at_level(logging.WARNING, logger="hmpe.data"):
        samples, _ = load_dataset(cfg, "train", skip_bad=True)
    # the missing image is skipped; the bad box is dropped and its image (with no other box) kept
    assert len(samples) == 3 and len(samples.skipped) == 1 and len(samples.skipped_boxes) == 1
    assert "001.txt:1: unknown class id 9" in str(samples.skipped_boxes[0])
    assert "train.txt:4:" in str(samples.skipped[0])
    assert [s.image_id for s in samples] == [0, 1, 2] and len(samples[0].boxes) == 0  # ids: list positions
    assert "1 skipped" in caplog.text and "unknown class id 9" in caplog.text
    assert "1 skipped as bad, 1 bad boxes dropped" in samples.summary()


def test_data_error_forms_and_pickling():
    err = DataError("a/b.txt", "bad thing", 7)
    assert str(err) == "a/b.txt:7: bad thing" and (err.file, err.line, err.what) == ("a/b.txt", 7, "bad thing")
    assert str(DataError("a/b.txt", "bad")) == "a/b.txt: bad"
    assert str(DataError("a/b.txt:7: bad thing")) == "a/b.txt:7: bad thing"  # DataLoader re-raise form
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.line == 7


def test_checked_box_tolerance_rule():
    assert checked_box([-0.5, 0, 100.6, 50], 100, 50, "f") == [0.0, 0.0, 100.0, 50.0]
    with pytest.raises(DataError, match="outside"):
        checked_box([-(BOX_TOLERANCE_PX + 0.5), 0, 10, 10], 100, 50, "f")
    with pytest.raises(DataError, match="outside"):
        checked_box([100.2, 0, 100.9, 10], 100, 50, "f")  # only inside the tolerance band
    with pytest.raises(DataError, match="non-finite"):
        checked_box([0, 0, float("nan"), 10], 100, 50, "f")


# ---- Pascal VOC ----------------------------------------------------------------------------------
def _voc_xml(filename: str, size: tuple[int, int], objects: list[tuple[str, tuple, int]]) -> str:
    objs = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, difficult in objects
    )
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")  # fmt: skip


def make_voc(root: Path) -> dict:
    year_objects = {
        "VOC2007": {"000001": [("car", (1, 2, 30, 40), 0), ("dog", (10, 10, 20, 25), 1)], "000002": []},
        "VOC2012": {"2012_000001": [("dog", (0, 0, 64, 48), 0)]},
    }
    for year, items in year_objects.items():
        for stem, objects in items.items():
            write_image(root / year / "JPEGImages" / f"{stem}.jpg", 64, 48)
            xml = root / year / "Annotations" / f"{stem}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            xml.write_text(_voc_xml(f"{stem}.jpg", (64, 48), objects))
        split = root / year / "ImageSets" / "Main" / "trainval.txt"
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("".join(f"{stem}\n" for stem in items))
    return {"path": str(root), "format": "voc", "train": ["VOC2007/trainval", "VOC2012/trainval"],
            "names": ["car", "dog"]}  # fmt: skip


def test_voc_merges_07_12_and_marks_difficult_ignore(tmp_path):
    samples, names = load_dataset(make_voc(tmp_path), "train")
    assert names == ["car", "dog"]
    assert [Path(s.path).name for s in samples] == ["000001.jpg", "000002.jpg", "2012_000001.jpg"]
    assert [s.image_id for s in samples] == [0, 1, 2]
    first = samples[0]
    np.testing.assert_array_equal(first.boxes, [[1, 2, 30, 40], [10, 10, 20, 25]])
    np.testing.assert_array_equal(first.labels, [0, 1])
    np.testing.assert_array_equal(first.ignore, [False, True])
    assert samples[1].is_negative


def test_voc_bad_input_names_xml(tmp_path):
    cfg = make_voc(tmp_path)
    xml = tmp_path / "VOC2012" / "Annotations" / "2012_000001.xml"
    xml.write_text(_voc_xml("2012_000001.jpg", (64, 48), [("cat", (0, 0, 5, 5), 0)]))
    message = _error(cfg)
    assert str(xml) in message and "unknown class 'cat'" in message
    xml.write_text("<annotation><object>")
    message = _error(cfg)
    assert str(xml) in message and "malformed XML" in message
    xml.write_text(_voc_xml("2012_000001.jpg", (64, 48), [("dog", (0, 0, 65.5, 5), 0)]))
    assert str(xml) in _error(cfg) and "outside" in _error(cfg)
    xml.write_text(_voc_xml("2012_000001.jpg", (640, 480), []))
    assert "declares 2012_000001.jpg as 640x480 but the image is 64x48" in _error(cfg)


# ---- COCO ----------------------------------------------------------------------------------------
def _coco_payload(category_ids: list[int]) -> dict:
    images = [
        {"id": 7, "file_name": "imgs/a.jpg", "width": 64, "height": 48},
        {"id": 3, "file_name": "imgs/b.jpg", "width": 64, "height": 48},
    ]
    c0, c1, c2 = category_ids
    annotations = [
        {"id": 1, "image_id": 7, "category_id": c2, "bbox": [1, 2, 10, 20], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": c0, "bbox": [5.5, 6, 4, 4], "iscrowd": 1},
        {"id": 3, "image_id": 7, "category_id": c1, "bbox": [0, 0, 64, 48], "iscrowd": 0},
    ]
    categories = [{"id": c, "name": n} for c, n in zip(category_ids, NAMES3)][::-1]  # order must not matter
    return {"images": images, "annotations": annotations, "categories": categories}


def make_coco(root: Path, category_ids: list[int], name: str = "ann.json") -> dict:
    write_image(root / "imgs" / "a.jpg", 64, 48)
    write_image(root / "imgs" / "b.jpg", 64, 48)
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(_coco_payload(category_ids)))
    return {"path": str(root), "format": "coco", "train": name}


def _same_samples(a, b, atol=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.image_id, x.width, x.height) == (y.image_id, y.width, y.height)
        np.testing.assert_allclose(x.boxes, y.boxes, atol=atol)
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_array_equal(x.ignore, y.ignore)


def test_coco_any_category_base_gives_same_samples(tmp_path):
    zero, names0 = load_dataset(make_coco(tmp_path / "z", [0, 1, 2]), "train")
    one, names1 = load_dataset(make_coco(tmp_path / "o", [1, 2, 3]), "train")
    gappy, _ = load_dataset(make_coco(tmp_path / "g", [5, 10, 90]), "train")
    assert names0 == names1 == NAMES3
    _same_samples(zero, one)
    _same_samples(zero, gappy)
    assert (zero.category_ids, one.category_ids, gappy.category_ids) == ([0, 1, 2], [1, 2, 3], [5, 10, 90])
    a, b = zero
    assert (a.image_id, b.image_id) == (7, 3) and b.is_negative
    np.testing.assert_allclose(a.boxes, [[1, 2, 11, 22], [5.5, 6, 9.5, 10], [0, 0, 64, 48]])  # xywh -> xyxy
    np.testing.assert_array_equal(a.labels, [2, 0, 1])
    np.testing.assert_array_equal(a.ignore, [False, True, False])  # iscrowd -> ignore


def test_coco_id_mapping_round_trips(tmp_path):
    samples, names = load_dataset(make_coco(tmp_path, [5, 10, 90]), "train")
    out = write_coco(samples, names, tmp_path / "out.json", image_root=tmp_path, category_ids=samples.category_ids)
    written = json.loads(out.read_text())
    assert sorted(c["id"] for c in written["categories"]) == [5, 10, 90]
    assert written["images"][0]["file_name"] == "imgs/a.jpg"
    assert sorted(a["category_id"] for a in written["annotations"]) == [5, 10, 90]
    again, names_again = load_dataset({"path": str(tmp_path), "format": "coco", "train": "out.json"}, "train")
    assert names_again == names and again.category_ids == [5, 10, 90]
    _same_samples(samples, again, atol=1e-5)


def test_coco_split_with_img_dir(tmp_path):
    make_coco(tmp_path, [1, 2, 3], name="annotations/x.json")
    payload = json.loads((tmp_path / "annotations" / "x.json").read_text())
    for image in payload["images"]:
        image["file_name"] = image["file_name"].removeprefix("imgs/")
    (tmp_path / "annotations" / "x.json").write_text(json.dumps(payload))
    cfg = {"path": str(tmp_path), "format": "coco", "val": {"ann_file": "annotations/x.json", "img_dir": "imgs"}}
    samples, _ = load_dataset(cfg, "val")
    assert Path(samples[0].path) == tmp_path / "imgs" / "a.jpg"


@pytest.mark.parametrize(
    "mutate, what",
    [
        (lambda p: p["annotations"][0].update(category_id=99), "unknown category_id 99"),
        (lambda p: p["annotations"][0].update(bbox=[1, 2, -3, 4]), "needs x2 > x1"),
        (lambda p: p["annotations"][0].update(bbox=[1, 2, 3]), "bbox must be [x, y, w, h]"),
        (lambda p: p["images"][0].update(width=65), "declares imgs/a.jpg as 65x48"),
        (lambda p: p["annotations"][0].update(image_id=12345), "not in 'images'"),
    ],
)
def test_coco_bad_input_names_json(tmp_path, mutate, what):
    cfg = make_coco(tmp_path, [1, 2, 3])
    payload = json.loads((tmp_path / "ann.json").read_text())
    mutate(payload)
    (tmp_path / "ann.json").write_text(json.dumps(payload))
    message = _error(cfg)
    assert str(tmp_path / "ann.json") in message and what in message


def test_coco_invalid_json_names_file_and_line(tmp_path):
    cfg = make_coco(tmp_path, [1, 2, 3])
    (tmp_path / "ann.json").write_text('{\n"images": [,]\n}')
    assert f"{tmp_path / 'ann.json'}:2: invalid JSON" in _error(cfg)


def test_coco_yaml_names_must_match_categories(tmp_path):
    cfg = make_coco(tmp_path, [1, 2, 3]) | {"names": ["a", "b", "c"]}
    assert "ann.json" in _error(cfg) and "dataset YAML names" in _error(cfg)


# ---- YOLO ----------------------------------------------------------------------------------------
def make_yolo(root: Path) -> Path:
    write_image(root / "images" / "train" / "a.jpg", 100, 50)
    write_image(root / "images" / "train" / "sub" / "b.png", 40, 40)
    write_image(root / "images" / "train" / "c.jpg", 30, 20)  # no label file: a negative
    labels = root / "labels" / "train"
    (labels / "sub").mkdir(parents=True)
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n\n2 0.1 0.1 0.2 0.2\n")
    (labels / "sub" / "b.txt").write_text("1 0.5 0.5 1.0 1.0\n")
    text = "path: .\nformat: yolo\ntrain: images/train\nval: train\nnames: [plane, ship, tank]\n"
    return write_yaml(root / "data.yaml", text)


def test_yolo_reader(tmp_path):
    cfg = make_yolo(tmp_path)
    samples, names = load_dataset(cfg, "train")
    assert names == NAMES3
    by_name = {Path(s.path).name: s for s in samples}
    assert set(by_name) == {"a.jpg", "b.png", "c.jpg"}
    np.testing.assert_allclose(by_name["a.jpg"].boxes, [[40, 15, 60, 35], [0, 0, 20, 10]], atol=1e-4)
    np.testing.assert_array_equal(by_name["a.jpg"].labels, [0, 2])
    np.testing.assert_allclose(by_name["b.png"].boxes, [[0, 0, 40, 40]])
    assert by_name["c.jpg"].is_negative
    val, _ = load_dataset(cfg, "val")  # "train" means images/train
    assert len(val) == 3


@pytest.mark.parametrize(
    "line, what",
    [
        ("0 0.5 0.5 0.2", "expected 'cls cx cy w h' (5 values, got 4)"),
        ("0 0.5 0.5 0.2 0.4 0.1 0.1", "(5 values, got 7)"),
        ("0 0.5 a 0.2 0.4", "non-numeric"),
        ("3 0.5 0.5 0.2 0.4", "unknown class 3"),
        ("1.5 0.5 0.5 0.2 0.4", "unknown class 1.5"),
        ("0 0.5 0.5 0 0.4", "needs x2 > x1"),
        ("0 0.95 0.5 0.2 0.4", "outside the 100x50 image"),
    ],
)
def test_yolo_bad_line_names_file_and_line(tmp_path, line, what):
    cfg = make_yolo(tmp_path)
    label = tmp_path / "labels" / "train" / "a.txt"
    label.write_text(f"0 0.5 0.5 0.2 0.4\n{line}\n")
    message = _error(cfg)
    assert f"{label}:2:" in message and what in message


def test_yolo_writer_round_trip(tmp_path):
    samples, names = load_dataset(make_yolo(tmp_path / "src"), "train")
    report = write_yolo(samples, names, tmp_path / "out", "val", image_root=tmp_path / "src" / "images" / "train")
    assert report == {"images": 3, "objects": 3, "ignored_dropped": 0}
    assert (tmp_path / "out" / "labels" / "val" / "c.txt").read_text() == ""  # explicit negative
    cfg = {"path": str(tmp_path / "out"), "format": "yolo", "val": "images/val", "names": names}
    again, _ = load_dataset(cfg, "val")
    _same_samples(sorted(samples, key=lambda s: s.path), sorted(again, key=lambda s: s.path), atol=1e-4)
