"""Detection-to-ground-truth matching for the evaluator's P/R and confusion matrix (definitions in
:mod:`hmpe.engine.eval.evaluator`): COCO's box IoU, COCOeval's per-image greedy match, the best-F1 operating
point, and the class-agnostic confusion matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hmpe.data.types import Sample

def to_numpy(x: Any, dtype: Any) -> np.ndarray:
    """torch tensor / list / numpy -> numpy of ``dtype`` (float64 keeps float32 inputs exact)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """xyxy -> COCO xywh in float64 (the representation COCOeval computes IoU from)."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def iou_xywh(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
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
    ious = iou_xywh(xywh(dt_xyxy)[order], xywh(gt_xyxy)[g_order], g_ign)
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
    """Class-averaged P/R at the confidence maximising the class-mean F1 (:mod:`hmpe.engine.eval.evaluator`
    docstring, step 2-3).

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
    point = _no_detections_point(num_classes, evaluated, thresholds)
    if len(thresholds) == 0:
        return point
    P, R, F1 = point["P_curve"], point["R_curve"], point["F1_curve"]
    for c in evaluated:
        P[c], R[c], F1[c] = _class_curves(class_scores[c], class_tp[c], int(n_gt[c]), thresholds)
    f1_mean = F1[evaluated].mean(0)
    i = int(np.argmax(f1_mean))  # first maximum = lowest threshold (thresholds ascend)
    point["F1_mean"] = f1_mean
    point["per_class"] = {"P": P[:, i].copy(), "R": R[:, i].copy(), "F1": F1[:, i].copy()}
    point.update(
        precision=float(P[evaluated, i].mean()),
        recall=float(R[evaluated, i].mean()),
        f1=float(f1_mean[i]),
        conf=float(thresholds[i]),
    )
    return point


def _no_detections_point(num_classes: int, evaluated: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    """:func:`best_f1_point`'s result before any detection counts: zeros for the evaluated classes, NaN curves."""
    nan = np.full(num_classes, np.nan)
    point = {
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
        point["per_class"]["P"][c] = point["per_class"]["R"][c] = point["per_class"]["F1"][c] = 0.0
    return point


def _class_curves(
    class_scores: np.ndarray, class_tp: np.ndarray, n_gt: int, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P, R and F1 of one class (with ground truth) at every threshold (ultralytics' conventions)."""
    scores = np.asarray(class_scores, dtype=np.float64)
    tp = np.asarray(class_tp, dtype=bool)
    if len(scores) == 0:
        return 0.0, 0.0, 0.0
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, cum_tp = scores[order], np.cumsum(tp[order])
    # number of detections with score >= t, for every threshold t
    n_above = np.searchsorted(-sorted_scores, -thresholds, side="right")
    tp_above = np.where(n_above > 0, cum_tp[np.maximum(n_above - 1, 0)], 0)
    precision = np.where(n_above > 0, tp_above / np.maximum(n_above, 1), 1.0)
    recall = tp_above / n_gt
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return precision, recall, f1


def confusion_counts(
    samples: Mapping[int, Sample],
    predictions: Mapping[int, dict[str, np.ndarray]],
    num_classes: int,
    conf: float,
    iou: float,
    max_dets: int,
) -> np.ndarray:
    """(C+1) x (C+1) counts: rows = true class, columns = predicted class, index C = background.

    Per image, detections with ``score >= conf`` (the ``max_dets`` highest) are matched to the
    non-ignored ground truth regardless of class: candidate pairs with IoU >= ``iou`` are taken
    greedily from the highest IoU down, each box used once. A matched pair adds to
    ``[true, predicted]`` (off-diagonal when the class is wrong); an unmatched ground truth to
    ``[true, C]`` (missed); an unmatched detection to ``[C, predicted]`` (false positive),
    unless it overlaps an ignore box by ``iou`` (COCO's crowd overlap: intersection over the
    detection's area), in which case it is not counted at all.
    """
    C = num_classes
    m = np.zeros((C + 1, C + 1), dtype=np.int64)
    for image_id, s in samples.items():
        p = predictions.get(image_id)
        if p is None:
            d_boxes, d_labels = np.zeros((0, 4)), np.zeros(0, np.int64)
        else:
            sel = np.flatnonzero(p["scores"] >= conf)
            sel = sel[np.argsort(-p["scores"][sel], kind="mergesort")][:max_dets]
            d_boxes, d_labels = p["boxes"][sel], p["labels"][sel]
        _confusion_image(m, s, d_boxes, d_labels, iou)
    return m


def _confusion_image(m: np.ndarray, s: Sample, d_boxes: np.ndarray, d_labels: np.ndarray, iou: float) -> None:
    """Add one image's matched pairs, misses and false positives to ``m`` (see :func:`confusion_counts`)."""
    C = len(m) - 1
    gt_reg = ~s.ignore
    g_boxes, g_labels = s.boxes[gt_reg], s.labels[gt_reg]
    ious = iou_xywh(xywh(d_boxes), xywh(g_boxes), np.zeros(len(g_boxes), bool))
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
        ioa = iou_xywh(xywh(d_boxes[free]), xywh(s.boxes[s.ignore]), np.ones(int(s.ignore.sum()), bool))
        free = free[~(ioa >= iou).any(1)]
    for d in free:
        m[C, d_labels[d]] += 1
