"""A deterministic synthetic small-object dataset, generated on the fly (no files).

Why it exists: the first run (``data=synthetic``) and the fast tests need detection data that is
always there, is small-object-heavy like aerial imagery, and is exactly reproducible. Each image is a
textured background (colour gradient, smooth low-frequency blobs, a few clutter strokes and large
low-contrast patches that are *not* objects, sensor noise) with 0..``max_objects`` small shapes of five
classes: filled circle (ellipse), square (rectangle), triangle, cross and ring, 8..48 px, random
colours pushed to a minimum contrast against the local background. A ``negative_fraction`` of the
images (default 0.1) are negatives.

Determinism: image ``i`` of a dataset depends only on ``(seed, stream, i)``: its layout (boxes, labels,
colours) is drawn from ``numpy.random.default_rng([seed, stream, i, 0])`` and its pixels from
``default_rng([seed, stream, i, 1])``, and rendering uses only element-wise numpy (no BLAS, no
threads), so the same sample renders to the same bytes in every call and every process. ``stream``
separates splits (train 0, val 1, test 2): the validation images are independent of the training ones
for the same seed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hmpe.data.types import DataError, Sample

SYNTHETIC_NAMES = ("circle", "square", "triangle", "cross", "ring")
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
MIN_CONTRAST = 60.0  # minimum RGB distance between an object's colour and its local background


class SyntheticDataset:
    """Generated detection data: ``samples`` (``Sample`` with ``path=None``) and ``render(i)``.

    Args:
        num_images: number of images.
        imgsz: image size, an int (square) or ``(height, width)``.
        seed: base seed; ``stream`` selects an independent sequence (one per split).
        min_size, max_size: object size range in pixels (log-uniform, so small objects dominate).
        max_objects: objects per positive image are uniform in 1..max_objects.
        negative_fraction: probability that an image has no object at all.
        classes: draw only the first ``classes`` shapes (1..5; ``names`` follows), e.g. a dataset with
            other classes than a checkpoint's to fine-tune on. 5 draws the same images as before it existed.
    """

    def __init__(
        self,
        num_images: int = 512,
        imgsz: int | tuple[int, int] = 256,
        seed: int = 0,
        stream: int = 0,
        *,
        min_size: float = 8.0,
        max_size: float = 48.0,
        max_objects: int = 12,
        negative_fraction: float = 0.1,
        classes: int = len(SYNTHETIC_NAMES),
    ):
        self.height, self.width = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
        if num_images < 0 or seed < 0 or stream < 0:
            raise ValueError("num_images, seed and stream must be non-negative")
        if min(self.height, self.width) < min_size + 4:
            raise ValueError(f"image size {self.height}x{self.width} too small for objects of {min_size} px")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.stream = int(stream)
        self.min_size = float(min_size)
        self.max_size = float(min(max_size, min(self.height, self.width) - 4))
        self.max_objects = int(max_objects)
        self.negative_fraction = float(negative_fraction)
        if not 1 <= int(classes) <= len(SYNTHETIC_NAMES):
            raise ValueError(f"classes must be 1..{len(SYNTHETIC_NAMES)}, got {classes}")
        self.names = SYNTHETIC_NAMES[: int(classes)]
        self.samples = [self._sample(i) for i in range(self.num_images)]

    @classmethod
    def from_config(cls, cfg: dict, split: str) -> SyntheticDataset:
        """Build a split from a ``format: synthetic`` dataset config (keys ``num_<split>``, ``imgsz``,
        ``seed`` and optionally ``min_size``, ``max_size``, ``max_objects``, ``negative_fraction``, ``classes``)."""
        source = cfg.get("_source", "<synthetic config>")
        if split not in SPLIT_STREAMS:
            raise DataError(source, f"synthetic splits are {list(SPLIT_STREAMS)}, got '{split}'")
        if cfg.get(f"num_{split}") is None:
            raise DataError(source, f"no 'num_{split}': the number of synthetic {split} images")
        names, classes = cfg.get("names"), int(cfg.get("classes", len(SYNTHETIC_NAMES)))
        if names is not None and list(names) != list(SYNTHETIC_NAMES[:classes]):
            raise DataError(source, f"synthetic classes are the first `classes` of {list(SYNTHETIC_NAMES)}: "
                                    f"with classes={classes} names must be {list(SYNTHETIC_NAMES[:classes])}, "
                                    f"got {names}")
        # a key the config lacks: the constructor's default, which is the key's (hmpe.utils.keys.SYNTHETIC)
        options = {k: cfg[k] for k in ("min_size", "max_size", "max_objects", "negative_fraction", "classes")
                   if k in cfg}
        if "imgsz" in cfg:
            options["imgsz"] = cfg["imgsz"] if isinstance(cfg["imgsz"], int) else tuple(cfg["imgsz"])
        if "seed" in cfg:
            options["seed"] = int(cfg["seed"])
        # overfit: every split draws the train images (to check a model can memorise a few images)
        stream = SPLIT_STREAMS["train"] if cfg.get("overfit") else SPLIT_STREAMS[split]
        return cls(int(cfg[f"num_{split}"]), stream=stream, **options)

    def __len__(self) -> int:
        return self.num_images

    def render(self, index: int) -> np.ndarray:
        """Pixels of image ``index`` as ``uint8 [H, W, 3]`` (RGB)."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"synthetic image {index} out of range 0..{self.num_images - 1}")
        rng = np.random.default_rng([self.seed, self.stream, index, 1])
        canvas = _background(rng, self.height, self.width)
        for shape in self._layout(index):
            _draw_shape(canvas, shape)
        # sensor noise, shared by the channels (like luminance noise; and a third of the cost)
        noise = rng.standard_normal((self.height, self.width, 1), dtype=np.float32)
        noise *= np.float32(rng.uniform(2.0, 10.0))
        canvas += noise
        canvas += np.float32(0.5)
        return np.clip(canvas, 0, 255, out=canvas).astype(np.uint8)

    def render_sample(self, sample: Sample) -> np.ndarray:
        """Image loader for :class:`hmpe.data.dataset.DetectionDataset` (``image_id`` is the index)."""
        return self.render(sample.image_id)

    # -- layout ----------------------------------------------------------------------------------
    def _sample(self, index: int) -> Sample:
        shapes = self._layout(index)
        boxes = np.array([s["box"] for s in shapes], np.float32).reshape(-1, 4)
        labels = np.array([s["label"] for s in shapes], np.int64)
        return Sample(index, None, self.width, self.height, boxes, labels)

    def _layout(self, index: int) -> list[dict[str, Any]]:
        """Objects of image ``index``: label, xyxy box, colour and a class parameter. Objects do not
        overlap (2 px apart), so every box is the visible extent of its shape."""
        rng = np.random.default_rng([self.seed, self.stream, index, 0])
        if rng.random() < self.negative_fraction:
            return []
        count = int(rng.integers(1, self.max_objects + 1))
        shapes: list[dict[str, Any]] = []
        for _ in range(count):
            label = int(rng.integers(len(self.names)))
            size = math.exp(rng.uniform(math.log(self.min_size), math.log(self.max_size)))
            aspect = math.exp(rng.uniform(-0.3, 0.3))
            w = float(np.clip(size * math.sqrt(aspect), self.min_size, self.max_size))
            h = float(np.clip(size / math.sqrt(aspect), self.min_size, self.max_size))
            colour = rng.uniform(0.0, 255.0, 3)
            param = float(rng.uniform(0.25, 0.4) if label == 3 else rng.uniform(0.45, 0.65))
            box = self._place(rng, w, h, [s["box"] for s in shapes])
            if box is not None:
                shapes.append({"label": label, "box": box, "colour": colour, "param": param})
        return shapes

    def _place(self, rng: np.random.Generator, w: float, h: float, taken: list) -> tuple | None:
        for _ in range(20):
            x1 = float(rng.uniform(1.0, self.width - 1.0 - w))
            y1 = float(rng.uniform(1.0, self.height - 1.0 - h))
            box = (x1, y1, x1 + w, y1 + h)
            if all(_apart(box, other, margin=2.0) for other in taken):
                return box
        return None


