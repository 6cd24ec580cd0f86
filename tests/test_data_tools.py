"""`hmpe data stats` / `hmpe data convert` (hmpe.data.tools), including the real NWPU VHR-10 counts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmpe.data.formats import load_data_config, load_dataset
from hmpe.cli import main
from hmpe.data.tools import data_convert, data_stats, format_stats

NAMES3 = ["plane", "ship", "tank"]


def write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def make_nwpu(root: Path) -> Path:
    """Two positives, two negatives (stems shared with the positives), one box per size bin."""
    write_image(root / "positive image set" / "001.jpg", 200, 150)
    write_image(root / "positive image set" / "002.jpg", 64, 48)
    write_image(root / "negative image set" / "001.jpg", 30, 20)
    write_image(root / "negative image set" / "002.jpg", 40, 20)
    (root / "ground truth").mkdir()
    (root / "ground truth" / "001.txt").write_text(
        "(0,0),(10,10),1\n(20,20),(40,40),2\n( 50,50),(100,100),1\n(100,40),(200,140),3\n"
    )  # areas: tiny, small, medium, large
    (root / "ground truth" / "002.txt").write_text("(0,0),(64,48),2\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("positive image set/001.jpg\nnegative image set/001.jpg\n")
    (root / "splits" / "val.txt").write_text("positive image set/002.jpg\nnegative image set/002.jpg\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(
        "path: .\nformat: nwpu\ntrain: splits/train.txt\nval: splits/val.txt\nnames: [plane, ship, tank]\n"
    )
    return yaml_path


def _by_relative_path(samples, root: Path) -> dict:
    return {Path(s.path).relative_to(root).as_posix(): s for s in samples}


def test_stats_counts_per_split_and_total(tmp_path):
    stats = data_stats(str(make_nwpu(tmp_path)))
    train, val, total = stats["splits"]["train"], stats["splits"]["val"], stats["total"]
    assert (train["images"], train["negative_images"], train["objects"]) == (2, 1, 4)
    assert train["objects_per_class"] == {"plane": 2, "ship": 1, "tank": 1}
    assert train["objects_by_size"] == {"tiny": 1, "small": 1, "medium": 1, "large": 1}
    assert (val["images"], val["negative_images"], val["objects"]) == (2, 1, 1)
    assert val["objects_by_size"] == {"tiny": 0, "small": 0, "medium": 1, "large": 0}
    assert (total["images"], total["negative_images"], total["objects"], total["skipped"]) == (4, 2, 5, 0)
    assert total["objects_per_class"] == {"plane": 2, "ship": 2, "tank": 1}
    text = format_stats(stats)
    assert "negative images" in text and "tiny   < 16^2" in text


def test_real_nwpu_stats(nwpu_root, capsys):
    cfg = load_data_config("nwpu-vhr10", overrides={"path": str(nwpu_root)})
    stats = data_stats(cfg, splits=("train", "val"))
    total = stats["total"]
    assert (total["images"], total["negative_images"], total["objects"]) == (640, 120, 3188)
    assert (stats["splits"]["train"]["images"], stats["splits"]["val"]["images"]) == (512, 128)
    assert sum(total["objects_per_class"].values()) == sum(total["objects_by_size"].values()) == 3188
    assert total["skipped"] == 0


def test_convert_to_coco_round_trip(tmp_path):
    source_yaml = make_nwpu(tmp_path / "src")
    written = data_convert(str(source_yaml), "coco", tmp_path / "out")
    assert written == tmp_path / "out" / "data.yaml"
    for split in ("train", "val"):
        original, names = load_dataset(str(source_yaml), split)
        again, names_again = load_dataset(str(written), split)
        assert names_again == names
        before = _by_relative_path(original, tmp_path / "src")
        after = _by_relative_path(again, tmp_path / "out" / "images" / split)
        assert before.keys() == after.keys()  # positive/negative 001.jpg both kept
        for key, a in before.items():
            b = after[key]
            assert (a.image_id, a.width, a.height) == (b.image_id, b.width, b.height)
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.ignore, b.ignore)
            assert Path(b.path).read_bytes() == Path(a.path).read_bytes()
    assert data_stats(str(written))["total"] == data_stats(str(source_yaml))["total"]


def test_convert_to_yolo_round_trip(tmp_path):
    source_yaml = make_nwpu(tmp_path / "src")
    written = data_convert(str(source_yaml), "yolo", tmp_path / "out", image_mode="copy")
    assert not (tmp_path / "out" / "images" / "train" / "positive image set" / "001.jpg").is_symlink()
    for split in ("train", "val"):
        original, _ = load_dataset(str(source_yaml), split)
        again, _ = load_dataset(str(written), split)
        before = _by_relative_path(original, tmp_path / "src")
        after = _by_relative_path(again, tmp_path / "out" / "images" / split)
        assert before.keys() == after.keys()
        for key, a in before.items():
            np.testing.assert_allclose(after[key].boxes, a.boxes, atol=1e-3)
            np.testing.assert_array_equal(after[key].labels, a.labels)


def test_convert_synthetic_renders_images(tmp_path):
    cfg = load_data_config("synthetic") | {"num_train": 3, "num_val": 2, "imgsz": 64}
    written = data_convert(cfg, "yolo", tmp_path / "out")
    from hmpe.data.synthetic import SyntheticDataset

    generated = SyntheticDataset.from_config(cfg, "val")
    again, names = load_dataset(str(written), "val")
    assert names == list(generated.names) and len(again) == 2
    for sample in again:
        index = int(Path(sample.path).stem)
        np.testing.assert_array_equal(np.asarray(Image.open(sample.path)), generated.render(index))
        np.testing.assert_allclose(sample.boxes, generated.samples[index].boxes, atol=1e-3)


def test_convert_coco_source_keeps_ids_and_yolo_counts_ignored(tmp_path, caplog):
    src = tmp_path / "src"
    write_image(src / "a.jpg", 50, 40)
    payload = {
        "images": [{"id": 42, "file_name": "a.jpg", "width": 50, "height": 40}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 17, "bbox": [1, 1, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 3, "bbox": [20, 20, 10, 10], "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "ship"}, {"id": 17, "name": "plane"}],
    }
    (src / "ann.json").write_text(json.dumps(payload))
    cfg = {"path": str(src), "format": "coco", "train": "ann.json", "_source": "test"}
    coco_yaml = data_convert(load_data_config(cfg), "coco", tmp_path / "coco")
    written = json.loads((tmp_path / "coco" / "annotations" / "train.json").read_text())
    assert [c["id"] for c in written["categories"]] == [3, 17]
    assert [(a["category_id"], a["iscrowd"]) for a in written["annotations"]] == [(17, 0), (3, 1)]
    assert load_dataset(str(coco_yaml), "train")[0].category_ids == [3, 17]
    with caplog.at_level(logging.WARNING, logger="hmpe.data"):
        yolo_yaml = data_convert(load_data_config(cfg), "yolo", tmp_path / "yolo")
    assert "1 ignore" in caplog.text
    assert load_dataset(str(yolo_yaml), "train")[0][0].labels.tolist() == [1]


def test_hmpe_data_cli(tmp_path, capsys):
    source_yaml = make_nwpu(tmp_path / "src")
    assert main(["data", "stats", str(source_yaml)]) == 0
    out = capsys.readouterr().out
    assert "images" in out and "train" in out and "total" in out
    assert main(["data", "convert", f"data={source_yaml}", "to=coco", f"out={tmp_path / 'out'}"]) == 0
    assert (tmp_path / "out" / "data.yaml").is_file()
    (tmp_path / "src" / "ground truth" / "002.txt").write_text("(0,0),(64,48),5\n")
    assert main(["data", "stats", str(source_yaml)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'src' / 'ground truth' / '002.txt'}:1: unknown class id" in err
    assert main(["data", "stats", str(source_yaml), "skip_bad=true"]) == 0
    out = capsys.readouterr().out
    assert "skipped in val:" in out and "002.txt:1" in out


def test_hmpe_data_takes_key_value_like_every_task(tmp_path, capsys):
    source_yaml = make_nwpu(tmp_path / "src")
    assert main(["data", "convert", f"out={tmp_path / 'kv'}", str(source_yaml), "to=yolo", "splits=[train]"]) == 0
    assert load_data_config(tmp_path / "kv" / "data.yaml")["format"] == "yolo"
    assert not (tmp_path / "kv" / "labels" / "val").exists()  # only the split asked for
    assert main(["data", "stats", f"data={source_yaml}", "skip_bad=true", "splits=[val]"]) == 0
    out = capsys.readouterr().out
    assert "val" in out and "train" not in out.split("\n")[1]
    assert not capsys.readouterr().err  # nothing deprecated


@pytest.mark.parametrize("argv,words", [
    (["stats", "{data}", "skip_bd=true"], ["unknown key 'skip_bd' in hmpe data", "'skip_bad'"]),
    (["convert", "{data}", "to=coco", "out=o", "copy=true"], ["unknown key 'copy'", "'copy_images'"]),
    (["convert", "{data}", "to=voc", "out=o"], ["to=voc: expected coco or yolo"]),
    (["stats", "{data}", "splits=[dev]"], ["splits=[dev]: expected"]),
    (["stats", "{data}", "to=coco"], ["to= is not a key of hmpe data stats"]),
    (["convert", "{data}", "out=o"], ["hmpe data convert needs to="]),
    (["stats"], ["hmpe data stats needs data="]),
    (["stats", "{data}", "data={data}"], ["DATA given twice"]),
    (["chek", "{data}"], ["unknown command 'chek'", "hmpe data stats DATA"]),
    ([], ["usage: hmpe data stats DATA"]),
    (["stats", "{data}", "--skip"], ["unknown option '--skip'", "key=value"]),
])
def test_hmpe_data_mistakes_exit_2_with_one_line(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = str(make_nwpu(tmp_path / "src"))
    assert main(["data", *(a.replace("{data}", data) for a in argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hmpe data: error: "), err
    assert all(w in err for w in words), (words, err)
    assert not (tmp_path / "o").exists()  # nothing ran


def test_hmpe_data_flags_of_before_still_work_with_one_warning(tmp_path, capsys):
    source_yaml = make_nwpu(tmp_path / "src")
    assert main(["data", "convert", str(source_yaml), "--to", "yolo", str(tmp_path / "old"), "--splits", "train",
                 "--copy-images"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "deprecated" in err[0], err
    assert f"use out={tmp_path / 'old'} to=yolo splits=[train] copy_images=true" in err[0]
    assert load_data_config(tmp_path / "old" / "data.yaml")["format"] == "yolo"
    assert not (tmp_path / "old" / "labels" / "val").exists()
    copied = list((tmp_path / "old" / "images").rglob("*.jpg"))
    assert copied and not any(p.is_symlink() for p in copied)  # --copy-images
    assert main(["data", "stats", str(source_yaml), "--skip-bad"]) == 0
    assert "use skip_bad=true" in capsys.readouterr().err
