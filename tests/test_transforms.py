"""RT-DETR augmentation: boxes stay valid and follow the pixels; drops are counted."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from hmpe.data.transforms import (
    NUM_DROPPED_KEY,
    Letterbox,
    Mosaic,
    build_transforms,
    default_multi_scale_sizes,
    letterbox_orig_size,
    multi_scale_sizes,
    resize_batch,
)

ONLY_FLIP = {"photometric": False, "zoom_out": False, "iou_crop": False, "hflip": True, "hflip_p": 1.0}
NO_AUG = {"photometric": False, "zoom_out": False, "iou_crop": False, "hflip": False}


def _target(boxes, h, w, labels=None, ignore=None):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    return {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
        "labels": torch.as_tensor(labels if labels is not None else list(range(n)), dtype=torch.int64),
        "ignore": torch.as_tensor(ignore if ignore is not None else [False] * n, dtype=torch.bool),
        "image_id": 7,
        "orig_size": torch.tensor([w, h]),
    }


def _painted(h, w, boxes):
    """Black image with each box filled in channel 0, so box positions can be checked in pixels."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    for x1, y1, x2, y2 in boxes:
        img[0, int(y1) : int(y2), int(x1) : int(x2)] = 255
    return tv_tensors.Image(img)


def _random_boxes(gen, h, w, n):
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w - 12.0, h - 12.0])
    wh = 2 + torch.rand(n, 2, generator=gen) * 30
    return torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], 1)


def _check_output(image, target, size):
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32
    assert tuple(image.shape) == (3, size, size)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (size, size)
    b = boxes.as_subclass(torch.Tensor)
    assert (b >= 0).all() and (b[:, 0::2] <= size).all() and (b[:, 1::2] <= size).all()
    assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()
    assert len(target["labels"]) == len(b) == len(target["ignore"])
    assert target["labels"].dtype == torch.int64


@pytest.mark.parametrize("keep_ratio", [False, True])
def test_random_draws_keep_boxes_valid_and_on_their_pixels(keep_ratio):
    """Rectangular images through the full training recipe, many draws.

    Every box is either kept (valid, inside the canvas) or counted as dropped; and every kept box
    still covers painted pixels (its centre is non-black), which fails if boxes and pixels are
    transformed differently (flip, crop offset, x/y scale swapped on rectangular input).
    """
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = {"photometric": False, "keep_ratio": keep_ratio}  # colour jitter would tint the background
    tf = build_transforms(train=True, imgsz=96, cfg=cfg)
    total_dropped = 0
    for i in range(120):
        h, w = (72, 160) if i % 2 else (150, 90)
        n = int(torch.randint(0, 6, (), generator=gen))
        raw = _random_boxes(gen, h, w, n)
        # paint non-overlapping boxes only, so a centre pixel belongs to its own box
        keep = []
        for j in range(n):
            if all(not (raw[j, 0] < raw[k, 2] and raw[k, 0] < raw[j, 2] and raw[j, 1] < raw[k, 3] and raw[k, 1] < raw[j, 3]) for k in keep):
                keep.append(j)
        raw = raw[keep].floor()
        image, target = tf(_painted(h, w, raw.tolist()), _target(raw, h, w))
        _check_output(image, target, 96)
        assert len(target["boxes"]) + target[NUM_DROPPED_KEY] == len(raw)
        total_dropped += target[NUM_DROPPED_KEY]
        b = target["boxes"].as_subclass(torch.Tensor)
        for x1, y1, x2, y2 in b.tolist():
            if x2 - x1 >= 2 and y2 - y1 >= 2:
                cy, cx = int((y1 + y2) / 2), int((x1 + x2) / 2)
                assert image[:, cy, cx].max() > 0, (i, (x1, y1, x2, y2))
    assert total_dropped > 0  # IoU crop and zoom-out do remove some boxes in 120 draws


def test_photometric_draws_and_negative_images():
    torch.manual_seed(1)
    tf = build_transforms(train=True, imgsz=64)
    gen = torch.Generator().manual_seed(1)
    for i in range(25):
        img = tv_tensors.Image(torch.randint(0, 256, (3, 50, 110), dtype=torch.uint8))
        n = 0 if i % 3 == 0 else 4  # negatives included
        raw = _random_boxes(gen, 50, 110, n)
        image, target = tf(img, _target(raw, 50, 110))
        _check_output(image, target, 64)
        assert len(target["boxes"]) + target[NUM_DROPPED_KEY] == n
        assert target["image_id"] == 7 and target["orig_size"].tolist() == [110, 50]