def _apart(a: tuple, b: tuple, margin: float) -> bool:
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]


# -- rendering -------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float32 ``[H, W, 3]`` texture: base colour + linear gradient + smooth blobs, then clutter.

    The gradient and the blobs are summed on a coarse grid and upsampled once, so that only one pass
    runs at full size.
    """
    base = rng.uniform(50.0, 200.0, 3).astype(np.float32)
    cells = int(rng.integers(4, 9))
    nodes = np.linspace(-0.5, 0.5, cells + 1, dtype=np.float32)
    angle = rng.uniform(0.0, 2 * math.pi)
    ramp = nodes[:, None] * np.float32(math.sin(angle)) + nodes[None, :] * np.float32(math.cos(angle))
    gradient_amplitude = rng.uniform(-60.0, 60.0, 3).astype(np.float32)
    blobs = rng.standard_normal((cells + 1, cells + 1, 3)).astype(np.float32) * np.float32(rng.uniform(8.0, 30.0))
    coarse = base + ramp[:, :, None] * gradient_amplitude + blobs
    canvas = _upsample_smooth(coarse, height, width)
    _draw_clutter(rng, canvas, base)
    return canvas


def _upsample_smooth(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Separable smoothstep interpolation of a coarse ``[gh, gw, C]`` grid to ``[H, W, C]`` float32.

    Works channel-first (numpy vectorises contiguous planes better than a trailing axis of 3) and
    transposes once at the end.
    """

    def weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        pos = (np.arange(n_out, dtype=np.float32) + 0.5) / n_out * (n_in - 1)
        low = np.minimum(pos.astype(np.int64), n_in - 2)
        frac = pos - low.astype(np.float32)
        return low, frac * frac * (3 - 2 * frac)

    y0, fy = weights(height, grid.shape[0])
    x0, fx = weights(width, grid.shape[1])
    planes = np.ascontiguousarray(grid.transpose(2, 0, 1), dtype=np.float32)  # [C, gh, gw]
    columns = planes[:, :, x0] + (planes[:, :, x0 + 1] - planes[:, :, x0]) * fx  # [C, gh, W], small
    full = columns[:, y0]
    full += (columns[:, y0 + 1] - full) * fy[:, None]
    return np.ascontiguousarray(full.transpose(1, 2, 0))


