"""COCO-protocol evaluation plus precision/recall at the best-F1 confidence.

:class:`COCOEvaluator` accumulates predictions and reports; the matching (IoU, COCOeval's per-image match,
the best-F1 point, the confusion matrix) is in :mod:`hmpe.engine.eval.matching`, the COCOeval run and its
summary in :mod:`hmpe.engine.eval.cocoeval`.

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
* **Small at the model's input** (``AP_small_input``, ``AP_medium_input``, ``AP_large_input``): COCO's
  size buckets (small: area <= 32^2, medium: 32^2..96^2, large: >= 96^2) are defined in native pixels, but
  the model sees each image resized to its input (a 1000-px image at 512 px: every area x 0.26), so
  COCO's AP_small can cover a handful of objects while many more are small where detection happens.
  Given ``input_scale`` (the preprocessing's per-image factors, :meth:`Preprocess.input_scale`), a
  second COCOeval runs on copies of the ground truth and the detections with every box scaled into
  input pixels (:func:`hmpe.engine.eval.cocoeval.scale_to_input`): the same matches (IoU does not change
  under the scaling), the buckets applied to the sizes the model saw. ``n_small``, ``n_medium``,
  ``n_large`` count the ground-truth objects (ignore boxes left out) per native bucket, ``n_*_input``
  per input bucket (COCOeval's inclusive bounds: an area of exactly 32^2 is in two buckets).
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

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmpe.data.types import Sample
from hmpe.engine.eval.cocoeval import (
    BACKENDS,
    COCO_STAT_NAMES,
    coco_ground_truth,
    coco_results,
    per_class_ap,
    run_cocoeval,
    scale_to_input,
    size_counts,
    summarize,
)
from hmpe.engine.eval.matching import best_f1_point, coco_match_image, confusion_counts, to_numpy

__all__ = ["COCOEvaluator", "coco_match_image", "best_f1_point", "COCO_STAT_NAMES", "SIZE_KEYS"]

_BUCKETS = ("small", "medium", "large")
#: The size figures beside COCO's: AP per bucket at the model's input, then the object count per bucket,
#: native and at the input (module docstring).
SIZE_KEYS: tuple[str, ...] = (
    *(f"AP_{b}_input" for b in _BUCKETS),
    *(f"n_{b}" for b in _BUCKETS),
    *(f"n_{b}_input" for b in _BUCKETS),
)
#: ``input_scale``: per image ``(width, height) -> (sx, sy)``, or one linear factor for every image
InputScale = Callable[[int, int], tuple[float, float]] | float


class COCOEvaluator:
    """Accumulates predictions over a split and scores them on the COCO protocol.

    Args:
        samples: the split's samples (ground truth in original-image pixels).
        class_names: C names; labels are 0..C-1.
        max_dets: detections per image kept by COCOeval (``maxDets = [1, 10, max_dets]``); use
            300+ for dense scenes where 100 would cap recall.
        backend: ``"faster"`` (faster-coco-eval, default) or ``"pycocotools"``.
        verbose: let COCOeval print its progress/summary (silenced by default).
        input_scale: how the model's input scaled each image, for the ``*_input`` figures (module
            docstring): ``(width, height) -> (sx, sy)`` (e.g. :meth:`Preprocess.input_scale`), or one
            factor for every image; None: those figures are left out (the native counts stay).

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
        input_scale: InputScale | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
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
        self.input_scale = input_scale
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
        ids = [int(i) for i in to_numpy(image_ids, np.int64).reshape(-1)]
        if len(ids) != len(predictions):
            raise ValueError(f"{len(ids)} image ids but {len(predictions)} predictions")
        for image_id, pred in zip(ids, predictions):
            if image_id not in self.samples:
                raise KeyError(f"image_id {image_id} is not in the evaluator's samples")
            boxes = to_numpy(pred["boxes"], np.float64).reshape(-1, 4)
            scores = to_numpy(pred["scores"], np.float64).reshape(-1)
            labels = to_numpy(pred["labels"], np.int64).reshape(-1)
            if not (len(boxes) == len(scores) == len(labels)):
                raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"image {image_id}: predicted label outside 0..{self.num_classes - 1}")
            if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
                raise ValueError(f"image {image_id}: non-finite box or score")
            self._preds[image_id] = {"boxes": boxes, "scores": scores, "labels": labels}
        self._result = None
        self._curves = None

    def set_input_scale(self, input_scale: InputScale | None) -> None:
        """Replace ``input_scale`` (e.g. sliced evaluation: the tile's scale, not the whole image's)."""
        self.input_scale = input_scale
        self._result = None

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
        return coco_ground_truth(self.samples, self.class_names)

    def coco_results(self) -> list[dict]:
        """Predictions as a COCO results list (xywh, category ids 1..C)."""
        return coco_results(self._preds)

    # ---------------------------------------------------------------- metrics

    def compute(self) -> dict[str, Any]:
        """Score the predictions. Returns floats (see the module docstring for definitions)::

            mAP50_95, mAP50, mAP75, AP_small, AP_medium, AP_large, AR1, AR10, AR, AR_small,
            AR_medium, AR_large, precision, recall, f1, conf, num_images, num_predictions,
            stats (the 12 COCO numbers), per_class_AP {name: {"AP50_95", "AP50"}} (NaN for a class
            without ground truth), per_class {name: {"P", "R", "F1", "instances", "images"}};
            n_small, n_medium, n_large (ints) and, with ``input_scale``, AP_small_input,
            AP_medium_input, AP_large_input, n_small_input, n_medium_input, n_large_input.
        """
        if self._result is not None:
            return copy.deepcopy(self._result)
        gt, dets = self.coco_ground_truth(), self.coco_results()
        precision, recall, params = run_cocoeval(gt, dets, self.max_dets, self.backend, self.verbose)
        stats = summarize(precision, recall, params)
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
        result.update({f"n_{b}": n for b, n in size_counts(gt, params).items()})
        if self.input_scale is not None:
            result.update(self._input_figures(gt, dets))
        ap_all = per_class_ap(precision, params, self.num_classes)
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

    def _input_figures(self, gt: dict, dets: list[dict]) -> dict[str, Any]:
        """AP and object count per size bucket with every box scaled into the model's input (module docstring)."""
        f = self.input_scale
        scales = {
            i: tuple(float(v) for v in (f(s.width, s.height) if callable(f) else (f, f)))
            for i, s in self.samples.items()
        }
        gt_in, dets_in = scale_to_input(gt, dets, scales)
        precision, recall, params = run_cocoeval(gt_in, dets_in, self.max_dets, self.backend, self.verbose)
        stats = dict(zip(COCO_STAT_NAMES, summarize(precision, recall, params)))
        out: dict[str, Any] = {f"AP_{b}_input": float(stats[f"AP_{b}"]) for b in _BUCKETS}
        out.update({f"n_{b}_input": n for b, n in size_counts(gt_in, params).items()})
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
        """(C+1) x (C+1) counts: rows = true class, columns = predicted class, index C = background
        (:func:`hmpe.engine.eval.matching.confusion_counts` says how detections are matched)."""
        return confusion_counts(self.samples, self._preds, self.num_classes, conf, iou, self.max_dets)

    # ---------------------------------------------------------------- reports

    def plot(self, out_dir: str | Path, conf: float | None = None) -> list[Path]:
        """Write ``pr_curve.png`` (IoU 0.5), ``f1_curve.png`` and ``confusion_matrix.png``.

        The confusion matrix is taken at ``conf`` (default: the best-F1 confidence, or 0.25 when
        there are no detections).
        """
        # imported here: matplotlib is a heavy import that evaluation without figures (the explorer,
        # benchmarks, sliced val) should not pay
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
        lines.append(self._size_line(r))
        return "\n".join(lines)

    @staticmethod
    def _size_line(r: dict) -> str:
        """Objects per size bucket, native and at the model's input, and the AP over each input bucket."""
        native = "/".join(str(r[f"n_{b}"]) for b in _BUCKETS)
        if "AP_small_input" not in r:
            return f"objects S/M/L={native} (native pixels)"
        at_input = "/".join(str(r[f"n_{b}_input"]) for b in _BUCKETS)
        ap = "/".join(f"{r[f'AP_{b}_input']:.3f}" for b in _BUCKETS)
        return f"objects S/M/L={native} native, {at_input} at the model input; AP_S/M/L at the input={ap}"