def test_degenerate_boxes_dropped_and_counted():
    h, w = 60, 300
    boxes = [
        [10, 10, 40, 30],  # fine
        [50, 10, 50.5, 30],  # 0.5 px wide: degenerate already
        [310, 10, 330, 30],  # entirely outside (right of the image)
        [290, 40, 320, 59],  # partly outside: clamped to x2 = 300, kept
        [100, 20, 102, 40],  # 2 px wide, but 2 * 100/300 < 1 px after the resize to 100
        [120, 20, 100, 40],  # x2 < x1
    ]
    tf = build_transforms(train=False, imgsz=100)
    image, target = tf(tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8)), _target(boxes, h, w, ignore=[0, 0, 0, 1, 0, 0]))
    assert target[NUM_DROPPED_KEY] == 4
    assert target["labels"].tolist() == [0, 3]
    assert target["ignore"].tolist() == [False, True]
    sx, sy = 100 / w, 100 / h
    expected = torch.tensor([[10 * sx, 10 * sy, 40 * sx, 30 * sy], [290 * sx, 40 * sy, 300 * sx, 59 * sy]])
    assert torch.allclose(target["boxes"].as_subclass(torch.Tensor), expected, atol=1e-4)


def test_hflip_maps_boxes():
    h, w = 60, 100
    box = [10, 6, 30, 12]
    img = _painted(h, w, [box])
    image, target = build_transforms(train=True, imgsz=100, cfg=ONLY_FLIP)(img, _target([box], h, w))
    # flip: x -> 100 - x; then resize 60x100 -> 100x100 scales y by 100/60
    expected = torch.tensor([[70.0, 10.0, 90.0, 20.0]])
    assert torch.allclose(target["boxes"].as_subclass(torch.Tensor), expected, atol=1e-4)
    assert image[0, 15, 80] > 0.9 and image[0, 15, 20] == 0  # pixels moved with the box


def test_resize_scales_rectangular_boxes():
    h, w = 50, 200
    tf = build_transforms(train=False, imgsz=100)
    image, target = tf(tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8)), _target([[20, 10, 60, 30]], h, w))
    assert tuple(image.shape) == (3, 100, 100)
    assert torch.allclose(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[10.0, 20.0, 30.0, 60.0]]))
    assert target[NUM_DROPPED_KEY] == 0


def test_letterbox_keeps_ratio_and_pads_bottom_right():
    h, w = 50, 200
    img = tv_tensors.Image(torch.full((3, h, w), 200, dtype=torch.uint8))
    image, target = build_transforms(train=False, imgsz=100, cfg={"keep_ratio": True})(img, _target([[20, 10, 60, 30]], h, w))
    assert tuple(image.shape) == (3, 100, 100)
    assert torch.allclose(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[10.0, 5.0, 30.0, 15.0]]))
    assert image[:, :25].min() > 0.7 and image[:, 25:].max() == 0  # content on top, padding below
    assert letterbox_orig_size(w, h) == (200, 200)
    # normalised box * (L, L) recovers the original pixels
    assert torch.allclose(target["boxes"].as_subclass(torch.Tensor) / 100 * 200, torch.tensor([[20.0, 10.0, 60.0, 30.0]]))
    assert "Letterbox" in repr(build_transforms(False, 100, {"keep_ratio": True})) and Letterbox(8).size == 8


