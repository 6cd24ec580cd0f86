"""Native-resolution tiles: the tile grid that sliced inference lays over an image (:func:`tile_grid`) and the
training dataset that samples crops of it (:class:`TiledDataset`, ``hmpe train tile=512``).

Why tiles: an aerial image of about 1000 px resized to a 512 input shrinks every object twice over (on NWPU
VHR-10 val, 216 of 622 objects are under 32 x 32 at a 512 input, 26 at native resolution). Training on
``tile x tile`` crops at native resolution shows the model objects at the size sliced inference
(:mod:`hmpe.engine.eval.slicing`) will show them.

The sampling, per epoch (:meth:`TiledDataset.set_epoch`, from a generator seeded by ``seed`` and the epoch, so
a resumed run draws the same tiles):

1. Every image is covered by the grid of :func:`tile_grid` (``tile``, ``overlap``): the same windows sliced
   inference uses. A grid tile *holds objects* when one of the image's boxes is visible in it by at least
   ``min_visible`` of its area.
2. The epoch's items: every tile that holds objects, plus ``round(empty * number of empty tiles)`` empty
   tiles, a fresh random subset each epoch. The count is the same every epoch (the lr schedule and a
   time budget are sized in iterations).
3. Each item's window is its grid window shifted by a random offset of up to half the grid stride on each
   axis (kept inside the image), so consecutive epochs cut the objects differently.
4. Boxes are clipped to the window; a box is kept when at least ``min_visible`` of its area is inside
   (a sliver of an object labelled as a whole one teaches the wrong box). A window larger than its image
   is zero-padded at the right and bottom, as sliced inference pads, never upscaled.

The crop then goes through the training transforms (flip, colour, resize to ``imgsz``; mosaic combines four
crops) like a whole image would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors

from hmpe.data.dataset import DetectionDataset
from hmpe.data.types import Sample

#: (x0, y0, x1, y1) in full-image pixels, x1/y1 exclusive
Tile = tuple[int, int, int, int]


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``size`` along an axis of ``length``: stride ``size * (1 - overlap)``,
    the last window ends on the border. ``length <= size`` -> ``[0]``."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap={overlap}: expected a fraction in [0, 1)")
    if length <= size:
        return [0]
    step = max(1, int(round(size * (1 - overlap))))
    starts = list(range(0, length - size, step))
    starts.append(length - size)
    return starts


def tile_grid(width: int, height: int, size: int, overlap: float = 0.2) -> list[Tile]:
    """Row-major tiles ``(x0, y0, x1, y1)`` covering a ``width x height`` image: ``size`` windows with a stride
    of ``size * (1 - overlap)``, the last of each row and column moved back to end on the border."""
    if size < 1:
        raise ValueError(f"slice={size}: expected a positive tile size in pixels")
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in tile_starts(height, size, overlap) for x in tile_starts(width, size, overlap)]


def visible_fraction(boxes: np.ndarray, window: Tile) -> np.ndarray:
    """``[N]`` the fraction of each box's area (``boxes [N,4]`` xyxy) inside ``window``; 0 for empty boxes."""
    x0, y0, x1, y1 = window
    iw = (np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0)).clip(min=0)
    ih = (np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0)).clip(min=0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.where(area > 0, iw * ih / np.maximum(area, 1e-9), 0.0)


@dataclass(frozen=True)
class TileItem:
    """One training item of an epoch: ``index`` of the image in the base dataset, its crop ``window``."""

    index: int
    window: Tile


class TiledDataset(DetectionDataset):
    """A training dataset of native-resolution crops of ``base``'s images (a
    :class:`~hmpe.data.dataset.DetectionDataset`; its own transforms and mosaic are not used): see the module doc
    for the sampling. Items are what a ``DetectionDataset`` returns, for the crop; ``transforms`` and ``mosaic``
    act on crops.

    ``tile``: the crop side in source pixels; ``overlap``: the grid's overlap (a fraction); ``min_visible``: the
    fraction of a box's area inside a crop for it to be kept; ``empty``: the fraction of empty grid tiles
    drawn per epoch; ``seed``: with the epoch, seeds the draws (:meth:`set_epoch`)."""

    def __init__(self, base: DetectionDataset, tile: int, overlap: float = 0.2, min_visible: float = 0.5,
                 empty: float = 0.1, seed: int = 0, transforms=None, mosaic=None):
        super().__init__(base.samples, base.names, transforms, base.image_loader, mosaic)
        self.tile, self.overlap = int(tile), float(overlap)
        self.min_visible, self.empty, self.seed = float(min_visible), float(empty), int(seed)
        self.held: list[TileItem] = []  # grid tiles that hold objects: every epoch
        self.empty_tiles: list[TileItem] = []  # grid tiles that hold none: a subset per epoch
        for i, s in enumerate(self.samples):
            boxes = s.boxes[~s.ignore]
            for w in tile_grid(s.width, s.height, self.tile, self.overlap):
                holds = len(boxes) > 0 and bool((visible_fraction(boxes, w) >= self.min_visible).any())
                (self.held if holds else self.empty_tiles).append(TileItem(i, w))
        self.n_empty = int(round(self.empty * len(self.empty_tiles)))
        self.items: list[TileItem] = []
        self.set_epoch(0)

    def describe(self) -> str:
        return (f"{len(self)} tiles of {self.tile} px per epoch ({len(self.held)} with objects, {self.n_empty} of "
                f"{len(self.empty_tiles)} empty)")

    def __len__(self) -> int:
        return len(self.held) + self.n_empty

    def sample_at(self, index: int) -> Sample:
        return self.samples[self.items[index].index]

    def set_epoch(self, epoch: int) -> None:
        """Draw the epoch's items: the empty subset and every window's shift (module doc, steps 2-3)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        picked = torch.randperm(len(self.empty_tiles), generator=gen)[:self.n_empty].tolist()
        chosen = self.held + [self.empty_tiles[j] for j in sorted(picked)]
        shifts = (torch.rand(len(chosen), 2, generator=gen) - 0.5).tolist()  # in [-0.5, 0.5) strides
        stride = max(1, round(self.tile * (1 - self.overlap)))
        self.items = [TileItem(it.index, self._shifted(it, dx * stride, dy * stride))
                      for it, (dx, dy) in zip(chosen, shifts)]

    def _shifted(self, item: TileItem, dx: float, dy: float) -> Tile:
        s = self.samples[item.index]
        x0, y0, _, _ = item.window
        x0 = min(max(0, x0 + round(dx)), max(0, s.width - self.tile))
        y0 = min(max(0, y0 + round(dy)), max(0, s.height - self.tile))
        return x0, y0, min(x0 + self.tile, s.width), min(y0 + self.tile, s.height)

    def load(self, index: int) -> tuple[tv_tensors.Image, dict]:
        """The crop of item ``index`` in transform form (``tile x tile``, zeros where the image ends)."""
        item = self.items[index]
        image, target = super().load(item.index)
        x0, y0, x1, y1 = item.window
        canvas = torch.zeros((image.shape[0], self.tile, self.tile), dtype=image.dtype)
        canvas[:, :y1 - y0, :x1 - x0] = image[:, y0:y1, x0:x1]
        boxes = target["boxes"].as_subclass(torch.Tensor).numpy()
        keep = visible_fraction(boxes, item.window) >= self.min_visible
        kept = boxes[keep].copy()
        kept[:, 0::2] = kept[:, 0::2].clip(x0, x1) - x0
        kept[:, 1::2] = kept[:, 1::2].clip(y0, y1) - y0
        out = tv_tensors.BoundingBoxes(torch.from_numpy(kept), format=tv_tensors.BoundingBoxFormat.XYXY,
                                       canvas_size=(self.tile, self.tile))
        return tv_tensors.Image(canvas), {"boxes": out, "labels": target["labels"][torch.from_numpy(keep)]}
