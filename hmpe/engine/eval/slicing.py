"""Sliced (tiled) inference for images larger than the model input.

    hmpe predict big.tif weights=best.pt slice=640 overlap=0.2 [merge=nms merge_iou=0.5 full_image=false]
    hmpe val weights=best.pt slice=640 overlap=0.2

Pipeline for one image (:func:`sliced_predict`):

1. The image is decoded once into a ``uint8 [H,W,3]`` array. :func:`tile_grid` lays ``slice x slice``
   windows with a stride of ``slice * (1 - overlap)`` along each axis; the last window of a row/column
   is moved back so that it ends on the image border (every tile is full-size unless the image is
   smaller than ``slice``; neighbouring tiles overlap by at least ``overlap * slice`` pixels).
2. Tiles are cut lazily, ``batch`` at a time, as views of the decoded array (:func:`tile_batches`):
   each is zero-padded to ``slice x slice`` when the image is smaller, resized to the model input
   ``imgsz`` (bilinear, antialiased) and the batch goes through the model in one forward pass.
3. Per-tile detections (score >= ``conf``) are scaled by ``slice / imgsz``, shifted by the tile origin
   and clipped to the tile: full-image pixel coordinates.
4. :func:`merge_detections` merges them across tiles:

   a. *Border fragments.* A detection is **cut** when one of its sides lies within ``edge_margin``
      (fraction of ``slice``, default 0.015) of a tile side that is inside the image (a side shared
      with a neighbouring tile, not the image border): the object may continue in the next tile.
      Same-class detections from *different* tiles, at least one of them cut, whose intersection
      covers >= ``merge_ios`` (default 0.6) of the smaller box (intersection over smaller, IoS) are
      grouped. A group that contains an uncut detection keeps only its uncut detections (a tile saw
      the whole object; the fragments go); a group of fragments only becomes one box, their union,
      with the highest score. IoS, not IoU: a half-visible fragment has an IoU of ~0.5 or less with
      the whole box, but an IoS of ~1.
   b. *Duplicates.* ``merge="nms"`` (default): class-wise NMS, ``torchvision.ops.batched_nms`` at
      IoU ``merge_iou`` (default 0.5), which removes objects seen whole by two overlapping tiles.
      ``merge="wbf"``: weighted box fusion instead: same-class boxes with IoU >= ``merge_iou`` to a
      cluster's fused box join it (in descending score order); the fused box is the score-weighted
      mean of its members and its score the highest member score.

How many detections come back: each tile yields at most the model's ``postprocess.num_top_queries``
(the RT-DETR top-K over queries x classes, 300 by default) above ``conf``; the merged image keeps every
detection the merge leaves, unless ``max_det`` caps it (``hmpe predict max_det=K``: the K highest, with a
warning when the cap drops some). A 6000 x 6000 image holds hundreds of tiles, so a per-image cap sized
for one model input would silently drop most objects.

Objects larger than about twice the overlap can be cut by every tile that sees them; their fragments
may then stay apart. Raise ``overlap``, or set ``full_image=True``, which adds one prediction on the
whole image resized to the model input: its detections are never cut, so they absorb the fragments of
large objects in step (a).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou
from tqdm import tqdm

from hmpe.data.preprocess import Preprocess
from hmpe.data.tiles import Tile, tile_grid, tile_starts  # the grid that tiled training samples too

__all__ = [
    "Tile",
    "tile_starts",
    "tile_grid",
    "tile_batches",
    "tile_to_tensor",
    "cut_flags",
    "box_ios",
    "resolve_fragments",
    "weighted_box_fusion",
    "merge_detections",
    "sliced_predict",
    "model_predict_fn",
    "evaluate_sliced",
]

# a batch of model inputs [B,3,imgsz,imgsz] -> (boxes [B,K,4] xyxy input pixels, scores [B,K], labels [B,K])
PredictFn = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


# ----------------------------------------------------------------------------------------------- tiles
def as_preprocess(imgsz: "int | Preprocess") -> Preprocess:
    """An int is a plain square resize (models trained without letterbox)."""
    return imgsz if isinstance(imgsz, Preprocess) else Preprocess(int(imgsz))


def tile_to_tensor(image: np.ndarray, tile: Tile, size: int, imgsz: "int | Preprocess") -> Tensor:
    """Crop ``tile`` (a view of ``image uint8 [H,W,3]``) -> float ``[3,imgsz,imgsz]`` in [0,1]: zero-padded
    at the right/bottom to ``size x size``, then the model's preprocessing (:class:`Preprocess`; a square
    tile is resized the same way with or without letterbox)."""
    x0, y0, x1, y1 = tile
    crop = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)  # copies only this tile
    if crop.shape[1] != size or crop.shape[2] != size:
        crop = F.pad(crop, (0, size - crop.shape[2], 0, size - crop.shape[1]))
    return as_preprocess(imgsz)(crop)


def tile_batches(image: np.ndarray, tiles: Sequence[Tile], size: int, imgsz: "int | Preprocess",
                 batch: int) -> Iterator[tuple[list[Tile], Tensor]]:
    """Yield ``(tiles, inputs [b,3,imgsz,imgsz])`` ``batch`` tiles at a time; only one batch exists at once."""
    for i in range(0, len(tiles), max(1, batch)):
        chunk = list(tiles[i:i + batch])
        yield chunk, torch.stack([tile_to_tensor(image, t, size, imgsz) for t in chunk])


# ----------------------------------------------------------------------------------------------- merge
def cut_flags(boxes: Tensor, tile: Tile, width: int, height: int, margin: float) -> Tensor:
    """``[N]`` bool: the box touches (within ``margin`` px) a side of ``tile`` that is inside the image."""
    x0, y0, x1, y1 = tile
    cut = torch.zeros(len(boxes), dtype=torch.bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + margin
    if x1 < width:
        cut |= boxes[:, 2] >= x1 - margin
    if y1 < height:
        cut |= boxes[:, 3] >= y1 - margin
    return cut


def box_ios(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over the smaller box's area of xyxy boxes ``a [N,4]``, ``b [M,4]`` -> ``[N,M]``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / torch.min(area_a[:, None], area_b[None, :]).clamp(min=1e-9)


def _components(n: int, pairs: Tensor) -> list[list[int]]:
    """Connected components (size > 1) of the graph on ``n`` nodes with edges ``pairs [E,2]``."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs.tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _overlapping_tiles(tiles: Sequence[Tile], t: int) -> list[int]:
    """Ids of the tiles whose area overlaps tile ``t`` (not ``t`` itself), plus -1 (the whole-image pass)."""
    x0, y0, x1, y1 = tiles[t]
    return [j for j, (a0, b0, a1, b1) in enumerate(tiles)
            if j != t and a0 < x1 and x0 < a1 and b0 < y1 and y0 < b1] + [-1]