def _draw_clutter(rng: np.random.Generator, canvas: np.ndarray, base: np.ndarray) -> None:
    """Distractors that are not objects: thin strokes (roads, edges) and large faint patches."""
    height, width = canvas.shape[:2]
    for _ in range(int(rng.integers(0, 7))):
        start = rng.uniform([0, 0], [width, height])
        length = rng.uniform(20.0, 150.0)
        angle = rng.uniform(0.0, 2 * math.pi)
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        colour = np.clip(base + rng.uniform(-50.0, 50.0, 3), 0, 255)
        _stroke(canvas, start, end, float(rng.uniform(0.5, 1.5)), colour)
    for _ in range(int(rng.integers(0, 4))):
        w, h = rng.uniform(60.0, 140.0, 2)
        x1, y1 = rng.uniform([-w / 2, -h / 2], [width - w / 2, height - h / 2])
        colour = np.clip(base + rng.uniform(-25.0, 25.0, 3), 0, 255)
        region, xs, ys = _patch(canvas, (x1, y1, x1 + w, y1 + h))
        if region is not None:
            distance = np.maximum(np.abs(xs - (x1 + w / 2)) - w / 2, np.abs(ys - (y1 + h / 2)) - h / 2)
            _blend(region, distance, colour, softness=4.0)


