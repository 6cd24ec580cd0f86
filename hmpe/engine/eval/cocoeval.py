"""COCOeval as the evaluator runs it: the ground-truth and results dicts built from samples and
predictions, the faster-coco-eval / pycocotools backends, and the 12 summary numbers (definitions in
:mod:`hmpe.engine.eval.evaluator`).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from hmpe.data.types import Sample
from hmpe.engine.eval.matching import xywh

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

#: COCOeval implementations: faster-coco-eval (default) and pycocotools.
BACKENDS = ("faster", "pycocotools")


def run_cocoeval(
    gt: dict, results: list[dict], max_dets: int, backend: str, verbose: bool
) -> tuple[np.ndarray, np.ndarray, Any]:
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


def summarize(precision: np.ndarray, recall: np.ndarray, params: Any) -> np.ndarray:
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


def coco_ground_truth(samples: Mapping[int, Sample], class_names: list[str]) -> dict:
    """The COCO ground-truth dict built from ``{image_id: sample}`` (ids 1..C, ignore -> iscrowd=1)."""
    images, annotations = [], []
    for image_id, s in samples.items():
        images.append({"id": image_id, "width": int(s.width), "height": int(s.height), "file_name": str(s.path or image_id)})
        for box, label, ign in zip(xywh(s.boxes), s.labels, s.ignore):
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
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results(predictions: Mapping[int, dict[str, np.ndarray]]) -> list[dict]:
    """``{image_id: {boxes, scores, labels}}`` as a COCO results list (xywh, category ids 1..C)."""
    out = []
    for image_id, p in predictions.items():
        for box, score, label in zip(xywh(p["boxes"]), p["scores"], p["labels"]):
            out.append(
                {"image_id": image_id, "category_id": int(label) + 1, "bbox": [float(v) for v in box], "score": float(score)}
            )
    return out


def size_counts(gt: dict, params: Any) -> dict[str, int]:
    """Ground-truth objects per COCO area range, ``{"small": n, "medium": n, "large": n}``: boxes that count as
    ground truth (not ``iscrowd``), bounds inclusive as COCOeval applies them (an object of exactly 32 x 32
    counts as small and as medium)."""
    areas = np.array([a["area"] for a in gt["annotations"] if not a["iscrowd"]], np.float64)
    return {
        label: int(((areas >= lo) & (areas <= hi)).sum())
        for label, (lo, hi) in zip(params.areaRngLbl, params.areaRng)
        if label != "all"
    }


def scale_to_input(gt: dict, results: list[dict], scales: Mapping[int, tuple[float, float]]) -> tuple[dict, list[dict]]:
    """Copies of ``gt`` and ``results`` with every box in pixels of the model's input: image ``i``'s x and
    width times ``scales[i][0]``, y and height times ``scales[i][1]``, areas ``w * h`` of the scaled boxes.

    IoU is unchanged by scaling both boxes' axes, so COCOeval matches exactly as on the native boxes; only
    the area ranges (small < 32^2 px ...) now apply to the sizes the model saw."""

    def box(b: list[float], s: tuple[float, float]) -> list[float]:
        return [b[0] * s[0], b[1] * s[1], b[2] * s[0], b[3] * s[1]]

    annotations = []
    for a in gt["annotations"]:
        b = box(a["bbox"], scales[a["image_id"]])
        annotations.append({**a, "bbox": b, "area": b[2] * b[3]})
    scaled = [{**r, "bbox": box(r["bbox"], scales[r["image_id"]])} for r in results]
    return {**gt, "annotations": annotations}, scaled  # image sizes: unused by bbox evaluation


def per_class_ap(precision: np.ndarray, params: Any, num_classes: int) -> list[tuple[float, float]]:
    """(AP50-95, AP50) per class from COCO's precision array (NaN: class has no ground truth)."""
    iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    out = []
    for k in range(num_classes):
        s = precision[:, :, k, 0, -1]
        s50 = s[iou50]
        a = float(np.mean(s[s > -1])) if (s > -1).any() else math.nan
        b = float(np.mean(s50[s50 > -1])) if (s50 > -1).any() else math.nan
        out.append((a, b))
    return out
