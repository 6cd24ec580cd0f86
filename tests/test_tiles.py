"""Tiled training (``hmpe train tile=N``, :mod:`hmpe.data.tiles`): the sampling, the crops' boxes, exact resume,
sliced validation of a tile-trained run and the checkpoint's tile as the default of ``hmpe val`` / ``predict``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from helpers import tiny_data, tiny_model_cfg, tiny_train_cfg

from hmpe.data.dataset import DetectionDataset
from hmpe.data.tiles import TiledDataset, tile_grid, visible_fraction
from hmpe.data.transforms import build_transforms
from hmpe.data.types import Sample


def _dataset(samples: list[Sample], pixels: dict[int, np.ndarray] | None = None) -> DetectionDataset:
    def loader(s: Sample) -> np.ndarray:
        if pixels is not None:
            return pixels[s.image_id]
        # every pixel encodes its own coordinates, so a crop can be checked against its window
        yy, xx = np.mgrid[0:s.height, 0:s.width]
        return np.stack([xx % 256, yy % 256, (xx // 256) * 16 + yy // 256], -1).astype(np.uint8)

    return DetectionDataset(samples, ["a", "b"], image_loader=loader)


def _sample(i: int, w: int, h: int, boxes, labels=None) -> Sample:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Sample(i, None, w, h, boxes, np.zeros(len(boxes), np.int64) if labels is None else labels)


def test_visible_fraction():
    boxes = np.array([[0, 0, 10, 10], [95, 0, 105, 10], [200, 200, 210, 210], [5, 5, 5, 9]], np.float32)
    np.testing.assert_allclose(visible_fraction(boxes, (0, 0, 100, 100)), [1.0, 0.5, 0.0, 0.0])


def test_grid_items_and_empty_ratio():
    # 1000 x 600 at tile 512, overlap 0.2: 3 x 2 grid tiles; one object in the top-left corner only
    base = _dataset([_sample(0, 1000, 600, [[10, 10, 40, 40]]), _sample(1, 300, 200, [])])
    assert len(tile_grid(1000, 600, 512, 0.2)) == 6
    tiled = TiledDataset(base, 512, 0.2, min_visible=0.5, empty=0.5)
    assert len(tiled.held) == 1 and len(tiled.empty_tiles) == 6  # 5 of image 0, the one of image 1
    assert len(tiled) == 1 + 3
    sizes = set()
    for epoch in range(4):
        tiled.set_epoch(epoch)
        assert len(tiled.items) == len(tiled) == 4  # the same count every epoch (the schedule is in iterations)
        sizes |= {tuple(sorted((it.index, it.window) for it in tiled.items[1:]))}
        for it in tiled.items:
            s = tiled.samples[it.index]
            x0, y0, x1, y1 = it.window
            assert 0 <= x0 and 0 <= y0 and x1 <= s.width and y1 <= s.height
            assert x1 - x0 == min(512, s.width) and y1 - y0 == min(512, s.height)
    assert len(sizes) > 1  # a fresh draw of the empty tiles and shifts per epoch


def test_crop_pixels_boxes_and_padding():
    boxes = [[100, 100, 140, 140], [500, 100, 560, 160], [505, 300, 600, 330]]
    base = _dataset([_sample(0, 600, 400, boxes, np.array([0, 1, 1]))])
    tiled = TiledDataset(base, 512, 0.0, min_visible=0.5, empty=0.0)
    tiled.items = [type(tiled.items[0])(0, (0, 0, 512, 400))]  # a fixed window to check against
    image, target = tiled.load(0)
    assert image.shape == (3, 512, 512)
    np.testing.assert_array_equal(image[0, :400, 300].numpy(), np.full(400, 300 % 256))  # x coordinate
    np.testing.assert_array_equal(image[1, 123, :512].numpy(), np.full(512, 123))  # y coordinate
    assert int(image[:, 400:, :].abs().sum()) == 0  # padded below the image, not upscaled
    # box 1 is 12/60 visible (dropped at min_visible 0.5), box 2 7/95: dropped; box 0 whole
    assert target["boxes"].tolist() == [[100.0, 100.0, 140.0, 140.0]] and target["labels"].tolist() == [0]
    tiled.min_visible = 0.1
    _, target = tiled.load(0)
    assert target["boxes"].tolist()[1] == [500.0, 100.0, 512.0, 160.0] and target["labels"].tolist() == [0, 1]


def test_item_through_transforms_is_a_training_item():
    base = _dataset([_sample(0, 700, 500, [[300, 200, 340, 260]])])
    tiled = TiledDataset(base, 256, 0.2, empty=1.0, transforms=build_transforms(True, 128))
    for i in range(len(tiled)):
        image, target = tiled[i]
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32
        assert target["boxes"].shape[1] == 4 and ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
        assert target["orig_size"].tolist() == [700, 500]


def test_seeded_sampling_is_reproducible():
    base = _dataset([_sample(0, 1500, 900, [[10, 10, 40, 40], [800, 600, 860, 640]])])
    a, b = TiledDataset(base, 512, 0.2, empty=0.4, seed=3), TiledDataset(base, 512, 0.2, empty=0.4, seed=3)
    a.set_epoch(5)
    b.set_epoch(2)
    b.set_epoch(5)
    assert a.items == b.items
    c = TiledDataset(base, 512, 0.2, empty=0.4, seed=4)
    c.set_epoch(5)
    assert c.items != a.items


@pytest.fixture(scope="module")
def tiled_run(tmp_path_factory):
    from hmpe.engine.train.trainer import Trainer

    tmp = tmp_path_factory.mktemp("tiles")
    cfg = tiny_train_cfg(tmp, data=tiny_data(num_train=4, num_val=2, imgsz=192), epochs=2, imgsz=96, tile=96,
                         tile_overlap=0.25, tile_empty=1.0, val_interval=1)
    trainer = Trainer(cfg, tiny_model_cfg())
    return trainer, trainer.fit()


def test_tiled_run_validates_sliced(tiled_run):
    trainer, metrics = tiled_run
    assert isinstance(trainer.train_set, TiledDataset) and len(trainer.train_set) > len(trainer.train_set.samples)
    assert "mAP50" in metrics
    # sliced: each 192-px image is seen as 96-px tiles fed at 96 px, so "small at the input" is native size
    assert trainer.evaluator.input_scale == pytest.approx(1.0)
    ckpt = torch.load(trainer.weights_dir / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["train_cfg"]["tile"] == 96 and ckpt["train_cfg"]["tile_overlap"] == 0.25


def test_val_and_predict_of_a_tiled_checkpoint_slice_by_default(tiled_run, monkeypatch, tmp_path):
    import hmpe.api as api

    trainer, metrics = tiled_run
    calls = []
    real = api.sliced_predict

    def spy(fn, image, size, *a, **k):
        calls.append(size)
        return real(fn, image, size, *a, **k)

    monkeypatch.setattr(api, "sliced_predict", spy)
    det = api.Detector(str(trainer.weights_dir / "last.pt"))
    val = det.val(data=trainer.cfg["data"], workers=0)
    assert val["mAP50"] == pytest.approx(metrics["mAP50"], abs=1e-6)
    assert det.val(data=trainer.cfg["data"], workers=0, slice=0)["mAP50"] >= 0  # slice=0: the whole image
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((192, 192, 3), np.uint8)).save(image)
    det.predict(image, conf=0.0, save=False)
    assert calls == [96]
    det.predict(image, conf=0.0, slice=0, save=False)
    assert calls == [96]


def test_tiles_with_mosaic_and_multi_scale():
    from hmpe.data.dataset import collate_fn
    from hmpe.data.transforms import Mosaic, resize_batch

    base = _dataset([_sample(0, 700, 500, [[300, 200, 340, 260], [100, 50, 130, 90]]),
                     _sample(1, 400, 300, [[20, 20, 60, 60]])])
    mosaic = Mosaic(128, p=1.0)
    tiled = TiledDataset(base, 256, 0.2, empty=1.0, transforms=build_transforms(True, 128), mosaic=mosaic)
    images, targets = collate_fn([tiled[i] for i in range(len(tiled))])
    assert images.shape == (len(tiled), 3, 128, 128) and all(t.get("mosaic") for t in targets)
    resized, targets = resize_batch(images, targets, 96)
    assert resized.shape[-2:] == (96, 96) and sum(len(t["boxes"]) for t in targets) > 0