def resolve_fragments(boxes: Tensor, scores: Tensor, labels: Tensor, tile_ids: Tensor, cut: Tensor,
                      ios_thr: float = 0.6, tiles: Sequence[Tile] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Step (a) of the module doc: drop border fragments of objects another tile saw whole, and fuse
    fragments-only groups into their union. Returns the new ``(boxes, scores, labels)``.

    ``tiles`` (the grid that ``tile_ids`` index) limits the comparisons to overlapping tiles (faster on
    large images; the result is the same, since boxes of disjoint tiles cannot intersect)."""
    n = len(boxes)
    if n == 0 or not bool(cut.any()):
        return boxes, scores, labels
    edges = []
    for t in tile_ids[cut].unique().tolist():  # the cut detections of one tile against their possible partners
        ci = torch.nonzero(cut & (tile_ids == t)).flatten()
        if tiles is None or t < 0:
            cand = torch.nonzero(tile_ids != t).flatten()
        else:
            cand = torch.nonzero(torch.isin(tile_ids, torch.tensor(_overlapping_tiles(tiles, t)))).flatten()
        link = (box_ios(boxes[ci], boxes[cand]) >= ios_thr) & (labels[ci, None] == labels[None, cand])
        rows, cols = torch.nonzero(link, as_tuple=True)
        edges.append(torch.stack((ci[rows], cand[cols]), 1))
    edges = torch.cat(edges)
    if len(edges) == 0:
        return boxes, scores, labels
    keep = torch.ones(n, dtype=torch.bool)
    new_boxes, new_scores, new_labels = [], [], []
    for group in _components(n, edges):
        g = torch.tensor(group)
        whole = g[~cut[g]]
        keep[g[cut[g]]] = False  # fragments go in every case
        if len(whole) == 0:  # only fragments: their union stands for the object
            gb = boxes[g]
            new_boxes.append(torch.cat((gb[:, :2].amin(0), gb[:, 2:].amax(0))))
            new_scores.append(scores[g].max())
            new_labels.append(labels[g[0]])
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if new_boxes:
        boxes = torch.cat((boxes, torch.stack(new_boxes)))
        scores = torch.cat((scores, torch.stack(new_scores)))
        labels = torch.cat((labels, torch.stack(new_labels)))
    return boxes, scores, labels


def weighted_box_fusion(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thr: float = 0.5
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Class-wise weighted box fusion (see the module doc) -> ``(boxes, scores, labels)`` by score."""
    out_b, out_s, out_l = [], [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[scores[idx].argsort(descending=True)]
        n = len(idx)
        fused = boxes.new_empty(n, 4)  # fused box per cluster (the first m rows are in use)
        wsum = boxes.new_empty(n, 4)  # score-weighted coordinate sums
        ssum = scores.new_empty(n)
        smax = scores.new_empty(n)
        m = 0
        for i in idx.tolist():
            b, s = boxes[i], scores[i]
            j = -1
            if m:
                ious = box_iou(b[None], fused[:m])[0]
                best = int(ious.argmax())
                if float(ious[best]) >= iou_thr:
                    j = best
            if j < 0:
                fused[m], wsum[m], ssum[m], smax[m] = b, b * s, s, s
                m += 1
            else:
                wsum[j] += b * s
                ssum[j] += s
                smax[j] = torch.maximum(smax[j], s)
                fused[j] = wsum[j] / ssum[j].clamp(min=1e-12)
        out_b.append(fused[:m]), out_s.append(smax[:m]), out_l.append(torch.full((m,), c, dtype=labels.dtype))
    if not out_b:
        return boxes[:0], scores[:0], labels[:0]
    b, s, l = torch.cat(out_b), torch.cat(out_s), torch.cat(out_l)
    order = s.argsort(descending=True)
    return b[order], s[order], l[order]


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, tile_ids: Tensor, cut: Tensor,
                     method: str = "nms", iou_thr: float = 0.5, ios_thr: float = 0.6,
                     max_det: int | None = None, tiles: Sequence[Tile] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-tile merge of full-image detections: fragments (:func:`resolve_fragments`), then class-wise
    NMS (``torchvision.ops.batched_nms``) or weighted box fusion. Sorted by score, at most ``max_det``."""
    if method not in ("nms", "wbf"):
        raise ValueError(f"merge={method!r}: expected nms or wbf")
    boxes, scores, labels = resolve_fragments(boxes, scores, labels, tile_ids, cut, ios_thr, tiles)
    if method == "nms":
        keep = batched_nms(boxes.float(), scores.float(), labels, iou_thr)  # sorted by score
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    else:
        boxes, scores, labels = weighted_box_fusion(boxes, scores, labels, iou_thr)
    if max_det is not None:
        boxes, scores, labels = boxes[:max_det], scores[:max_det], labels[:max_det]
    return boxes, scores, labels


# ----------------------------------------------------------------------------------------------- predict
@torch.no_grad()
def sliced_predict(predict_fn: PredictFn, image: np.ndarray, size: int, imgsz: int, overlap: float = 0.2,
                   batch: int = 4, conf: float = 0.25, merge: str = "nms", merge_iou: float = 0.5,
                   merge_ios: float = 0.6, edge_margin: float = 0.015, full_image: bool = False,
                   max_det: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Detections on ``image uint8 [H,W,3]`` by tiles -> ``(boxes [N,4] xyxy full-image px, scores, labels)``
    on the CPU, sorted by score: all that the merge keeps, or the ``max_det`` highest. ``predict_fn`` runs
    the model on a batch of inputs (see ``PredictFn``)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image array [H,W,3], got shape {tuple(image.shape)}")
    height, width = image.shape[:2]
    tiles = tile_grid(width, height, size, overlap)
    margin = edge_margin * size
    pre = as_preprocess(imgsz)
    scale = size / pre.imgsz
    all_b, all_s, all_l, all_t, all_c = [], [], [], [], []

    def collect(tb, ts, tl, tile, tid, scale_xy, never_cut=False):
        keep = ts >= conf
        tb, ts, tl = tb[keep].float().cpu(), ts[keep].float().cpu(), tl[keep].cpu()
        x0, y0, x1, y1 = tile
        tb = tb * torch.tensor([scale_xy[0], scale_xy[1]] * 2) + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        tb[:, 0::2] = tb[:, 0::2].clamp(x0, x1)
        tb[:, 1::2] = tb[:, 1::2].clamp(y0, y1)
        all_b.append(tb), all_s.append(ts), all_l.append(tl.to(torch.int64))
        all_t.append(torch.full((len(tb),), tid, dtype=torch.int64))
        all_c.append(torch.zeros(len(tb), dtype=torch.bool) if never_cut else cut_flags(tb, tile, width, height, margin))

    tid = 0
    for chunk, x in tile_batches(image, tiles, size, pre, batch):
        boxes, scores, labels = predict_fn(x)
        for k, tile in enumerate(chunk):
            collect(boxes[k], scores[k], labels[k], tile, tid, (scale, scale))
            tid += 1
    if full_image and len(tiles) > 1:
        boxes, scores, labels = predict_fn(pre(image)[None])
        pw, ph = pre.post_size(width, height)  # letterbox: the input is the image padded to a square
        collect(boxes[0], scores[0], labels[0], (0, 0, width, height), -1, (pw / pre.imgsz, ph / pre.imgsz), True)
    return merge_detections(torch.cat(all_b), torch.cat(all_s), torch.cat(all_l), torch.cat(all_t),
                            torch.cat(all_c), merge, merge_iou, merge_ios, max_det, tiles)


def model_predict_fn(model: torch.nn.Module, postprocessor, device: torch.device, imgsz: int,
                     autocast_dtype=None) -> PredictFn:
    """``PredictFn`` of a detector + ``PostProcessor``: boxes in pixels of the ``imgsz`` input."""
    sizes = torch.tensor([[imgsz, imgsz]], device=device)

    def fn(x: Tensor):
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
        with ctx:
            out = model(x.to(device))
        heads = {k: out[k].float() for k in ("pred_logits", "pred_boxes")}
        return postprocessor.forward_batched(heads, sizes)

    return fn


@torch.no_grad()
def evaluate_sliced(predict_fn: PredictFn, dataset, evaluator, size: int, imgsz: int, overlap: float = 0.2,
                    batch: int = 4, conf: float = 0.001, merge: str = "nms", merge_iou: float = 0.5,
                    full_image: bool = False, max_det: int | None = None, progress: bool = True) -> dict:
    """Score sliced prediction on the full images of ``dataset`` (a ``DetectionDataset``: each image is
    decoded once by its loader, tiled, merged and compared to the original-image annotations).

    The evaluator's ``*_input`` figures (AP_small_input, ...) are set to the tile's scale: a ``size`` tile is fed
    at ``imgsz``, so every object is seen ``imgsz / size`` times its native size (the ``full_image`` pass, which
    sees it smaller still, is not reflected)."""
    evaluator.set_input_scale(as_preprocess(imgsz).imgsz / size)
    for sample in tqdm(dataset.samples, desc=f"val (slice {size})", leave=False, disable=not progress):
        image = np.asarray(dataset.image_loader(sample), dtype=np.uint8)
        b, s, l = sliced_predict(predict_fn, image, size, imgsz, overlap, batch, conf, merge, merge_iou,
                                 full_image=full_image, max_det=max_det)
        evaluator.update([sample.image_id], [{"boxes": b, "scores": s, "labels": l}])
    return evaluator.compute()