def _stroke(canvas: np.ndarray, start: np.ndarray, end: np.ndarray, half_width: float, colour: np.ndarray) -> None:
    pad = half_width + 1
    bounds = (min(start[0], end[0]) - pad, min(start[1], end[1]) - pad,
              max(start[0], end[0]) + pad, max(start[1], end[1]) + pad)  # fmt: skip
    region, xs, ys = _patch(canvas, bounds)
    if region is None:
        return
    direction = end - start
    t = ((xs - start[0]) * direction[0] + (ys - start[1]) * direction[1]) / max(float(direction @ direction), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    distance = np.hypot(xs - (start[0] + t * direction[0]), ys - (start[1] + t * direction[1])) - half_width
    _blend(region, distance, colour)


def _patch(canvas: np.ndarray, bounds: tuple) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """View of the canvas covering ``bounds`` (x1, y1, x2, y2) + pixel-centre coordinate grids."""
    height, width = canvas.shape[:2]
    left, top = max(int(math.floor(bounds[0])) - 1, 0), max(int(math.floor(bounds[1])) - 1, 0)
    right, bottom = min(int(math.ceil(bounds[2])) + 1, width), min(int(math.ceil(bounds[3])) + 1, height)
    if right <= left or bottom <= top:
        return None, np.empty(0), np.empty(0)
    xs = (np.arange(left, right, dtype=np.float32) + 0.5)[None, :]
    ys = (np.arange(top, bottom, dtype=np.float32) + 0.5)[:, None]
    return canvas[top:bottom, left:right], xs, ys


def _blend(region: np.ndarray, distance: np.ndarray, colour: np.ndarray, softness: float = 1.0) -> None:
    """Paint ``colour`` where the signed distance (pixels, negative inside) says, anti-aliased."""
    alpha = np.clip(0.5 - distance / softness, 0.0, 1.0).astype(np.float32)[:, :, None]
    region += alpha * (colour.astype(np.float32) - region)


def _draw_shape(canvas: np.ndarray, shape: dict[str, Any]) -> None:
    x1, y1, x2, y2 = shape["box"]
    region, xs, ys = _patch(canvas, shape["box"])
    if region is None:
        return
    distance = _SHAPE_DISTANCE[shape["label"]](xs, ys, x1, y1, x2, y2, shape["param"])
    colour = _contrasting(shape["colour"], region.reshape(-1, 3).mean(axis=0))
    _blend(region, distance, colour)


def _contrasting(colour: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Push ``colour`` away from the local background until they differ by MIN_CONTRAST."""
    offset = colour - background
    norm = float(np.linalg.norm(offset))
    if norm >= MIN_CONTRAST:
        return colour
    direction = offset / norm if norm > 1e-3 else np.full(3, -1.0 if background.mean() > 128 else 1.0) / math.sqrt(3)
    pushed = background + direction * MIN_CONTRAST
    if np.linalg.norm(np.clip(pushed, 0, 255) - background) < MIN_CONTRAST * 0.7:
        pushed = background - direction * MIN_CONTRAST  # the wall of the colour cube: go the other way
    return np.clip(pushed, 0, 255)


# Signed distance functions (pixels, negative inside) of each class, filling the box exactly.
def _ellipse_radius(xs, ys, x1, y1, x2, y2):
    rx, ry = (x2 - x1) / 2, (y2 - y1) / 2
    r = np.sqrt(((xs - (x1 + rx)) / rx) ** 2 + ((ys - (y1 + ry)) / ry) ** 2)
    return r, min(rx, ry)


def _circle(xs, ys, x1, y1, x2, y2, param):
    r, scale = _ellipse_radius(xs, ys, x1, y1, x2, y2)
    return (r - 1) * scale


def _square(xs, ys, x1, y1, x2, y2, param):
    rx, ry = (x2 - x1) / 2, (y2 - y1) / 2
    return np.maximum(np.abs(xs - (x1 + rx)) - rx, np.abs(ys - (y1 + ry)) - ry)


def _triangle(xs, ys, x1, y1, x2, y2, param):
    """Apex at the top centre, base along the bottom edge."""
    w, h = x2 - x1, y2 - y1
    side = math.hypot(h, w / 2)
    left = ((xs - x1) * -h + (ys - y2) * (-w / 2)) / side
    right = ((xs - x2) * h + (ys - y2) * (-w / 2)) / side
    return np.maximum(np.maximum(left, right), ys - y2)


def _cross(xs, ys, x1, y1, x2, y2, param):
    """A plus sign: a full-width and a full-height bar, ``param`` thick (fraction of the box)."""
    rx, ry = (x2 - x1) / 2, (y2 - y1) / 2
    dx, dy = np.abs(xs - (x1 + rx)), np.abs(ys - (y1 + ry))
    horizontal = np.maximum(dx - rx, dy - ry * param)
    vertical = np.maximum(dx - rx * param, dy - ry)
    return np.minimum(horizontal, vertical)


def _ring(xs, ys, x1, y1, x2, y2, param):
    """An elliptic annulus; ``param`` is the inner radius as a fraction of the outer."""
    r, scale = _ellipse_radius(xs, ys, x1, y1, x2, y2)
    return np.maximum((r - 1) * scale, (param - r) * scale)


_SHAPE_DISTANCE = (_circle, _square, _triangle, _cross, _ring)
