"""``DetectionDataset``: a torch Dataset over ``Sample``s, producing the training item of
docs/architecture.md: ``(image float32 [3,H,W] in [0,1], target dict)``.

Transform hook: a transform is any callable ``(image, target) -> (image, target)`` where ``image`` is a
``tv_tensors.Image`` (uint8 ``[3,H,W]`` as decoded, or float if an earlier step converted it) and
``target`` is ``{"boxes": tv_tensors.BoundingBoxes (XYXY, absolute, canvas = image size),
"labels": int64 tensor}``, i.e. exactly what torchvision.transforms.v2 pipelines take and return.
Boxes are only turned into normalised cxcywh after the transforms, against the size of the image
the transforms returned, so no transform ever has to know the model's box convention.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from hmpe.data.formats import load_data_config, load_dataset
from hmpe.data.images import ImageLoader, load_sample_image
from hmpe.data.synthetic import SyntheticDataset
from hmpe.data.types import DataError, Sample, SampleList
from hmpe.utils.boxes import box_xyxy_to_cxcywh

Transform = Callable[[tv_tensors.Image, dict], tuple[Any, dict]]


class DetectionDataset(Dataset):
    """Samples + optional transforms -> ``(image [3,H,W] float32 in [0,1], target)``.

    ``target``: ``boxes`` float32 ``[N,4]`` normalised cxcywh of the returned image, ``labels``
    int64 ``[N]``, ``image_id`` int, ``orig_size`` int64 ``[2]`` = (w, h) of the original image,
    ``size`` int64 ``[2]`` = (h, w) of the returned image, plus any other key the transforms put in
    their target (such as a count of boxes they dropped). Ignore boxes (VOC difficult, COCO crowd)
    are left out of the training target; evaluation reads them from ``samples``.
    ``transforms=None`` converts to float with no resize. ``image_loader(sample)`` returns
    ``uint8 [H,W,3]`` (numpy or PIL); the default decodes ``sample.path``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        names: Sequence[str],
        transforms: Transform | None = None,
        image_loader: ImageLoader | None = None,
        mosaic: Callable | None = None,
    ):
        self.samples = samples
        self.mosaic = mosaic  # hmpe.data.transforms.Mosaic: 4 items -> 1, before the per-sample transform
        self.names = list(names)
        self.transforms = transforms
        self.image_loader = image_loader or load_sample_image
        self.skipped = list(getattr(samples, "skipped", []))
        self.skipped_boxes = list(getattr(samples, "skipped_boxes", []))
        self.category_ids = getattr(samples, "category_ids", None)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[tv_tensors.Image, dict]:
        """The untransformed item in transform form: uint8 ``tv_tensors.Image`` and
        ``{"boxes": BoundingBoxes XYXY absolute, "labels"}`` (ignore boxes removed)."""
        sample = self.samples[index]
        pixels = np.asarray(self.image_loader(sample), dtype=np.uint8)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[:2] != (sample.height, sample.width):
            raise DataError(sample.path or f"sample {sample.image_id}",
                            f"decoded image has shape {pixels.shape}, but the index says "
                            f"{sample.width}x{sample.height} RGB")  # fmt: skip
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous())
        keep = ~sample.ignore
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(sample.boxes[keep].copy()),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=(sample.height, sample.width),
        )
        return image, {"boxes": boxes, "labels": torch.from_numpy(sample.labels[keep].copy())}

    def sample_at(self, index: int) -> Sample:
        """The sample item ``index`` comes from (one per item here; a tile of it in :class:`hmpe.data.tiles.TiledDataset`)."""
        return self.samples[index]

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        sample = self.sample_at(index)
        if self.mosaic is not None and len(self) > 1 and self.mosaic.should_apply():
            # torch RNG: seeded per DataLoader worker, so mosaic draws are reproducible like the rest
            others = torch.randint(len(self), (3,)).tolist()
            image, target = self.mosaic([self.load(i) for i in (index, *others)])
        else:
            image, target = self.load(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        pixels = _to_unit_float(image)
        height, width = pixels.shape[-2:]
        contract = {
            "boxes": _normalised_cxcywh(target["boxes"], height, width),
            "labels": torch.as_tensor(target["labels"], dtype=torch.int64).as_subclass(Tensor).reshape(-1),
            "image_id": int(sample.image_id),
            "orig_size": torch.tensor([sample.width, sample.height], dtype=torch.int64),
            "size": torch.tensor([height, width], dtype=torch.int64),
        }
        # keys the transforms added (e.g. their count of dropped boxes) travel on to the trainer
        return pixels, {k: v for k, v in target.items() if k not in contract} | contract


def _to_unit_float(image: Tensor) -> Tensor:
    """uint8 -> float32 / 255; float stays (it is already [0,1] by the transforms' contract)."""
    plain = image.as_subclass(Tensor)
    if plain.dtype == torch.uint8:
        return plain.to(torch.float32).div_(255.0).contiguous()
    if plain.is_floating_point():
        return plain.to(torch.float32).contiguous()
    raise TypeError(f"transforms returned an image of dtype {plain.dtype}; expected uint8 or float")


def _normalised_cxcywh(boxes: Tensor, height: int, width: int) -> Tensor:
    """Absolute boxes (XYXY, or any format a BoundingBoxes carries) -> cxcywh / image size, clipped."""
    if isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
        boxes = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
    xyxy = boxes.as_subclass(Tensor).to(torch.float32).reshape(-1, 4).clone()
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return box_xyxy_to_cxcywh(xyxy) / scale


def collate_fn(batch: Sequence[tuple[Tensor, dict]]) -> tuple[Tensor, list[dict]]:
    """Stack images (all of one size, which the resize transform guarantees) and list the targets."""
    images, targets = zip(*batch)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(f"images in a batch differ in size {sorted(shapes)}: add a resize transform "
                         "(or use batch size 1)")  # fmt: skip
    return torch.stack(images), list(targets)


def build_dataset(
    data: str | os.PathLike | dict,
    split: str,
    transforms: Transform | None = None,
    skip_bad: bool = False,
    mosaic: Callable | None = None,
) -> DetectionDataset:
    """A ready ``DetectionDataset`` for ``split`` of a dataset YAML, a shipped name (``synthetic``,
    ``nwpu-vhr10``) or a config dict. Synthetic data renders on the fly (train and val come from
    independent seed streams); file formats go through :func:`hmpe.data.formats.load_dataset`."""
    cfg = data if isinstance(data, dict) and "_source" in data else load_data_config(data)
    if cfg["format"] == "synthetic":
        generated = SyntheticDataset.from_config(cfg, split)
        samples = SampleList(generated.samples, source=f"{cfg['_source']} [{split}]")
        return DetectionDataset(samples, generated.names, transforms, image_loader=generated.render_sample,
                                mosaic=mosaic)
    samples, names = load_dataset(cfg, split, skip_bad=skip_bad)
    return DetectionDataset(samples, names, transforms, mosaic=mosaic)
