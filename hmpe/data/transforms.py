"""RT-DETR's augmentation recipe on ``torchvision.transforms.v2`` with ``tv_tensors``.

Contract (``DetectionDataset`` calls it)::

    image, target = transform(image, target)

* in: ``image`` a ``tv_tensors.Image`` ``[3,H,W]`` uint8; ``target`` a dict with ``boxes`` a
  ``tv_tensors.BoundingBoxes`` (XYXY, absolute pixels, ``canvas_size=(H, W)``), ``labels`` int64
  ``[N]`` and any other keys.
* out: ``image`` a ``tv_tensors.Image`` ``[3,h,w]`` float32 in [0, 1] (no mean/std normalisation,
  the family's convention); ``target['boxes']`` still XYXY absolute, now in the output canvas;
  per-box keys (:data:`PER_BOX_KEYS`: ``labels``, ``ignore``, ``iscrowd``, ``area``) filtered in step
  with the boxes; every other key untouched.

Training recipe (RT-DETR, ``build_transforms(train=True)``)::

    RandomPhotometricDistort(p=0.5) -> RandomZoomOut(fill, side_range=(1, 4), p=0.5)
    -> RandomIoUCrop (applied with p=0.8, skipped on images without boxes) -> sanitize
    -> RandomHorizontalFlip(p=0.5) -> Resize(imgsz, imgsz) or letterbox -> sanitize -> ToDtype(float32)

Evaluation: ``Resize`` (or letterbox) -> sanitize -> ``ToDtype``.

Dropped boxes are counted, never silent: every sanitize step clamps boxes to the canvas and removes
those narrower or shorter than ``min_size`` pixels (default 1; boxes the IoU crop pushed out of the
frame end up with zero width and go this way too). The number removed is added to the integer
``target['num_dropped']`` (:data:`NUM_DROPPED_KEY`; created at 0, accumulated over the steps and over
the four inputs of a :class:`Mosaic`). The count travels inside each target rather than in a global
counter because ``DataLoader`` workers are separate processes: the trainer sums the key over the
batches of an epoch.

Multi-scale training picks one size per *batch* (all images of a batch share a size): the trainer draws
it (seeded per epoch, so resume is exact) and :func:`resize_batch` does the resize in the main process. The
dataset's targets are normalised cxcywh by then, which a uniform resize of the whole canvas leaves
unchanged, so only the images and ``target['size']`` change.

Rectangular (aerial) images: the RT-DETR default squashes them to ``imgsz x imgsz`` (x and y scale
differently and the boxes follow). ``keep_ratio: true`` letterboxes instead: scale by
``imgsz / max(H, W)`` and pad at the bottom/right with ``pad_fill``. Because the padding is only
bottom/right, a box predicted in the padded square maps back to the original image by treating the
original as an ``L x L`` square with ``L = max(H, W)`` (see :func:`letterbox_orig_size`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "NUM_DROPPED_KEY",
    "PER_BOX_KEYS",
    "DEFAULT_CFG",
    "DetectionTransform",
    "SanitizeAndCount",
    "RandomIoUCropIfBoxes",
    "Letterbox",
    "Mosaic",
    "build_pipeline",
    "build_transforms",
    "default_multi_scale_sizes",
    "letterbox_orig_size",
    "multi_scale_sizes",
    "resize_batch",
    "sanitize_boxes",
]

#: Target key holding the number of boxes the transforms removed from this sample.
NUM_DROPPED_KEY = "num_dropped"

#: Target keys holding one entry per box; they are filtered together with ``boxes``. Named
#: explicitly because a shape test (``len == N``) would also catch e.g. ``orig_size`` when N == 2.
PER_BOX_KEYS: tuple[str, ...] = ("labels", "ignore", "iscrowd", "area")

#: Switches understood by :func:`build_transforms` (train values; eval ignores the random ones).
DEFAULT_CFG: dict[str, Any] = {
    "photometric": True,  # RandomPhotometricDistort
    "photometric_p": 0.5,
    "zoom_out": True,  # RandomZoomOut (SSD-style canvas enlargement)
    "zoom_out_p": 0.5,
    "zoom_out_fill": 0,  # 0 (RT-DETR), "mean" (ImageNet mean RGB), an int or an RGB tuple
    "zoom_out_max": 4.0,  # side_range = (1, zoom_out_max); small objects shrink by up to this
    "iou_crop": True,  # RandomIoUCrop
    "iou_crop_p": 0.8,
    "hflip": True,
    "hflip_p": 0.5,
    "keep_ratio": False,  # letterbox instead of squashing rectangular images to a square
    "pad_fill": 0,  # letterbox padding value (uint8 scale)
    "min_size": 1.0,  # boxes narrower/shorter than this (pixels) are dropped and counted
    "multi_scale": None,  # list of sizes, or True for default_multi_scale_sizes(imgsz); batch level
    "multi_scale_stop_epoch": None,  # last epochs train at imgsz only (RT-DETR's stop_epoch)
    "mosaic": False,  # dataset-level, see Mosaic
    "mosaic_p": 0.5,
}

_IMAGENET_MEAN_U8 = (124, 116, 104)


# --------------------------------------------------------------------------------------------
# sanitising and counting
# --------------------------------------------------------------------------------------------


def _box_count(target: dict) -> int:
    return int(target["boxes"].shape[0])


def _filter_per_box(target: dict, keep: torch.Tensor) -> None:
    """Index every per-box entry of ``target`` (in place) with the boolean mask ``keep``."""
    n = keep.shape[0]
    for key in PER_BOX_KEYS:
        value = target.get(key)
        if value is None:
            continue
        if len(value) != n:
            raise ValueError(f"target[{key!r}] has {len(value)} entries but there are {n} boxes")
        target[key] = value[keep] if isinstance(value, torch.Tensor) else [v for v, k in zip(value, keep) if k]


def sanitize_boxes(image: Any, target: dict, min_size: float = 1.0) -> tuple[Any, dict]:
    """Clamp boxes to the canvas, drop those under ``min_size`` px, add the count to the target.

    A box left with ``x2 - x1 < min_size`` or ``y2 - y1 < min_size`` after clamping (which includes
    boxes entirely outside the canvas and NaN boxes) cannot be learned from and would poison the
    GIoU loss; it is removed with every per-box entry and counted in ``target['num_dropped']``.
    """
    boxes = target["boxes"]
    if boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
        boxes = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
    h, w = boxes.canvas_size
    data = boxes.as_subclass(torch.Tensor).clone()
    data[:, 0::2] = data[:, 0::2].clamp(0, w)
    data[:, 1::2] = data[:, 1::2].clamp(0, h)
    keep = ((data[:, 2] - data[:, 0]) >= min_size) & ((data[:, 3] - data[:, 1]) >= min_size)
    target = dict(target)
    target["boxes"] = tv_tensors.wrap(data[keep], like=boxes)
    _filter_per_box(target, keep)
    target[NUM_DROPPED_KEY] = int(target.get(NUM_DROPPED_KEY, 0)) + int((~keep).sum())
    return image, target


class SanitizeAndCount:
    """Transform-step wrapper of :func:`sanitize_boxes` (torchvision's ``SanitizeBoundingBoxes``
    drops boxes silently; this one records how many)."""

    def __init__(self, min_size: float = 1.0):
        self.min_size = float(min_size)

    def __call__(self, image: Any, target: dict) -> tuple[Any, dict]:
        return sanitize_boxes(image, target, self.min_size)

    def __repr__(self) -> str:
        return f"SanitizeAndCount(min_size={self.min_size})"


# --------------------------------------------------------------------------------------------
# geometric steps that torchvision does not provide in the form we need
# --------------------------------------------------------------------------------------------


class RandomIoUCropIfBoxes:
    """``v2.RandomIoUCrop`` applied with probability ``p``, skipped on images without boxes.

    torchvision's IoU crop has no ``p`` (RT-DETR wraps it for p = 0.8) and on a negative image it
    can only end by drawing its "no crop" option after many wasted trials, so negatives skip it.
    The crop zeroes boxes whose centre falls outside the crop; the next sanitize step drops and
    counts them.
    """

    def __init__(self, p: float = 0.8, **kwargs: Any):
        self.p = float(p)
        self.crop = v2.RandomIoUCrop(**kwargs)

    def __call__(self, image: Any, target: dict) -> tuple[Any, dict]:
        if _box_count(target) == 0 or torch.rand(()) >= self.p:
            return image, target
        return self.crop(image, target)

    def __repr__(self) -> str:
        return f"RandomIoUCropIfBoxes(p={self.p})"


class Letterbox:
    """Keep-ratio resize so that the longer side is ``size``, then pad bottom/right to a square.

    Bottom/right padding keeps box coordinates unshifted, so mapping predictions back only needs
    the scale (see :func:`letterbox_orig_size`).
    """

    def __init__(self, size: int, fill: int = 0):
        self.size = int(size)
        self.fill = fill

    def __call__(self, image: Any, target: dict) -> tuple[Any, dict]:
        h, w = image.shape[-2:]
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        pad = [0, 0, self.size - nw, self.size - nh]  # left, top, right, bottom
        image = TF.pad(TF.resize(image, [nh, nw], antialias=True), pad, fill=self.fill)
        target = dict(target)
        target["boxes"] = TF.pad(TF.resize(target["boxes"], [nh, nw]), pad)
        return image, target

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size}, fill={self.fill})"


def letterbox_orig_size(width: int, height: int) -> tuple[int, int]:
    """The ``orig_size`` (w, h) to give the post-processor for a letterboxed image.

    With bottom/right padding the network's square canvas is the original image padded to an
    ``L x L`` square (``L = max(w, h)``) and scaled, so normalised predictions times ``(L, L)`` are
    original-image pixels.
    """
    side = max(int(width), int(height))
    return side, side


# --------------------------------------------------------------------------------------------
# the composed per-sample transform
# --------------------------------------------------------------------------------------------


class DetectionTransform:
    """A sequence of ``(image, target) -> (image, target)`` steps with input checks.

    torchvision v2 transforms already accept ``(image, target)``; the reason for a custom
    composition is the checks at the entry (format, canvas, per-box lengths) and that
    ``num_dropped`` is always present in the output, even when nothing was dropped.
    """

    def __init__(self, steps: Sequence[Callable[..., tuple[Any, dict]]]):
        self.steps = list(steps)

    def __call__(self, image: tv_tensors.Image, target: dict) -> tuple[tv_tensors.Image, dict]:
        image, target = self._check(image, target)
        for step in self.steps:
            image, target = step(image, target)
        return image, target

    @staticmethod
    def _check(image: Any, target: dict) -> tuple[tv_tensors.Image, dict]:
        if not isinstance(image, tv_tensors.Image):
            image = tv_tensors.Image(image)
        boxes = target.get("boxes")
        if not isinstance(boxes, tv_tensors.BoundingBoxes):
            raise TypeError("target['boxes'] must be a tv_tensors.BoundingBoxes (XYXY, absolute pixels)")
        if tuple(boxes.canvas_size) != tuple(image.shape[-2:]):
            raise ValueError(f"boxes canvas_size {tuple(boxes.canvas_size)} != image size {tuple(image.shape[-2:])}")
        target = dict(target)
        if boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            boxes = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        if not boxes.is_floating_point():
            boxes = tv_tensors.wrap(boxes.as_subclass(torch.Tensor).float(), like=boxes)
        target["boxes"] = boxes
        target.setdefault(NUM_DROPPED_KEY, 0)
        return image, target

    def __repr__(self) -> str:
        inner = "\n".join(f"    {s!r}," for s in self.steps)
        return f"DetectionTransform([\n{inner}\n])"


def _zoom_fill(value: Any) -> Any:
    if isinstance(value, str):
        if value != "mean":
            raise ValueError(f"zoom_out_fill must be a number, an RGB tuple or 'mean', got {value!r}")
        value = _IMAGENET_MEAN_U8
    if isinstance(value, (list, tuple)):
        value = tuple(int(v) for v in value)
    # boxes are padded by offset only; the fill matters for the image alone
    return {tv_tensors.Image: value, "others": 0}


def _merged_cfg(cfg: dict | None) -> dict[str, Any]:
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULT_CFG))
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {unknown}; known: {sorted(DEFAULT_CFG)}")
    return {**DEFAULT_CFG, **cfg}


def build_transforms(train: bool, imgsz: int = 640, cfg: dict | None = None) -> DetectionTransform:
    """Build the per-sample transform (RT-DETR recipe for ``train``, resize only for eval).

    ``cfg`` switches (defaults in :data:`DEFAULT_CFG`): ``photometric``, ``zoom_out``,
    ``zoom_out_fill``, ``zoom_out_max``, ``iou_crop``, ``hflip`` (each with a ``*_p``
    probability), ``keep_ratio`` (letterbox), ``pad_fill``, ``min_size``. ``multi_scale`` and
    ``mosaic`` are accepted here but act at batch / dataset level (the trainer's
    :func:`resize_batch`, :class:`Mosaic`). Unknown keys raise, so a typo cannot silently switch nothing.
    """
    c = _merged_cfg(cfg)
    min_size = float(c["min_size"])
    steps: list[Callable[..., tuple[Any, dict]]] = []
    if train:
        if c["zoom_out"]:
            side = (1.0, float(c["zoom_out_max"]))
            steps.append(v2.RandomZoomOut(fill=_zoom_fill(c["zoom_out_fill"]), side_range=side, p=float(c["zoom_out_p"])))
        if c["iou_crop"]:
            steps.append(RandomIoUCropIfBoxes(p=float(c["iou_crop_p"])))
        steps.append(SanitizeAndCount(min_size))
        if c["hflip"]:
            steps.append(v2.RandomHorizontalFlip(p=float(c["hflip_p"])))
    if c["keep_ratio"]:
        steps.append(Letterbox(imgsz, fill=c["pad_fill"]))
    else:
        steps.append(v2.Resize((imgsz, imgsz), antialias=True))
    if train and c["photometric"]:
        # colour jitter at network resolution, not at the source's: the same distribution of colours, a
        # fraction of the pixels (it was most of the data-loading time on NWPU's full-size images)
        steps.append(v2.RandomPhotometricDistort(p=float(c["photometric_p"])))
    steps.append(SanitizeAndCount(min_size))
    steps.append(v2.ToDtype(torch.float32, scale=True))  # images only; boxes keep their dtype
    return DetectionTransform(steps)


# --------------------------------------------------------------------------------------------
# batch-level multi-scale
# --------------------------------------------------------------------------------------------


def default_multi_scale_sizes(imgsz: int, stride: int = 32, spread: float = 0.25) -> list[int]:
    """RT-DETR-style size list: multiples of ``stride`` within ``imgsz * (1 +- spread)``.

    For 640 this gives 480, 512, ..., 800, the list RT-DETR trains with.
    """
    lo = max(stride, int(math.ceil(imgsz * (1 - spread) / stride)) * stride)
    hi = int(math.floor(imgsz * (1 + spread) / stride)) * stride
    return list(range(lo, hi + 1, stride)) or [imgsz]


def multi_scale_sizes(cfg: dict | None, imgsz: int) -> list[int] | None:
    """The batch sizes list that ``cfg['multi_scale']`` asks for (None when off)."""
    value = _merged_cfg(cfg)["multi_scale"]
    if not value:
        return None
    if value is True:
        return default_multi_scale_sizes(imgsz)
    sizes = [int(s) for s in value]
    if any(s <= 0 for s in sizes):
        raise ValueError(f"multi_scale sizes must be positive, got {sizes}")
    return sizes


def resize_batch(images: torch.Tensor, targets: list[dict] | None, size: int) -> tuple[torch.Tensor, list[dict] | None]:
    """Resize a whole batch ``[B,3,H,W]`` to ``size x size``.

    Normalised boxes are invariant to a resize of the whole canvas, so targets only get their
    ``size`` entry ((h, w) of the network input) updated. Antialiasing is used when shrinking so
    that small objects are averaged rather than aliased away.
    """
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images, targets
    shrink = size < h or size < w
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    if targets is not None:
        targets = [dict(t) for t in targets]
        for t in targets:
            if "size" in t:
                t["size"] = torch.tensor([size, size], dtype=torch.int64)
    return out, targets


# --------------------------------------------------------------------------------------------
# mosaic (dataset level)
# --------------------------------------------------------------------------------------------


class Mosaic:
    """Four ``(image, target)`` pairs -> one ``size x size`` mosaic (YOLO/DEIM-style dense augmentation).

    Each input (uint8 ``tv_tensors.Image`` and a target as in the module contract, before the
    per-sample transform) is resized keeping its aspect ratio so its longer side is ``size``
    (objects keep the scale they would have after the normal resize, which matters for small
    objects), and placed in one quadrant around a random centre ``(xc, yc)`` drawn in
    ``centre_range * size``; the parts that fall outside the canvas are cut. Boxes are shifted,
    clipped and sanitised, and the dropped ones are counted in ``num_dropped`` (the inputs' own
    counts are carried over). Per-box keys are concatenated; other keys come from the first input,
    with ``mosaic=True`` added.

    Usage in a dataset: with probability ``p`` (see :meth:`should_apply`) load the item and three
    random others, call the mosaic, then the normal per-sample transform.
    """

    def __init__(self, size: int = 640, p: float = 0.5, fill: int = 0, centre_range: tuple[float, float] = (0.25, 0.75), min_size: float = 1.0):
        self.size = int(size)
        self.p = float(p)
        self.fill = int(fill)
        self.centre_range = centre_range
        self.min_size = float(min_size)

    def should_apply(self) -> bool:
        return bool(torch.rand(()) < self.p)

    def _centre(self) -> tuple[int, int]:
        lo, hi = self.centre_range
        xc = int(self.size * (lo + (hi - lo) * float(torch.rand(()))))
        yc = int(self.size * (lo + (hi - lo) * float(torch.rand(()))))
        return xc, yc

    def __call__(self, items: Sequence[tuple[tv_tensors.Image, dict]]) -> tuple[tv_tensors.Image, dict]:
        if len(items) != 4:
            raise ValueError(f"Mosaic takes 4 samples, got {len(items)}")
        s = self.size
        first_image = items[0][0]
        canvas = torch.full((first_image.shape[0], s, s), self.fill, dtype=first_image.dtype)
        xc, yc = self._centre()
        all_boxes, per_box, dropped = [], {k: [] for k in PER_BOX_KEYS}, 0
        for q, (image, target) in enumerate(items):
            image, target = DetectionTransform._check(image, target)
            dropped += int(target.get(NUM_DROPPED_KEY, 0))
            h, w = image.shape[-2:]
            scale = s / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            image = TF.resize(image, [nh, nw], antialias=True)
            boxes = TF.resize(target["boxes"], [nh, nw]).as_subclass(torch.Tensor)
            # corner of the placed image in canvas coordinates; quadrants: TL, TR, BL, BR
            x0 = xc - nw if q in (0, 2) else xc
            y0 = yc - nh if q in (0, 1) else yc
            cx1, cy1, cx2, cy2 = max(x0, 0), max(y0, 0), min(x0 + nw, s), min(y0 + nh, s)
            if cx2 > cx1 and cy2 > cy1:
                canvas[:, cy1:cy2, cx1:cx2] = image[:, cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]
            shifted = boxes + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
            # clip to the placed (visible) part of this image, not just the canvas, so a box
            # cannot extend into a neighbour's quadrant
            shifted[:, 0::2] = shifted[:, 0::2].clamp(cx1, max(cx1, cx2))
            shifted[:, 1::2] = shifted[:, 1::2].clamp(cy1, max(cy1, cy2))
            all_boxes.append(shifted)
            for k in PER_BOX_KEYS:
                if k in target:
                    per_box[k].append(target[k])
        out = {k: v for k, v in items[0][1].items() if k not in PER_BOX_KEYS and k != "boxes"}
        out["boxes"] = tv_tensors.BoundingBoxes(torch.cat(all_boxes), format="XYXY", canvas_size=(s, s))
        for k, parts in per_box.items():
            if len(parts) == 4:
                out[k] = torch.cat([torch.as_tensor(p) for p in parts])
            elif parts:
                raise ValueError(f"Mosaic: per-box key {k!r} present in only {len(parts)} of 4 targets")
        out[NUM_DROPPED_KEY] = dropped
        out["mosaic"] = True
        return sanitize_boxes(tv_tensors.Image(canvas), out, self.min_size)


def build_pipeline(augment: bool | dict, imgsz: int) -> tuple[DetectionTransform, DetectionTransform, Mosaic | None]:
    """(train transform, eval transform, mosaic or None) from a training config's ``augment`` value.

    ``augment``: ``false`` (train on the eval pipeline), ``true`` (the RT-DETR recipe) or a dict of
    :func:`build_transforms` switches plus ``mosaic`` / ``mosaic_p``; its ``keep_ratio`` also sets the
    eval transform. ``multi_scale`` acts per batch and is left to the caller (:func:`multi_scale_sizes`).
    """
    opts = dict(augment) if isinstance(augment, dict) else {}
    keep_ratio = {"keep_ratio": opts["keep_ratio"]} if "keep_ratio" in opts else None
    train = build_transforms(bool(augment), imgsz,
                             {k: v for k, v in opts.items() if k != "multi_scale"} if augment else keep_ratio)
    mosaic = Mosaic(imgsz, p=opts.get("mosaic_p", 0.5)) if augment and opts.get("mosaic") else None
    return train, build_transforms(False, imgsz, keep_ratio), mosaic
