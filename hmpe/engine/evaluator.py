"""COCO-protocol evaluation plus precision/recall at the best-F1 confidence.

What is computed and how
------------------------
* **COCO figures** (``mAP50_95``, ``mAP50``, ``mAP75``, ``AP_small/medium/large``, ``AR1``, ``AR10``,
  ``AR`` (= AR at ``max_dets``), ``AR_small/medium/large``; the raw 12 numbers are in ``stats`` in
  COCO's order) come from COCOeval, run by faster-coco-eval (default) or pycocotools. The ground
  truth is built from the :class:`~hmpe.data.types.Sample` list: every sample is an image (so
  negative images count, and detections on them are false positives), category ids are
  ``label + 1``, ``bbox`` is xywh, ``area`` is ``w * h`` of the box, and ignore boxes are
  ``iscrowd = 1``, which COCOeval treats as "ignore": they are never missed, and detections that
  match them are neither true nor false positives. ``maxDets = [1, 10, max_dets]``.
  The 12 numbers are summarised here from COCOeval's accumulated ``precision``/``recall`` arrays
  exactly as ``COCOeval.summarize`` does, without its printing, and with one fix: pycocotools
  hard-codes ``maxDets=100`` for the first figure (mAP50-95), which yields -1 when ``max_dets`` is
  not 100; here every AP figure uses ``max_dets``. A -1 keeps COCO's meaning: no ground truth in
  that area range.
* **Precision / recall at the best-F1 confidence** (``precision``, ``recall``, ``f1``, ``conf``):
  class-averaged, the way ultralytics reports them, but computed exactly at each detection score
  instead of on an interpolated 1000-point grid and without smoothing.

  1. Detections are matched to ground truth per image and class at IoU 0.5 with COCOeval's own
     rule (highest score first, best IoU, regular boxes before ignore boxes, an ignore box may
     absorb several detections, at most ``max_dets`` detections per image and class). Detections
     matched to an ignore box are removed; ignore boxes do not count as ground truth.
  2. For every class ``c`` with at least one (non-ignored) ground-truth box and every candidate
     threshold ``t`` (each distinct detection score): ``R_c(t) = TP_c(>= t) / N_c``;
     ``P_c(t) = TP_c(>= t) / D_c(>= t)``, and when no detection of ``c`` reaches ``t``,
     ``P_c(t) = 1`` if the class has detections at all (the left end of its PR curve) and 0 if the
     model never predicts it (so ignoring a class cannot earn precision) -- ultralytics'
     conventions. ``F1_c = 2 P_c R_c / (P_c + R_c)`` (0 when both are 0).
  3. ``conf`` is the threshold maximising the class mean of ``F1_c`` (the lowest such threshold on
     ties, i.e. the most inclusive one); ``precision``, ``recall`` and ``f1`` are the class means of
     ``P_c``, ``R_c`` and ``F1_c`` there. Classes without ground truth are left out of the means
     (their detections already count against mAP through COCO). Per-class values at ``conf`` are in
     ``per_class``. No detections at all: everything is 0.
* **Confusion matrix**: rows are the true class, columns the predicted class, the last row and
  column "background" (last row: false positives; last column: missed objects). See
  :meth:`COCOEvaluator.confusion_matrix`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmpe.data.types import Sample

__all__ = ["COCOEvaluator", "coco_match_image", "best_f1_point", "COCO_STAT_NAMES"]

#: Names of COCOeval's 12 summary numbers, in COCO's order.
COCO_STAT_NAMES: tuple[str, ...] = (
    "mAP50_95",
    "mAP50",
    "mAP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR",
    "AR_small",
    "AR_medium",
    "AR_large",
)

_BACKENDS = ("faster", "pycocotools")


# --------------------------------------------------------------------------------------------
# helpers shared by the P/R and confusion-matrix paths
# --------------------------------------------------------------------------------------------


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    """torch tensor / list / numpy -> numpy of ``dtype`` (float64 keeps float32 inputs exact)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """xyxy -> COCO xywh in float64 (the representation COCOeval computes IoU from)."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def _iou_xywh(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xywh boxes as COCO's ``maskUtils.iou`` computes it for boxes.

    For a crowd (ignore) ground truth the union is the detection's own area, i.e. the overlap is
    "fraction of the detection inside the ignore region", so a small detection inside a large
    ignore region is absorbed by it.
    """
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)))
    dx2, dy2 = dt[:, 0] + dt[:, 2], dt[:, 1] + dt[:, 3]
    gx2, gy2 = gt[:, 0] + gt[:, 2], gt[:, 1] + gt[:, 3]
    w = np.minimum(dx2[:, None], gx2[None]) - np.maximum(dt[:, 0][:, None], gt[:, 0][None])
    h = np.minimum(dy2[:, None], gy2[None]) - np.maximum(dt[:, 1][:, None], gt[:, 1][None])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    da = dt[:, 2] * dt[:, 3]
    ga = gt[:, 2] * gt[:, 3]
    union = np.where(crowd[None, :], da[:, None], da[:, None] + ga[None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def coco_match_image(
    dt_xyxy: np.ndarray,
    dt_scores: np.ndarray,
    gt_xyxy: np.ndarray,
    gt_ignore: np.ndarray,
    iou_thr: float = 0.5,
    max_det: int = 100,
    return_gt: bool = False,
) -> tuple[np.ndarray, ...]:
    """Match one image's detections of one class to its ground truth, as ``COCOeval.evaluateImg``.

    Returns ``(order, tp, ignored)``: ``order`` indexes the kept detections (score-descending,
    stable, at most ``max_det``), ``tp``/``ignored`` are booleans aligned with ``order``; with
    ``return_gt`` also ``gt_index`` aligned with ``order``: the matched ground-truth box (-1: none).
    Each detection's match depends only on the higher-scored ones, so the matches of the detections
    above any score threshold are a prefix of these.
    Kept deliberately line-for-line with COCOeval's loop so that our precision/recall use the same
    matches as its mAP (checked against pycocotools' ``evalImgs`` in the tests).
    """
    order = np.argsort(-np.asarray(dt_scores, dtype=np.float64), kind="mergesort")[:max_det]
    gt_ignore = np.asarray(gt_ignore, dtype=bool)
    g_order = np.argsort(gt_ignore, kind="mergesort")  # regular boxes first, then ignore
    g_ign = gt_ignore[g_order]
    ious = _iou_xywh(_xywh(dt_xyxy)[order], _xywh(gt_xyxy)[g_order], g_ign)
    tp = np.zeros(len(order), dtype=bool)
    ignored = np.zeros(len(order), dtype=bool)
    g_taken = np.zeros(len(g_order), dtype=bool)
    gt_index = np.full(len(order), -1, dtype=np.int64)
    for d in range(len(order)):
        best, m = min(iou_thr, 1 - 1e-10), -1
        for g in range(len(g_order)):
            if g_taken[g] and not g_ign[g]:
                continue
            if m > -1 and not g_ign[m] and g_ign[g]:
                break
            if ious[d, g] < best:
                continue
            best, m = ious[d, g], g
        if m == -1:
            continue
        ignored[d] = g_ign[m]
        tp[d] = not g_ign[m]
        g_taken[m] = True
        gt_index[d] = g_order[m]
    return (order, tp, ignored, gt_index) if return_gt else (order, tp, ignored)


def best_f1_point(
    class_scores: Sequence[np.ndarray],
    class_tp: Sequence[np.ndarray],
    class_num_gt: Sequence[int],
) -> dict[str, Any]:
    """Class-averaged P/R at the confidence maximising the class-mean F1 (module docstring, step 2-3).

    Args:
        class_scores: per class, the scores of its (non-ignored) detections.
        class_tp: per class, booleans (true positive) aligned with ``class_scores``.
        class_num_gt: per class, the number of non-ignored ground-truth boxes.

    Returns a dict with ``precision``, ``recall``, ``f1``, ``conf`` (floats), ``per_class``
    (``P``, ``R``, ``F1`` arrays over all classes, NaN where a class has no ground truth) and the
    curves ``thresholds`` (ascending), ``P_curve``/``R_curve``/``F1_curve`` (C x T, NaN rows for
    classes without ground truth) and ``F1_mean`` (T,).
    """
    num_classes = len(class_num_gt)
    n_gt = np.asarray(class_num_gt, dtype=np.int64)
    evaluated = np.flatnonzero(n_gt > 0)
    all_scores = [np.asarray(class_scores[c], dtype=np.float64) for c in evaluated]
    thresholds = np.unique(np.concatenate(all_scores)) if all_scores else np.zeros(0)
    nan = np.full(num_classes, np.nan)
    empty = {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "conf": 0.0,
        "per_class": {"P": nan.copy(), "R": nan.copy(), "F1": nan.copy()},
        "thresholds": thresholds,
        "P_curve": np.full((num_classes, len(thresholds)), np.nan),
        "R_curve": np.full((num_classes, len(thresholds)), np.nan),
        "F1_curve": np.full((num_classes, len(thresholds)), np.nan),
        "F1_mean": np.zeros(len(thresholds)),
    }
    for c in evaluated:
        empty["per_class"]["P"][c] = empty["per_class"]["R"][c] = empty["per_class"]["F1"][c] = 0.0
    if len(thresholds) == 0:
        return empty
    P, R, F1 = empty["P_curve"], empty["R_curve"], empty["F1_curve"]
    for c in evaluated:
        scores = np.asarray(class_scores[c], dtype=np.float64)
        tp = np.asarray(class_tp[c], dtype=bool)
        if len(scores) == 0:
            P[c], R[c], F1[c] = 0.0, 0.0, 0.0
            continue
        order = np.argsort(-scores, kind="mergesort")
        sorted_scores, cum_tp = scores[order], np.cumsum(tp[order])
        # number of detections with score >= t, for every threshold t
        n_above = np.searchsorted(-sorted_scores, -thresholds, side="right")
        tp_above = np.where(n_above > 0, cum_tp[np.maximum(n_above - 1, 0)], 0)
        P[c] = np.where(n_above > 0, tp_above / np.maximum(n_above, 1), 1.0)
        R[c] = tp_above / n_gt[c]
        denom = P[c] + R[c]
        F1[c] = np.where(denom > 0, 2 * P[c] * R[c] / np.where(denom > 0, denom, 1), 0.0)
    f1_mean = F1[evaluated].mean(0)
    i = int(np.argmax(f1_mean))  # first maximum = lowest threshold (thresholds ascend)
    empty["F1_mean"] = f1_mean
    empty["per_class"] = {"P": P[:, i].copy(), "R": R[:, i].copy(), "F1": F1[:, i].copy()}
    empty.update(
        precision=float(P[evaluated, i].mean()),
        recall=float(R[evaluated, i].mean()),
        f1=float(f1_mean[i]),
        conf=float(thresholds[i]),
    )
    return empty


# --------------------------------------------------------------------------------------------
# COCO backends
# --------------------------------------------------------------------------------------------


def _run_cocoeval(gt: dict, results: list[dict], max_dets: int, backend: str, verbose: bool) -> tuple[np.ndarray, np.ndarray, Any]:
    """Run COCOeval (evaluate + accumulate) and return (precision, recall, params).

    ``precision`` is COCO's [T, R, K, A, M] array and ``recall`` its [T, K, A, M] array.
    """
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster

            quiet = print if verbose else (lambda *a, **k: None)
            coco_gt = COCO(gt, print_function=quiet)
            coco_dt = coco_gt.loadRes(results)  # handles an empty result list
            ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            if results:
                coco_dt = coco_gt.loadRes(results)
            else:  # pycocotools' loadRes indexes results[0]; build the empty result set by hand
                coco_dt = COCO()
                coco_dt.dataset = {"images": list(gt["images"]), "categories": list(gt["categories"]), "annotations": []}
                coco_dt.createIndex()
            ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    return np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"]), ev.params


def _summarize(precision: np.ndarray, recall: np.ndarray, params: Any) -> np.ndarray:
    """COCO's 12 summary numbers from the accumulated arrays (``COCOeval.summarize`` without print).

    Same selection and mean over entries > -1 as COCO, except that AP always uses the last maxDets
    entry (pycocotools uses a literal 100 for the first figure).
    """
    iou_thrs = np.asarray(params.iouThrs)
    labels = list(params.areaRngLbl)
    m_last = len(params.maxDets) - 1

    def mean_valid(s: np.ndarray) -> float:
        v = s[s > -1]
        return float(np.mean(v)) if v.size else -1.0

    def ap(iou: float | None = None, area: str = "all") -> float:
        s = precision
        if iou is not None:
            s = s[np.flatnonzero(np.isclose(iou_thrs, iou))]
        return mean_valid(s[:, :, :, labels.index(area), m_last])

    def ar(m: int, area: str = "all") -> float:
        return mean_valid(recall[:, :, labels.index(area), m])

    return np.array(
        [
            ap(),
            ap(0.5),
            ap(0.75),
            ap(area="small"),
            ap(area="medium"),
            ap(area="large"),
            ar(0),
            ar(1),
            ar(m_last),
            ar(m_last, "small"),
            ar(m_last, "medium"),
            ar(m_last, "large"),
        ]
    )


# --------------------------------------------------------------------------------------------
# the evaluator
# --------------------------------------------------------------------------------------------


class COCOEvaluator:
    """Accumulates predictions over a split and scores them on the COCO protocol.

    Args:
        samples: the split's samples (ground truth in original-image pixels).
        class_names: C names; labels are 0..C-1.
        max_dets: detections per image kept by COCOeval (``maxDets = [1, 10, max_dets]``); use
            300+ for dense scenes where 100 would cap recall.
        backend: ``"faster"`` (faster-coco-eval, default) or ``"pycocotools"``.
        verbose: let COCOeval print its progress/summary (silenced by default).

    Usage::

        ev = COCOEvaluator(samples, names)
        ev.update(image_ids, predictions)   # per batch; predictions as PostProcessor returns them
        metrics = ev.compute()
        ev.plot(out_dir); print(ev.summary_table())
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_names: Sequence[str],
        max_dets: int = 100,
        backend: str = "faster",
        verbose: bool = False,
    ):
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if int(max_dets) < 10:
            raise ValueError(f"max_dets must be >= 10 (COCO uses maxDets=[1, 10, max_dets]), got {max_dets}")
        self.samples = {int(s.image_id): s for s in samples}
        if len(self.samples) != len(samples):
            raise ValueError("duplicate image_id in samples")
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.max_dets = int(max_dets)
        self.backend = backend
        self.verbose = verbose
        for s in samples:
            if len(s.labels) and (s.labels.min() < 0 or s.labels.max() >= self.num_classes):
                raise ValueError(f"sample {s.path or s.image_id}: label outside 0..{self.num_classes - 1}")
        self.reset()

    # ---------------------------------------------------------------- accumulation

    def reset(self) -> None:
        """Forget all predictions (start of a new evaluation)."""
        self._preds: dict[int, dict[str, np.ndarray]] = {}
        self._result: dict[str, Any] | None = None
        self._curves: dict[str, Any] | None = None

    def update(self, image_ids: Iterable[int] | Any, predictions: Sequence[dict]) -> None:
        """Add predictions for a batch of images.

        ``predictions[i]`` holds ``boxes`` [K,4] absolute xyxy in the *original* image, ``scores``
        [K] and ``labels`` [K] in 0..C-1 (torch or numpy). A second update for the same image
        replaces the first (re-running a batch must not double-count).
        """
        ids = [int(i) for i in _to_numpy(image_ids, np.int64).reshape(-1)]
        if len(ids) != len(predictions):
            raise ValueError(f"{len(ids)} image ids but {len(predictions)} predictions")
        for image_id, pred in zip(ids, predictions):
            if image_id not in self.samples:
                raise KeyError(f"image_id {image_id} is not in the evaluator's samples")
            boxes = _to_numpy(pred["boxes"], np.float64).reshape(-1, 4)
            scores = _to_numpy(pred["scores"], np.float64).reshape(-1)
            labels = _to_numpy(pred["labels"], np.int64).reshape(-1)
            if not (len(boxes) == len(scores) == len(labels)):
                raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"image {image_id}: predicted label outside 0..{self.num_classes - 1}")
            if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
                raise ValueError(f"image {image_id}: non-finite box or score")
            self._preds[image_id] = {"boxes": boxes, "scores": scores, "labels": labels}
        self._result = None
        self._curves = None

    @property
    def num_predictions(self) -> int:
        return sum(len(p["scores"]) for p in self._preds.values())

    def predictions(self) -> dict[int, dict[str, np.ndarray]]:
        """The stored predictions ``{image_id: {boxes, scores, labels}}`` (e.g. to gather across ranks)."""
        return self._preds

    def synchronize_between_processes(self) -> None:
        """Merge the predictions of all DDP ranks (no-op without an initialised process group)."""
        try:
            import torch.distributed as dist
        except ImportError:  # pragma: no cover
            return
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self._preds)
        merged: dict[int, dict[str, np.ndarray]] = {}
        for part in gathered:
            merged.update(part)
        self._preds = merged
        self._result = None
        self._curves = None

    # ---------------------------------------------------------------- COCO json

    def coco_ground_truth(self) -> dict:
        """The COCO ground-truth dict built from the samples (ids 1..C, ignore -> iscrowd=1)."""
        images, annotations = [], []
        for image_id, s in self.samples.items():
            images.append({"id": image_id, "width": int(s.width), "height": int(s.height), "file_name": str(s.path or image_id)})
            for box, label, ign in zip(_xywh(s.boxes), s.labels, s.ignore):
                x, y, w, h = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(label) + 1,
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": int(bool(ign)),
                    }
                )
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def coco_results(self) -> list[dict]:
        """Predictions as a COCO results list (xywh, category ids 1..C)."""
        out = []
        for image_id, p in self._preds.items():
            for box, score, label in zip(_xywh(p["boxes"]), p["scores"], p["labels"]):
                out.append(
                    {"image_id": image_id, "category_id": int(label) + 1, "bbox": [float(v) for v in box], "score": float(score)}
                )
        return out

    # ---------------------------------------------------------------- metrics

    def compute(self) -> dict[str, Any]:
        """Score the predictions. Returns floats (see the module docstring for definitions)::

            mAP50_95, mAP50, mAP75, AP_small, AP_medium, AP_large, AR1, AR10, AR, AR_small,
            AR_medium, AR_large, precision, recall, f1, conf, num_images, num_predictions,
            stats (the 12 COCO numbers), per_class_AP {name: {"AP50_95", "AP50"}} (NaN for a class
            without ground truth), per_class {name: {"P", "R", "F1", "instances", "images"}}.
        """
        if self._result is not None:
            return copy.deepcopy(self._result)
        precision, recall, params = _run_cocoeval(
            self.coco_ground_truth(), self.coco_results(), self.max_dets, self.backend, self.verbose
        )
        stats = _summarize(precision, recall, params)
        pr = self._pr_at_best_f1()
        result: dict[str, Any] = {name: float(v) for name, v in zip(COCO_STAT_NAMES, stats)}
        result.update(
            precision=pr["precision"],
            recall=pr["recall"],
            f1=pr["f1"],
            conf=pr["conf"],
            num_images=len(self.samples),
            num_predictions=self.num_predictions,
            stats=[float(v) for v in stats],
        )
        ap_all = self._per_class_ap(precision, params)
        result["per_class_AP"] = {n: {"AP50_95": a, "AP50": b} for n, (a, b) in zip(self.class_names, ap_all)}
        instances, images = self._gt_counts()
        result["per_class"] = {
            n: {
                "P": float(pr["per_class"]["P"][c]),
                "R": float(pr["per_class"]["R"][c]),
                "F1": float(pr["per_class"]["F1"][c]),
                "instances": int(instances[c]),
                "images": int(images[c]),
            }
            for c, n in enumerate(self.class_names)
        }
        iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
        self._curves = {
            "recall_points": np.asarray(params.recThrs),
            "pr50": precision[iou50, :, :, 0, -1].T.copy(),  # (K, R), area all, max_dets
            "f1": pr,
        }
        self._result = result
        return copy.deepcopy(result)

    def _per_class_ap(self, precision: np.ndarray, params: Any) -> list[tuple[float, float]]:
        """(AP50-95, AP50) per class from COCO's precision array (NaN: class has no ground truth)."""
        iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
        out = []
        for k in range(self.num_classes):
            s = precision[:, :, k, 0, -1]
            s50 = s[iou50]
            a = float(np.mean(s[s > -1])) if (s > -1).any() else math.nan
            b = float(np.mean(s50[s50 > -1])) if (s50 > -1).any() else math.nan
            out.append((a, b))
        return out

    def _gt_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Per class: non-ignored instances and images containing at least one."""
        instances = np.zeros(self.num_classes, np.int64)
        images = np.zeros(self.num_classes, np.int64)
        for s in self.samples.values():
            labels = s.labels[~s.ignore]
            instances += np.bincount(labels, minlength=self.num_classes)
            images[np.unique(labels)] += 1
        return instances, images

    def _pr_at_best_f1(self, iou_thr: float = 0.5) -> dict[str, Any]:
        """Match at ``iou_thr`` with COCO's rule and find the best-F1 point (module docstring)."""
        scores: list[list[np.ndarray]] = [[] for _ in range(self.num_classes)]
        tps: list[list[np.ndarray]] = [[] for _ in range(self.num_classes)]
        for image_id, p in self._preds.items():
            s = self.samples[image_id]
            for c in np.unique(p["labels"]):
                d = p["labels"] == c
                g = s.labels == c
                order, tp, ignored = coco_match_image(
                    p["boxes"][d], p["scores"][d], s.boxes[g], s.ignore[g], iou_thr, self.max_dets
                )
                keep = ~ignored
                scores[c].append(p["scores"][d][order][keep])
                tps[c].append(tp[keep])
        n_gt, _ = self._gt_counts()
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
        return best_f1_point([cat(x) for x in scores], [cat(x).astype(bool) for x in tps], n_gt.tolist())

    # ---------------------------------------------------------------- confusion matrix

    def confusion_matrix(self, conf: float = 0.25, iou: float = 0.5) -> np.ndarray:
        """(C+1) x (C+1) counts: rows = true class, columns = predicted class, index C = background.

        Per image, detections with ``score >= conf`` (the ``max_dets`` highest) are matched to the
        non-ignored ground truth regardless of class: candidate pairs with IoU >= ``iou`` are taken
        greedily from the highest IoU down, each box used once. A matched pair adds to
        ``[true, predicted]`` (off-diagonal when the class is wrong); an unmatched ground truth to
        ``[true, C]`` (missed); an unmatched detection to ``[C, predicted]`` (false positive),
        unless it overlaps an ignore box by ``iou`` (COCO's crowd overlap: intersection over the
        detection's area), in which case it is not counted at all.
        """
        C = self.num_classes
        m = np.zeros((C + 1, C + 1), dtype=np.int64)
        for image_id, s in self.samples.items():
            p = self._preds.get(image_id)
            gt_reg = ~s.ignore
            g_boxes, g_labels = s.boxes[gt_reg], s.labels[gt_reg]
            if p is None:
                d_boxes, d_labels = np.zeros((0, 4)), np.zeros(0, np.int64)
            else:
                sel = np.flatnonzero(p["scores"] >= conf)
                sel = sel[np.argsort(-p["scores"][sel], kind="mergesort")][: self.max_dets]
                d_boxes, d_labels = p["boxes"][sel], p["labels"][sel]
            ious = _iou_xywh(_xywh(d_boxes), _xywh(g_boxes), np.zeros(len(g_boxes), bool))
            d_used = np.zeros(len(d_boxes), bool)
            g_used = np.zeros(len(g_boxes), bool)
            di, gi = np.nonzero(ious >= iou)
            for k in np.argsort(-ious[di, gi], kind="mergesort"):
                d, g = di[k], gi[k]
                if d_used[d] or g_used[g]:
                    continue
                d_used[d] = g_used[g] = True
                m[g_labels[g], d_labels[d]] += 1
            for g in np.flatnonzero(~g_used):
                m[g_labels[g], C] += 1
            free = np.flatnonzero(~d_used)
            if len(free) and s.ignore.any():
                ioa = _iou_xywh(_xywh(d_boxes[free]), _xywh(s.boxes[s.ignore]), np.ones(int(s.ignore.sum()), bool))
                free = free[~(ioa >= iou).any(1)]
            for d in free:
                m[C, d_labels[d]] += 1
        return m

    # ---------------------------------------------------------------- reports

    def plot(self, out_dir: str | Path, conf: float | None = None) -> list[Path]:
        """Write ``pr_curve.png`` (IoU 0.5), ``f1_curve.png`` and ``confusion_matrix.png``.

        The confusion matrix is taken at ``conf`` (default: the best-F1 confidence, or 0.25 when
        there are no detections).
        """
        from hmpe.viz.plots import plot_confusion_matrix, plot_metric_curve, plot_pr_curve

        result = self.compute()
        curves = self._curves
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ap50 = [result["per_class_AP"][n]["AP50"] for n in self.class_names]
        paths = [plot_pr_curve(curves["recall_points"], curves["pr50"], self.class_names, out / "pr_curve.png", ap=ap50)]
        f1 = curves["f1"]
        paths.append(
            plot_metric_curve(
                f1["thresholds"], f1["F1_curve"], self.class_names, out / "f1_curve.png",
                mean=f1["F1_mean"], mark_x=(result["conf"] if self.num_predictions else None),
            )
        )
        if conf is None:
            conf = result["conf"] if self.num_predictions else 0.25
        cm = self.confusion_matrix(conf=conf)
        title = f"Confusion matrix (conf >= {conf:.3f}, IoU 0.5, row-normalised)"
        paths.append(plot_confusion_matrix(cm, self.class_names, out / "confusion_matrix.png", normalize=True, title=title))
        return paths

    def summary_table(self) -> str:
        """Per-class table (images, instances, P, R at the best-F1 conf, AP50, AP50-95) as text."""
        r = self.compute()
        instances, images = self._gt_counts()
        name_w = max([len("class")] + [len(n) for n in self.class_names] + [3])
        head = f"{'class':>{name_w}} {'images':>7} {'inst':>7} {'P':>7} {'R':>7} {'AP50':>7} {'AP50-95':>8}"

        def fmt(v: float, w: int = 7) -> str:
            return f"{'-':>{w}}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:>{w}.3f}"

        n_pos = sum(1 for s in self.samples.values() if (~s.ignore).any())
        lines = [head, "-" * len(head)]
        lines.append(
            f"{'all':>{name_w}} {len(self.samples):>7d} {int(instances.sum()):>7d} {fmt(r['precision'])} "
            f"{fmt(r['recall'])} {fmt(r['mAP50'])} {fmt(r['mAP50_95'], 8)}"
        )
        for c, n in enumerate(self.class_names):
            pc, ap = r["per_class"][n], r["per_class_AP"][n]
            lines.append(
                f"{n:>{name_w}} {int(images[c]):>7d} {int(instances[c]):>7d} {fmt(pc['P'])} {fmt(pc['R'])} "
                f"{fmt(ap['AP50'])} {fmt(ap['AP50_95'], 8)}"
            )
        lines.append(
            f"conf={r['conf']:.3f} (best class-mean F1={r['f1']:.3f}), max_dets={self.max_dets}, "
            f"images with objects={n_pos}, AP_S/M/L={r['AP_small']:.3f}/{r['AP_medium']:.3f}/{r['AP_large']:.3f}"
        )
        return "\n".join(lines)
