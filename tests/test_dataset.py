"""DetectionDataset / collate_fn / build_dataset: the training item of docs/architecture.md."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from hmpe.data.dataset import DetectionDataset, build_dataset, collate_fn
from hmpe.data.images import load_image
from hmpe.data.formats import DataError, load_data_config, load_dataset
from hmpe.data.types import Sample
from hmpe.utils.boxes import box_cxcywh_to_xyxy

SMALL_SYNTHETIC = load_data_config("synthetic") | {"num_train": 4, "num_val": 3, "imgsz": [96, 128]}


def write_jpeg(path: Path, width: int, height: int) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def _absolute_xyxy(target: dict) -> np.ndarray:
    h, w = target["size"].tolist()
    return (box_cxcywh_to_xyxy(target["boxes"]) * torch.tensor([w, h, w, h])).numpy()


def test_item_follows_the_contract_without_transforms():
    dataset = build_dataset(SMALL_SYNTHETIC, "train")
    for index in range(len(dataset)):
        image, target = dataset[index]
        sample = dataset.samples[index]
        assert image.dtype == torch.float32 and image.shape == (3, 96, 128) and type(image) is torch.Tensor
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert set(target) == {"boxes", "labels", "image_id", "orig_size", "size"}
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["image_id"] == sample.image_id
        assert target["orig_size"].tolist() == [128, 96] and target["size"].tolist() == [96, 128]
        assert torch.all((target["boxes"] >= 0) & (target["boxes"] <= 1))
        np.testing.assert_allclose(_absolute_xyxy(target), sample.boxes, atol=1e-3)
        np.testing.assert_array_equal(target["labels"].numpy(), sample.labels)
    pixels = dataset.image_loader(dataset.samples[0])
    np.testing.assert_allclose(dataset[0][0].permute(1, 2, 0).numpy() * 255, pixels, atol=1e-3)


def test_transform_hook_receives_tv_tensors_and_boxes_follow_a_flip_and_resize():
    seen = {}

    def spy(image, target):
        seen["types"] = (type(image), type(target["boxes"]), target["boxes"].format, target["boxes"].canvas_size)
        seen["dtype"] = image.dtype
        return image, target

    pipeline = v2.Compose([spy, v2.RandomHorizontalFlip(p=1.0), v2.Resize((64, 64)),
                           v2.ToDtype(torch.float32, scale=True)])  # fmt: skip
    plain = build_dataset(SMALL_SYNTHETIC, "train")
    flipped = build_dataset(SMALL_SYNTHETIC, "train", transforms=pipeline)
    image, target = flipped[0]
    assert seen["types"] == (tv_tensors.Image, tv_tensors.BoundingBoxes, tv_tensors.BoundingBoxFormat.XYXY, (96, 128))
    assert seen["dtype"] == torch.uint8
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and type(image) is torch.Tensor
    assert target["size"].tolist() == [64, 64] and target["orig_size"].tolist() == [128, 96]
    expected = plain[0][1]["boxes"].clone()
    expected[:, 0] = 1 - expected[:, 0]  # a flip mirrors cx; normalised boxes ignore the resize
    torch.testing.assert_close(target["boxes"], expected, atol=1e-4, rtol=0)


def test_transforms_may_change_box_format_and_add_keys():
    def to_cxcywh_and_count(image, target):
        boxes = v2.functional.convert_bounding_box_format(target["boxes"], new_format="CXCYWH")
        return image, {**target, "boxes": boxes, "num_dropped": 0}

    plain = build_dataset(SMALL_SYNTHETIC, "train")
    converted = build_dataset(SMALL_SYNTHETIC, "train", transforms=to_cxcywh_and_count)
    torch.testing.assert_close(converted[1][1]["boxes"], plain[1][1]["boxes"])
    assert converted[1][1]["num_dropped"] == 0


def test_ignore_boxes_are_left_out_of_training_targets(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 40, 30)
    sample = Sample(5, str(path), 40, 30, [[0, 0, 10, 10], [5, 5, 20, 25]], [1, 0], [True, False])
    image, target = DetectionDataset([sample], ["a", "b"])[0]
    assert image.shape == (3, 30, 40) and target["image_id"] == 5
    assert target["labels"].tolist() == [0]
    np.testing.assert_allclose(_absolute_xyxy(target), [[5, 5, 20, 25]], atol=1e-4)


def test_negative_sample_gives_empty_target(tmp_path):
    path = write_jpeg(tmp_path / "n.jpg", 20, 10)
    _, target = DetectionDataset([Sample(0, str(path), 20, 10)], ["a"])[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_corrupt_image_at_decode_time_names_the_file(tmp_path):
    path = write_jpeg(tmp_path / "cut.jpg", 64, 64)
    path.write_bytes(path.read_bytes()[:-600])
    cfg = {"path": str(tmp_path), "format": "yolo", "train": ".", "names": ["a"]}
    samples, names = load_dataset(cfg, "train", check_images=False)  # the index pass cannot see it then
    with pytest.raises(DataError, match=f"{path}: cannot decode image"):
        DetectionDataset(samples, names)[0]
    with pytest.raises(DataError, match="cut.jpg: cannot decode"):
        load_image(path)


def test_decoded_size_must_match_the_index(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 40, 30)
    with pytest.raises(DataError, match=r"a\.jpg: decoded image has shape \(30, 40, 3\)"):
        DetectionDataset([Sample(0, str(path), 41, 30)], ["a"])[0]


def test_collate_fn_stacks_and_rejects_mixed_sizes(tmp_path):
    dataset = build_dataset(SMALL_SYNTHETIC, "val")
    images, targets = collate_fn([dataset[0], dataset[1], dataset[2]])
    assert images.shape == (3, 3, 96, 128) and [t["image_id"] for t in targets] == [0, 1, 2]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_fn)
    assert [len(t) for _, t in loader] == [2, 1]
    odd = DetectionDataset([Sample(0, str(write_jpeg(tmp_path / "x.jpg", 20, 10)), 20, 10)], ["a"])
    with pytest.raises(ValueError, match="differ in size"):
        collate_fn([dataset[0], odd[0]])


def test_build_dataset_synthetic_splits_and_pickling():
    train, val = build_dataset(SMALL_SYNTHETIC, "train"), build_dataset(SMALL_SYNTHETIC, "val")
    assert (len(train), len(val), train.num_classes) == (4, 3, 5)
    assert not torch.equal(train[0][0], val[0][0])
    copy = pickle.loads(pickle.dumps(train))  # what spawn-started DataLoader workers need
    torch.testing.assert_close(copy[2][0], train[2][0])
    assert build_dataset("synthetic", "val").names == train.names


def test_build_dataset_from_files_keeps_the_load_report(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "images" / "train").mkdir(parents=True, exist_ok=True)
        write_jpeg(tmp_path / "images" / "train" / f"{name}.jpg", 32, 24)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "labels" / "train" / "b.txt").write_text("7 0.5 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("path: .\nformat: yolo\ntrain: images/train\nnames: [a]\n")
    with pytest.raises(DataError, match=r"b\.txt:1: unknown class 7"):
        build_dataset(str(tmp_path / "data.yaml"), "train")
    dataset = build_dataset(str(tmp_path / "data.yaml"), "train", skip_bad=True)
    assert len(dataset) == 2 and len(dataset.skipped) == 0 and len(dataset.skipped_boxes) == 1
    image, target = dataset[0]
    assert image.shape == (3, 24, 32) and target["labels"].tolist() == [0]
    assert dataset[1][1]["labels"].tolist() == []  # b.jpg kept, its one bad box dropped


def test_mosaic_wired_into_dataset_keeps_boxes_valid():
    from hmpe.data.dataset import build_dataset
    from hmpe.data.transforms import Mosaic, build_transforms

    torch.manual_seed(0)
    data = {"format": "synthetic", "num_train": 6, "num_val": 2, "imgsz": 96, "seed": 1,
            "names": ["circle", "square", "triangle", "cross", "ring"], "_source": "test"}
    ds = build_dataset(data, "train", transforms=build_transforms(True, 128), mosaic=Mosaic(128, p=1.0))
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 128, 128)
        assert target.get("mosaic") is True
        b = target["boxes"]
        assert ((b[:, 2:] > 0) & (b >= 0).all(1, keepdim=True) & (b <= 1).all(1, keepdim=True)).all()
