"""The explorer's state: the source's images (an allow-list), one forward per image, cached maps.

Everything the page asks for is answered from an image's cache entry: the detections (down to a low
score floor, matched once to the ground truth), the :class:`~hmpe.models.heatmap.HeatmapOutput` of the
forward (``h_class``, ``h_bbox`` per level, the gate) and the probe's ``F`` and class logits (for
``H_class`` of a chosen class). A threshold or gate change is :func:`~hmpe.models.heatmap.mask_stats.remask` on
the cached maps, then :func:`~hmpe.viz.heatmap.heatmap_maps` and
:func:`~hmpe.models.heatmap.mask_stats.mask_statistics` -- the library's own functions, nothing re-implemented.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from hmpe.data.formats import load_dataset, shipped_datasets
from hmpe.data.images import load_image
from hmpe.engine.eval.evaluator import coco_match_image
from hmpe.engine.eval.predict import detections, resolve_source
from hmpe.models.heatmap.mask_stats import mask_statistics, object_cells, remask
from hmpe.viz.draw import class_colour
from hmpe.viz.heatmap import fit_for_display, heatmap_maps

if TYPE_CHECKING:  # the annotation only: Detector.explore() passes itself in; importing hmpe.api when this
    from hmpe.api import Detector  # module runs would close the circle api -> explore -> session -> api

MATCH_IOU = 0.5  # a detection is a true positive at IoU >= 0.5 with an unmatched box of its class (COCO's AP50)


class UnknownImage(LookupError):
    """An image index the source does not have (the page answers 404)."""


@dataclass
class SourceImage:
    """One image of the source; ``gt_*`` are None for a folder (no ground truth)."""

    name: str  # path relative to the source root, the only name the page can ask for
    path: Path
    gt_boxes: np.ndarray | None = None  # [N,4] xyxy pixels
    gt_labels: np.ndarray | None = None
    gt_ignore: np.ndarray | None = None


def _is_dataset(source: str) -> bool:
    p = Path(source)
    return p.suffix.lower() in (".yaml", ".yml") or (not p.exists() and source in shipped_datasets())


def load_source(source: str | Path, split: str = "val") -> tuple[Path, list[SourceImage], list[str] | None]:
    """A folder / image file / glob (no ground truth) or a dataset YAML or shipped name (its ``split``, with
    ground truth) -> (root, images, dataset class names or None). Every image lies under ``root``."""
    source = str(source)
    if _is_dataset(source):
        samples, names = load_dataset(source, split)
        paths = [_absolute(s.path) for s in samples if s.path]
        if not paths:
            raise ValueError(f"source {source}: split {split!r} has no image files (generated data cannot be explored)")
        root = _common_root(paths)
        images = [SourceImage(str(p.relative_to(root)), p, s.boxes, s.labels, s.ignore)
                  for p, s in zip(paths, [s for s in samples if s.path])]
        return root, images, list(names)
    paths = [_absolute(p) for p in resolve_source(source)]
    root = _common_root(paths)
    return root, [SourceImage(str(p.relative_to(root)), p) for p in paths], None


def _absolute(path) -> Path:
    """Absolute and normalised, symlinks kept: a link leading out of the source is caught by ``resolve``."""
    return Path(os.path.abspath(path))


def _common_root(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


class ExploreSession:
    """State behind the page: ``info()``, ``detections(i)``, ``maps(i, ...)``, ``ranking(conf)``, ``resolve(name)``.

    detector: a :class:`~hmpe.api.Detector` with weights of a model with a heatmap path; source: see
    :func:`load_source`; conf: the page's initial confidence; floor: detections below it are never shown;
    cache: how many images keep their maps (the detections and matches of every image visited are kept).
    """

    def __init__(self, detector: Detector, source: str | Path, split: str = "val", conf: float = 0.25,
                 imgsz: int | None = None, floor: float = 0.05, cache: int = 16, max_side: int = 640):
        self.detector = detector
        self.model = detector._ensure_model()
        if getattr(self.model, "heatmap", None) is None:
            raise ValueError(f"{detector.weights}: this model has no heatmap path (`heatmap: null` in its model "
                             f"config), so there is nothing to explore; train one with it, e.g. model=hmpe-n")
        self.root, self.images, data_names = load_source(source, split)
        self.names = detector.names
        if data_names is not None and data_names != self.names:
            raise ValueError(f"source {source}: classes {data_names} differ from the checkpoint's {self.names}")
        self.has_gt = data_names is not None
        self.by_name = {im.name: i for i, im in enumerate(self.images)}
        self.scanning = False  # set by the server when a background scan runs every image once
        self.conf, self.floor, self.max_side = float(conf), float(floor), int(max_side)
        self.pre = detector.preprocess(imgsz)  # the checkpoint's own resize / letterbox (hmpe.data.preprocess)
        self.imgsz = self.pre.imgsz
        self.cache_size = max(1, int(cache))
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._summaries: dict[int, dict] = {}  # detections + matches of every image run so far (JSON for the page)
        self._boxes: dict[int, dict] = {}  # the same detections unrounded: the object cells are computed from them
        self._model_lock = threading.Lock()
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------ the allow-list
    def resolve(self, name: str) -> Path:
        """The file of one of the source's images; anything else (another file, a path outside the source,
        ``..``, an absolute path) raises PermissionError: the page cannot read arbitrary files."""
        i = self.by_name.get(str(name))
        # the messages name the file as asked or relative to the source: the page never learns local paths
        if i is None:
            raise PermissionError(f"{name!r} is not one of the {len(self.images)} images of the source")
        path = self.images[i].path
        if not path.resolve().is_relative_to(self.root.resolve()):  # a symlink in the source pointing out of it
            raise PermissionError(f"{name!r} resolves outside the source")
        return path

    def index(self, index) -> int:
        """``index`` as an image index of the source: 0..n-1 (no negative indices), else UnknownImage (404)."""
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < len(self.images):
            raise UnknownImage(f"image index {index} outside 0..{len(self.images) - 1}")
        return int(index)

    def info(self) -> dict:
        heat = self.model.heatmap
        return {"names": self.names, "images": [im.name for im in self.images], "has_gt": self.has_gt,
                "conf": self.conf, "floor": self.floor, "tau": float(heat.mask_filter.tau),
                "gate": [round(float(v), 4) for v in torch.sigmoid(heat.gate.detach()).tolist()],
                "strides": list(heat.strides), "levels": heat.num_levels, "imgsz": self.imgsz,
                "topk": int(heat.topk_classes), "root": str(self.root), "scan": self.scanning,
                "colours": ["#%02x%02x%02x" % class_colour(c) for c in range(len(self.names))]}

    # ------------------------------------------------------------------ one forward per image
    @torch.no_grad()
    def _forward(self, index: int) -> dict:
        im = self.images[index]
        path = self.resolve(im.name)
        image = load_image(path)  # uint8 HxWx3
        H, W = image.shape[:2]
        x = self.pre(image)[None].to(self.detector.device)
        heat_mod = self.model.heatmap
        probe = []  # (F, class logits) per level: the inputs of H_class for a chosen class
        hook = heat_mod.probe.register_forward_hook(lambda m, i, o: probe.append((o[0].detach(), o[1].detach())))
        try:
            outputs = self.model(x)
        finally:
            hook.remove()
        heat = dataclasses.replace(outputs.pop("heatmap"), probe=[])
        sizes = torch.tensor([self.pre.post_size(W, H)], device=self.detector.device)
        pred = detections(outputs, self.detector._post, sizes, [path], [(W, H)], self.floor, self.names)[0]
        dets = {"boxes": pred.boxes, "scores": pred.scores, "labels": pred.labels}
        small, _ = fit_for_display(image, np.zeros((0, 4)), self.max_side)
        return {"heat": heat, "probe": probe, "width": W, "height": H, "display": small, "dets": dets,
                "summary": self._summarise(index, dets, W, H)}

    def _summarise(self, index: int, dets: dict, W: int, H: int) -> dict:
        """Detections with their match to the ground truth (per class, score order, IoU >= 0.5): by the prefix
        property of greedy matching (:func:`~hmpe.engine.eval.evaluator.coco_match_image`) the page can show the
        true / false positives and misses at any confidence above the floor without asking again."""
        n = len(dets["scores"])
        status, gt_of = np.array(["fp"] * n, dtype=object), np.full(n, -1)
        im = self.images[index]
        if im.gt_boxes is not None:
            for c in np.unique(np.concatenate([dets["labels"], im.gt_labels])).tolist():
                d_idx = np.nonzero(dets["labels"] == c)[0]
                g_idx = np.nonzero(im.gt_labels == c)[0]
                if not len(d_idx) or not len(g_idx):  # no detections, or no boxes of this class: all false
                    continue
                order, tp, ign, g = coco_match_image(dets["boxes"][d_idx], dets["scores"][d_idx], im.gt_boxes[g_idx],
                                                     im.gt_ignore[g_idx], MATCH_IOU, max_det=len(d_idx), return_gt=True)
                sel = d_idx[order]
                status[sel] = np.where(tp, "tp", np.where(ign, "ignored", "fp"))
                gt_of[sel] = np.where(g >= 0, g_idx[np.maximum(g, 0)], -1)
        gts = [] if im.gt_boxes is None else [
            {"box": [round(float(v), 1) for v in b], "label": int(l), "ignore": bool(ig)}
            for b, l, ig in zip(im.gt_boxes, im.gt_labels, im.gt_ignore)]
        return {"index": index, "name": im.name, "width": W, "height": H, "gts": gts, "detections": [
            {"box": [round(float(v), 1) for v in b], "score": round(float(s), 4), "label": int(l),
             "status": str(st) if im.gt_boxes is not None else None, "gt": int(g)}
            for b, s, l, st, g in zip(dets["boxes"], dets["scores"], dets["labels"], status, gt_of)]}

    def entry(self, index: int) -> dict:
        """The cache entry of image ``index`` (the forward runs on the first request only)."""
        index = self.index(index)
        with self._cache_lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        with self._model_lock:  # one forward at a time (the scan thread and the page share the model)
            with self._cache_lock:
                if index in self._cache:
                    return self._cache[index]
            e = self._forward(index)
        with self._cache_lock:
            self._cache[index] = e
            self._summaries[index], self._boxes[index] = e["summary"], e["dets"]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return e

    def summary(self, index: int) -> dict:
        index = self.index(index)
        self.resolve(self.images[index].name)  # the allow-list holds for cached answers too
        s = self._summaries.get(index)
        return s if s is not None else self.entry(index)["summary"]

    # ------------------------------------------------------------------ maps and statistics
    def object_boxes(self, index: int, conf: float) -> np.ndarray:
        """The boxes that make the object cells: the ground truth when there is one (ignored boxes too: they
        are objects), else the detections with score >= conf."""
        if self.images[index].gt_boxes is not None:
            return np.asarray(self.images[index].gt_boxes, dtype=np.float64).reshape(-1, 4)
        if index not in self._boxes:
            self.entry(index)
        d = self._boxes[index]
        return np.asarray(d["boxes"][d["scores"] >= conf], dtype=np.float64).reshape(-1, 4)

    def maps(self, index: int, tau: float, gate: float | None = None, level: int | str = 0,
             cls: int | None = None, conf: float | None = None) -> tuple[dict, dict]:
        """(figure maps as in ``hmpe heatmap`` -- H_class, H_bbox, H_mixed, Mask, |PE'| on the level's grid --
        recomputed for threshold ``tau`` and gate ``gate`` (None: the learned lambda_l); mask statistics).
        ``cls``: H_class of that class instead of the top-T; ``level``: 0..L-1 or "max"."""
        e = self.entry(index)
        heat = e["heat"]
        if level != "max" and not 0 <= int(level) < heat.num_levels:
            raise ValueError(f"level={level!r}: expected 0..{heat.num_levels - 1} or max")
        out = remask(heat, tau, gate, self.model.heatmap.mask_filter.mode)
        if cls is not None:
            if not 0 <= int(cls) < len(self.names):
                raise ValueError(f"cls={cls}: expected a class index 0..{len(self.names) - 1}")
            out = dataclasses.replace(out, h_class=self._class_map(e, int(cls)))
        maps = heatmap_maps(out, 0, level, pe="norm")
        conf = self.conf if conf is None else float(conf)
        objects = object_cells(self.object_boxes(index, conf), (e["width"], e["height"]), maps["Mask"].shape)
        return maps, mask_statistics(maps["Mask"], objects)

    def _class_map(self, e: dict, cls: int) -> list[torch.Tensor]:
        key = ("class_map", cls)
        if key not in e:
            fs = [f.float() for f, _ in e["probe"]]
            logits = [s.float() for _, s in e["probe"]]
            classes = torch.tensor([[cls]], device=fs[0].device)
            with torch.no_grad():
                e[key] = self.model.heatmap.class_heatmaps(fs, logits, classes)
        return e[key]

    # ------------------------------------------------------------------ misses over the source
    def misses(self, index: int, conf: float) -> int:
        """Ground-truth boxes (not ignored) without a true positive at score >= conf."""
        s = self._summaries[index]
        found = {d["gt"] for d in s["detections"] if d["status"] == "tp" and d["score"] >= conf}
        return sum(1 for j, g in enumerate(s["gts"]) if not g["ignore"] and j not in found)

    def ranking(self, conf: float, top: int = 20) -> dict:
        """Images run so far, most misses at ``conf`` first (ties: lower index first)."""
        done = sorted(self._summaries)
        rows = sorted(((self.misses(i, conf), i) for i in done), key=lambda t: (-t[0], t[1]))
        return {"scanned": len(done), "total": len(self.images),
                "images": [{"index": i, "name": self.images[i].name, "misses": m} for m, i in rows[:top]]}

    def scan(self, stop: threading.Event) -> None:
        """Run every image once (in the background) so that the ranking covers the whole source."""
        for i in range(len(self.images)):
            if stop.is_set():
                return
            if i not in self._summaries:
                try:
                    self.entry(i)
                except Exception as err:  # one unreadable image must not stop the scan; the page shows it
                    self._summaries[i] = {"index": i, "name": self.images[i].name, "error": str(err),
                                          "detections": [], "gts": []}
