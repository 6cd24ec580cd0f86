"""Dataset YAMLs without ``format``: the layout decides, the reason is reported, and an ultralytics
``data.yaml`` as users have it trains and validates unchanged."""

from __future__ import annotations

import pytest

from helpers import tiny_data, tiny_model_cfg, tiny_train_cfg
from hmpe.data.formats import DataError, format_note, load_data_config, load_dataset
from hmpe.data.tools import data_convert
from test_data_tools import make_nwpu


def _without_format(yaml_path):
    text = "\n".join(line for line in yaml_path.read_text().splitlines() if not line.startswith("format:"))
    yaml_path.write_text(text + "\n")
    return yaml_path


def test_nwpu_layout_is_detected(tmp_path):
    cfg = load_data_config(_without_format(make_nwpu(tmp_path)))
    assert cfg["format"] == "nwpu"
    assert format_note(cfg) == "format nwpu, detected from the folders 'positive image set' and 'ground truth'"
    assert len(load_dataset(cfg, "train")[0]) == 2


@pytest.mark.parametrize("to,expected", [("yolo", "yolo"), ("coco", "coco")])
def test_converted_layouts_are_detected(tmp_path, to, expected):
    written = data_convert(tiny_data(num_train=2, num_val=2, imgsz=64), to, tmp_path / "out")
    cfg = load_data_config(_without_format(written))
    assert cfg["format"] == expected and "detected from" in format_note(cfg)
    assert len(load_dataset(cfg, "val")[0]) == 2


def test_voc_layout_is_detected(tmp_path):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / "VOC2007" / sub).mkdir(parents=True)
    (tmp_path / "data.yaml").write_text("path: .\ntrain: VOC2007/trainval\nval: VOC2007/test\n")
    assert load_data_config(tmp_path / "data.yaml")["format"] == "voc"


def test_unknown_layout_names_the_folder_and_the_fix(tmp_path):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "data.yaml").write_text("path: .\ntrain: pictures\nval: pictures\nnames: [a]\n")
    with pytest.raises(DataError, match=r"data.yaml: no `format` given and none recognised: .*pictures.*add format"):
        load_data_config(tmp_path / "data.yaml")


def test_ultralytics_yaml_trains_and_validates_unchanged(tmp_path):
    from hmpe.api import Detector
    from hmpe.engine.train.trainer import Trainer

    data_convert(tiny_data(num_train=4, num_val=2, imgsz=64), "yolo", tmp_path / "ds")
    names = tiny_data()["names"]
    yaml_path = tmp_path / "ds" / "coco-like.yaml"
    yaml_path.write_text(  # the shape of an ultralytics dataset file: names as a dict, nc, no format
        "path: .\ntrain: images/train\nval: images/val\ntest:\nnc: 5\nnames:\n"
        + "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    )
    cfg = tiny_train_cfg(tmp_path, data=str(yaml_path), epochs=1, imgsz=64, batch=2, val_interval=1)
    metrics = Trainer(cfg, tiny_model_cfg()).fit()
    assert "mAP50" in metrics
    det = Detector(weights=str(tmp_path / "runs" / "train" / "t" / "weights" / "best.pt"), device="cpu")
    val = det.val(data=str(yaml_path), project=str(tmp_path / "runs"))
    assert set(val) >= {"mAP50", "mAP50_95"}


def test_checkpoint_finds_its_dataset_from_any_folder(tmp_path, monkeypatch):
    import shutil

    from hmpe.api import Detector
    from hmpe.engine.train.trainer import Trainer

    work = tmp_path / "work"
    data_convert(tiny_data(num_train=2, num_val=2, imgsz=64), "yolo", work / "ds")
    monkeypatch.chdir(work)  # the dataset path is typed relative to here
    cfg = tiny_train_cfg(tmp_path, data="ds/data.yaml", epochs=1, imgsz=64, batch=2, val_interval=1)
    Trainer(cfg, tiny_model_cfg()).fit()
    weights = tmp_path / "runs" / "train" / "t" / "weights" / "best.pt"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert "mAP50" in Detector(weights=str(weights), device="cpu").val(project=str(tmp_path / "runs"))
    shutil.move(work / "ds", tmp_path / "moved")
    with pytest.raises(DataError, match=r"best.pt: the dataset it was trained on .* is no longer at .*pass data="):
        Detector(weights=str(weights), device="cpu").val(project=str(tmp_path / "runs"))
    moved = Detector(weights=str(weights), device="cpu").val(data=str(tmp_path / "moved" / "data.yaml"),
                                                            project=str(tmp_path / "runs"))
    assert "mAP50" in moved