def test_output_contract_and_input_checks():
    tf = build_transforms(train=False, imgsz=32, cfg=NO_AUG)
    img = tv_tensors.Image(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8))
    image, target = tf(img, _target([[1, 1, 20, 20]], 40, 40))
    assert torch.allclose(image, torch.nn.functional.interpolate(img[None].float(), size=(32, 32), mode="bilinear", antialias=True)[0] / 255, atol=1 / 255 + 1e-6)
    with pytest.raises(ValueError, match="canvas_size"):
        tf(img, _target([[1, 1, 20, 20]], 30, 40))
    with pytest.raises(TypeError):
        tf(img, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_transforms(train=True, cfg={"hlfip": True})
    # CXCYWH input is accepted and converted
    cxcywh = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 10, 4, 6]]), format="CXCYWH", canvas_size=(40, 40))
    _, t = build_transforms(False, 40, NO_AUG)(img, {"boxes": cxcywh, "labels": torch.tensor([0])})
    assert t["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert torch.allclose(t["boxes"].as_subclass(torch.Tensor), torch.tensor([[8.0, 7, 12, 13]]))


def test_zoom_out_fill_mean_option():
    torch.manual_seed(0)
    cfg = {"photometric": False, "iou_crop": False, "hflip": False, "zoom_out_p": 1.0, "zoom_out_fill": "mean"}
    image, _ = build_transforms(True, 64, cfg)(tv_tensors.Image(torch.zeros(3, 20, 30, dtype=torch.uint8)), _target([[2, 2, 10, 10]], 20, 30))
    assert image.max() > 0.3  # the canvas around the image is mean-grey, not black


def test_resize_batch_and_multi_scale_sizes():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.1]])
    for s in (32, 48, 64):
        targets = [{"boxes": boxes.clone(), "size": torch.tensor([40, 40])} for _ in range(2)]
        images, targets = resize_batch(torch.rand(2, 3, 40, 40), targets, s)
        assert images.shape == (2, 3, s, s)
        assert targets[0]["size"].tolist() == [s, s] and torch.equal(targets[0]["boxes"], boxes)
    assert default_multi_scale_sizes(640) == list(range(480, 801, 32))
    assert multi_scale_sizes({"multi_scale": True}, 640) == default_multi_scale_sizes(640)
    assert multi_scale_sizes({"multi_scale": [320, 352]}, 640) == [320, 352]
    assert multi_scale_sizes(None, 640) is None
    same, _ = resize_batch(torch.zeros(1, 3, 8, 8), None, 8)
    assert same.shape[-1] == 8


def test_mosaic():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    items, n_in = [], 0
    for h, w in [(40, 80), (64, 64), (80, 30), (50, 50)]:
        raw = _random_boxes(gen, h, w, 3).floor()
        n_in += len(raw)
        items.append((_painted(h, w, raw.tolist()), _target(raw, h, w)))
    mosaic = Mosaic(size=64, p=1.0)
    for _ in range(10):
        image, target = mosaic(items)
        assert tuple(image.shape) == (3, 64, 64) and image.dtype == torch.uint8
        assert len(target["boxes"]) + target[NUM_DROPPED_KEY] == n_in
        assert len(target["labels"]) == len(target["boxes"]) == len(target["ignore"])
        assert target["mosaic"] is True
        # then the normal pipeline runs on the mosaic
        out, t2 = build_transforms(True, 48)(image, target)
        _check_output(out, t2, 48)
        assert len(t2["boxes"]) + t2[NUM_DROPPED_KEY] == n_in
    with pytest.raises(ValueError):
        mosaic(items[:3])


def test_build_pipeline_reads_the_augment_value():
    """The trainer (which also trains the peers' D-FINE-N) and decoder_depth --from-run read `augment` alike."""
    from hmpe.data.transforms import Mosaic, build_pipeline

    _, _, mosaic = build_pipeline({"mosaic": True, "mosaic_p": 0.3}, 64)
    assert isinstance(mosaic, Mosaic) and mosaic.p == 0.3
    assert build_pipeline(True, 64)[2] is None and build_pipeline(False, 64)[2] is None
    assert build_pipeline({"mosaic": True}, 64)[2] is not None
    with pytest.raises(ValueError):
        build_pipeline({"no_such_switch": 1}, 64)  # unknown keys still raise


def test_photometric_distortion_runs_at_network_resolution():
    """Colour jitter after the resize: on a large aerial image it would otherwise dominate data loading."""
    seen = []
    t = build_transforms(True, 64, {"photometric_p": 1.0, "zoom_out": False, "iou_crop": False})
    for i, step in enumerate(t.steps):
        if isinstance(step, v2.RandomPhotometricDistort):
            t.steps[i] = lambda img, tgt, _s=step: (seen.append(tuple(img.shape[-2:])), _s(img, tgt))[1]
    img = tv_tensors.Image(torch.randint(0, 255, (3, 600, 900), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 10.0, 80.0, 60.0]]), format="XYXY", canvas_size=(600, 900))
    t(img, {"boxes": boxes, "labels": torch.tensor([0])})
    assert seen == [(64, 64)]
