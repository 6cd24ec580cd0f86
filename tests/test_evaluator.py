"""COCOEvaluator against pycocotools run directly, hand-computed P/R/F1, confusion matrix, plots."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hmpe.data.preprocess import Preprocess
from hmpe.data.types import Sample
from hmpe.engine.eval.evaluator import COCO_STAT_NAMES, COCOEvaluator, coco_match_image
from hmpe.viz.plots import plot_results_csv, results_figure

NAMES = ["plane", "ship", "car"]


# ------------------------------------------------------------------ a fixed, varied test set


def _fixed_set():
    """Raw ground truth and predictions as plain lists (the single source for both code paths).

    Contains: negative images with and without predictions, images with objects but without
    predictions, ignore boxes (some hit by detections), three classes, small/medium/large boxes,
    one crowded image with more than 100 detections (so max_dets matters).
    """
    rng = np.random.default_rng(1234)
    gts: dict[int, list[list[float]]] = {}  # image_id -> [x1, y1, x2, y2, label, ignore]
    preds: dict[int, list[list[float]]] = {}  # image_id -> [x1, y1, x2, y2, score, label]
    sizes = {}
    for image_id in range(1, 25):
        w, h = (640, 480) if image_id % 2 else (800, 600)
        sizes[image_id] = (w, h)
        n = 0 if image_id in (3, 4, 11) else int(rng.integers(1, 9))
        if image_id == 7:
            n = 60  # crowded image
        side = rng.choice([6.0, 14.0, 24.0, 45.0, 70.0, 130.0], n) * rng.uniform(0.8, 1.25, (2, n))
        x1 = rng.uniform(0, w - 140, n)
        y1 = rng.uniform(0, h - 140, n)
        labels = rng.integers(0, 3, n)
        ignore = rng.random(n) < 0.12
        gts[image_id] = [
            [float(x1[i]), float(y1[i]), float(x1[i] + side[0, i]), float(y1[i] + side[1, i]), int(labels[i]), bool(ignore[i])]
            for i in range(n)
        ]
        if image_id in (5, 6, 12):  # images with objects but no predictions
            continue
        dets = []
        for x1_, y1_, x2_, y2_, lab, _ in gts[image_id]:
            for _ in range(int(rng.integers(0, 3))):
                jit = rng.normal(0, 0.08 * max(x2_ - x1_, 4), 4)
                b = [x1_ + jit[0], y1_ + jit[1], x2_ + jit[2], y2_ + jit[3]]
                b[2], b[3] = max(b[2], b[0] + 1), max(b[3], b[1] + 1)
                lab_ = lab if rng.random() < 0.85 else int(rng.integers(0, 3))
                dets.append(b + [float(rng.uniform(0.05, 1.0)), int(lab_)])
        n_fp = 150 if image_id == 7 else int(rng.integers(0, 6))
        for _ in range(n_fp):
            x, y, s = rng.uniform(0, w - 100), rng.uniform(0, h - 100), rng.uniform(5, 90)
            dets.append([x, y, x + s, y + s * rng.uniform(0.6, 1.5), float(rng.uniform(0.0, 0.7)), int(rng.integers(0, 3))])
        preds[image_id] = [[float(v) for v in d[:5]] + [int(d[5])] for d in dets]
    return sizes, gts, preds


def _samples(sizes, gts) -> list[Sample]:
    out = []
    for image_id, (w, h) in sizes.items():
        rows = gts[image_id]
        out.append(
            Sample(
                image_id=image_id,
                path=f"img{image_id}.jpg",
                width=w,
                height=h,
                boxes=np.array([r[:4] for r in rows], np.float64).reshape(-1, 4),
                labels=np.array([r[4] for r in rows], np.int64),
                ignore=np.array([r[5] for r in rows], bool),
            )
        )
    return out


def _evaluator(max_dets=100, backend="faster", torch_inputs=False) -> COCOEvaluator:
    sizes, gts, preds = _fixed_set()
    ev = COCOEvaluator(_samples(sizes, gts), NAMES, max_dets=max_dets, backend=backend)
    ids, batch = [], []
    for image_id, rows in preds.items():
        a = np.array(rows, np.float64).reshape(-1, 6)
        p = {"boxes": a[:, :4], "scores": a[:, 4], "labels": a[:, 5].astype(np.int64)}
        if torch_inputs:
            p = {k: torch.as_tensor(v) for k, v in p.items()}
        ids.append(image_id)
        batch.append(p)
    for i in range(0, len(ids), 5):  # several update calls, as a validation loop does
        ev.update(torch.tensor(ids[i : i + 5]) if torch_inputs else ids[i : i + 5], batch[i : i + 5])
    return ev


def _pycocotools_reference(max_dets: int, scales: dict | None = None) -> COCOeval:
    """pycocotools on hand-built json (1-based category ids, float32 boxes as the Sample stores them);
    ``scales``: ``{image_id: (sx, sy)}`` by which every box (ground truth and detections) is multiplied."""
    sizes, gts, preds = _fixed_set()
    sx_sy = lambda image_id: scales[image_id] if scales else (1.0, 1.0)  # noqa: E731
    images = [{"id": i, "width": w, "height": h, "file_name": f"img{i}.jpg"} for i, (w, h) in sizes.items()]
    anns = []
    for image_id, rows in gts.items():
        for x1, y1, x2, y2, lab, ign in rows:
            # Sample stores float32 boxes; replicate that rounding in the reference json
            x1, y1, x2, y2 = (float(np.float32(v)) for v in (x1, y1, x2, y2))
            sx, sy = sx_sy(image_id)
            x1, y1, x2, y2 = x1 * sx, y1 * sy, x2 * sx, y2 * sy
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": lab + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(ign),
                }
            )
    gt = {"images": images, "annotations": anns, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]}
    res = [
        {"image_id": image_id, "category_id": lab + 1, "score": s,
         "bbox": [x1 * sx_sy(image_id)[0], y1 * sx_sy(image_id)[1], (x2 - x1) * sx_sy(image_id)[0],
                  (y2 - y1) * sx_sy(image_id)[1]]}
        for image_id, rows in preds.items()
        for x1, y1, x2, y2, s, lab in rows
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(res)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _reference_stats(ref: COCOeval) -> np.ndarray:
    stats = np.array(ref.stats, dtype=float)
    if ref.params.maxDets[-1] != 100:
        # pycocotools' summarize() uses a literal maxDets=100 for stats[0] (-1 otherwise); the
        # reference value is the same mean taken at the configured max_dets
        s = ref.eval["precision"][:, :, :, 0, -1]
        assert stats[0] == -1
        stats[0] = np.mean(s[s > -1])
    return stats


# ------------------------------------------------------------------ COCO figures


@pytest.mark.parametrize("max_dets", [100, 300, 20])
@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_coco_stats_match_pycocotools(max_dets, backend):
    ref = _reference_stats(_pycocotools_reference(max_dets))
    result = _evaluator(max_dets, backend).compute()
    assert np.allclose(result["stats"], ref, atol=1e-6, rtol=0), (result["stats"], ref.tolist())
    for i, name in enumerate(COCO_STAT_NAMES):
        assert result[name] == pytest.approx(ref[i], abs=1e-6), name
    # the fixture is meant to exercise every figure: none is trivially 0 or undefined
    assert all(0 < v < 1 for v in ref), ref


@pytest.mark.parametrize("keep_ratio", [False, True])
@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_ap_small_input_matches_pycocotools_on_rescaled_ground_truth(keep_ratio, backend):
    """AP per size bucket at the model's input = pycocotools' on ground truth and detections whose boxes are
    multiplied by the preprocessing's scale (resize: per-axis factors; letterbox: one); the object counts per
    bucket are the numbers of (non-ignore) boxes in it, native and scaled."""
    pre = Preprocess(256, keep_ratio=keep_ratio)
    sizes, gts, _ = _fixed_set()
    scales = {i: pre.input_scale(w, h) for i, (w, h) in sizes.items()}
    ev = _evaluator(backend=backend)
    ev.set_input_scale(pre.input_scale)
    result = ev.compute()
    ref = _pycocotools_reference(100, scales).stats
    for i, name in ((3, "AP_small_input"), (4, "AP_medium_input"), (5, "AP_large_input")):
        assert result[name] == pytest.approx(ref[i], abs=1e-6), name

    def counts(scaled: bool) -> list[int]:
        areas = np.array([(np.float32(x2) - np.float32(x1)) * (np.float32(y2) - np.float32(y1))
                          * (np.prod(scales[i]) if scaled else 1.0)
                          for i, rows in gts.items() for x1, y1, x2, y2, _, ign in rows if not ign])
        return [int((areas <= 32**2).sum()), int(((areas >= 32**2) & (areas <= 96**2)).sum()),
                int((areas >= 96**2).sum())]

    assert [result[f"n_{b}"] for b in ("small", "medium", "large")] == counts(False)
    assert [result[f"n_{b}_input"] for b in ("small", "medium", "large")] == counts(True)
    assert result["n_small_input"] > result["n_small"] and result["AP_small_input"] != result["AP_small"]
    assert "AP_S/M/L at the input" in ev.summary_table()
    assert "AP_small_input" not in _evaluator(backend=backend).compute()  # no input_scale: native figures only


def test_results_csv_row_has_the_size_figures():
    """The trainer's results.csv row carries AP_small_input and the object counts per bucket (as integers)."""
    from hmpe.engine.train.run_log import epoch_row

    ev = _evaluator()
    ev.set_input_scale(Preprocess(256).input_scale)
    m = ev.compute()
    row = epoch_row(0, 1.0, {"loss": 1.0}, m)
    assert row["val/AP_small_input"] == round(m["AP_small_input"], 6)
    assert row["val/n_small"] == m["n_small"] and isinstance(row["val/n_small_input"], int)
    assert {f"val/n_{b}{s}" for b in ("small", "medium", "large") for s in ("", "_input")} <= set(row)


def test_max_dets_changes_the_result():
    r20, r300 = _evaluator(20).compute(), _evaluator(300).compute()
    assert r300["AR"] >= r20["AR"]
    assert r300["stats"] != r20["stats"]


def test_per_class_ap_matches_pycocotools():
    ref = _pycocotools_reference(100)
    prec = ref.eval["precision"]  # [T, R, K, A, M]
    result = _evaluator(100).compute()
    for k, name in enumerate(NAMES):
        s = prec[:, :, k, 0, -1]
        assert result["per_class_AP"][name]["AP50_95"] == pytest.approx(np.mean(s[s > -1]), abs=1e-6)
        assert result["per_class_AP"][name]["AP50"] == pytest.approx(np.mean(s[0][s[0] > -1]), abs=1e-6)


def test_torch_inputs_equal_numpy_inputs():
    assert _evaluator(torch_inputs=True).compute()["stats"] == _evaluator().compute()["stats"]


def test_matching_agrees_with_pycocotools_evalimgs():
    """Our IoU-0.5 matching (used for P/R) makes COCOeval's decisions, ignore boxes included."""
    ref = _pycocotools_reference(100)
    sizes, gts, preds = _fixed_set()
    samples = {s.image_id: s for s in _samples(sizes, gts)}
    checked = 0
    for e in ref.evalImgs:
        if e is None or e["aRng"] != [0, 1e10]:
            continue
        image_id, cat = e["image_id"], e["category_id"] - 1
        s = samples[image_id]
        rows = np.array(preds.get(image_id, []), np.float64).reshape(-1, 6)
        d = rows[:, 5] == cat
        g = s.labels == cat
        order, tp, ignored = coco_match_image(rows[d, :4], rows[d, 4], s.boxes[g], s.ignore[g], 0.5, 100)
        assert np.array_equal(ignored, np.asarray(e["dtIgnore"][0], bool))
        assert np.array_equal(tp, (np.asarray(e["dtMatches"][0]) > 0) & ~np.asarray(e["dtIgnore"][0], bool))
        checked += len(order)
    assert checked > 100


# ------------------------------------------------------------------ edge cases


def test_zero_predictions_gives_zeros():
    sizes, gts, _ = _fixed_set()
    for backend in ("faster", "pycocotools"):
        ev = COCOEvaluator(_samples(sizes, gts), NAMES, backend=backend)
        r = ev.compute()
        for name in COCO_STAT_NAMES + ("precision", "recall", "f1", "conf"):
            assert r[name] == 0.0, (backend, name)
        assert ev.confusion_matrix()[:-1, -1].sum() == sum(int((~s.ignore).sum()) for s in ev.samples.values())


def test_no_ground_truth_at_all():
    samples = [Sample(1, None, 100, 100), Sample(2, None, 100, 100)]
    ev = COCOEvaluator(samples, NAMES)
    ev.update([1], [{"boxes": np.array([[1.0, 1, 20, 20]]), "scores": np.array([0.9]), "labels": np.array([0])}])
    r = ev.compute()
    assert r["mAP50"] == -1.0  # COCO: undefined without ground truth
    assert r["precision"] == r["recall"] == r["f1"] == 0.0
    assert ev.confusion_matrix()[-1, 0] == 1


def test_update_validation():
    ev = COCOEvaluator([Sample(1, None, 10, 10)], NAMES)
    good = {"boxes": np.zeros((1, 4)), "scores": np.ones(1), "labels": np.zeros(1, np.int64)}
    with pytest.raises(KeyError, match="99"):
        ev.update([99], [good])
    with pytest.raises(ValueError, match="label"):
        ev.update([1], [{**good, "labels": np.array([3])}])
    with pytest.raises(ValueError):
        ev.update([1, 1], [good])
    with pytest.raises(ValueError):
        COCOEvaluator([Sample(1, None, 10, 10)], NAMES, backend="nope")


def test_update_twice_replaces():
    ev = _evaluator()
    before = ev.compute()["stats"]
    sizes, gts, preds = _fixed_set()
    a = np.array(preds[1], np.float64)
    ev.update([1], [{"boxes": a[:, :4], "scores": a[:, 4], "labels": a[:, 5].astype(int)}])
    assert ev.compute()["stats"] == before


# ------------------------------------------------------------------ P/R at best F1, by hand


def test_precision_recall_at_best_f1_hand_computed():
    """Two classes with ground truth, one without; an ignore box hit by the top detection.

    class 0 (plane), image 1: gts A, B; ignore box I. detections: .95 on I (ignored),
        .90 on A (TP), .80 FP, .70 on B (TP), .60 FP.
    class 1 (ship), image 2: gt S. detections: .85 on S (TP), .75 FP; image 3 (negative): .65 FP.
    class 2 (car): no ground truth; one .99 detection (left out of the class means).

    Per threshold t (class-0 P/R/F1 | class-1 P/R/F1 | mean F1):
      .90: 1,  .5, 2/3 | 1 (no det >= t), 0, 0 | 1/3
      .85: 1,  .5, 2/3 | 1, 1, 1                | 5/6   <- best
      .80: .5, .5, .5  | 1, 1, 1                | 3/4
      .75: .5, .5, .5  | .5, 1, 2/3             | 7/12
      .70: 2/3, 1, .8  | .5, 1, 2/3             | 11/15
      .65: 2/3, 1, .8  | 1/3, 1, .5             | .65
      .60: .5, 1, 2/3  | 1/3, 1, .5             | 7/12
    So conf = .85, P = (1 + 1)/2 = 1, R = (.5 + 1)/2 = .75, F1 = 5/6. Had the detection on the
    ignore box counted as a false positive, class 0 at .85 would be P = .5 and the answer differ.
    """
    A, B, I, S = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 20, 20]
    samples = [
        Sample(1, None, 200, 200, [A, B, I], [0, 0, 0], [False, False, True]),
        Sample(2, None, 200, 200, [S], [1], [False]),
        Sample(3, None, 200, 200),
    ]
    ev = COCOEvaluator(samples, NAMES)
    ev.update(
        [1, 2, 3],
        [
            {
                "boxes": np.array([I, A, [100, 100, 110, 110], B, [150, 150, 160, 160]], float),
                "scores": np.array([0.95, 0.9, 0.8, 0.7, 0.6]),
                "labels": np.array([0, 0, 0, 0, 0]),
            },
            {
                "boxes": np.array([[0.5, 0.5, 20, 20], [100, 100, 120, 120], [60, 60, 70, 70]], float),
                "scores": np.array([0.85, 0.75, 0.99]),
                "labels": np.array([1, 1, 2]),
            },
            {"boxes": np.array([[5.0, 5, 15, 15]]), "scores": np.array([0.65]), "labels": np.array([1])},
        ],
    )
    r = ev.compute()
    assert r["conf"] == pytest.approx(0.85, abs=1e-12)
    assert r["precision"] == pytest.approx(1.0, abs=1e-12)
    assert r["recall"] == pytest.approx(0.75, abs=1e-12)
    assert r["f1"] == pytest.approx(5 / 6, abs=1e-12)
    assert r["per_class"]["plane"]["P"] == pytest.approx(1.0)
    assert r["per_class"]["plane"]["R"] == pytest.approx(0.5)
    assert r["per_class"]["ship"]["R"] == pytest.approx(1.0)
    assert np.isnan(r["per_class"]["car"]["P"])
    assert np.isnan(r["per_class_AP"]["car"]["AP50"])
    table = ev.summary_table()
    assert "plane" in table and "ship" in table and "0.750" in table


# ------------------------------------------------------------------ confusion matrix


def test_confusion_matrix_tiny_case():
    G1, G2, G3, G4 = [0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]
    samples = [
        Sample(1, None, 200, 200, [G1, G2, G3, G4], [0, 1, 0, 1], [False, False, False, True]),
        Sample(2, None, 200, 200),
    ]
    ev = COCOEvaluator(samples, ["a", "b"])
    ev.update(
        [1, 2],
        [
            {
                "boxes": np.array([G1, [1, 0, 11, 10], G2, [100, 100, 110, 110], G1, G4], float),
                "scores": np.array([0.9, 0.85, 0.8, 0.7, 0.1, 0.6]),
                "labels": np.array([0, 0, 0, 1, 0, 1]),
            },
            {"boxes": np.array([[5.0, 5, 25, 25]]), "scores": np.array([0.5]), "labels": np.array([0])},
        ],
    )
    m = ev.confusion_matrix(conf=0.25, iou=0.5)
    # rows = true (a, b, background), cols = predicted (a, b, background)
    expected = np.array(
        [
            [1, 0, 1],  # a: G1 found as a; G3 missed
            [1, 0, 0],  # b: G2 predicted as a
            [2, 1, 0],  # background: duplicate on G1 + image-2 detection (a), stray b
        ]
    )
    assert np.array_equal(m, expected), m
    # a lower threshold lets the .1 detection in: one more false positive of class a
    assert ev.confusion_matrix(conf=0.05)[2, 0] == 3


# ------------------------------------------------------------------ plots


def test_plots_are_written(tmp_path):
    ev = _evaluator()
    paths = ev.plot(tmp_path)
    for name in ("pr_curve.png", "confusion_matrix.png", "f1_curve.png"):
        p = tmp_path / name
        assert p in paths and p.stat().st_size > 1000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = COCOEvaluator(ev.samples.values(), NAMES)
    empty.plot(tmp_path / "empty")
    assert (tmp_path / "empty" / "pr_curve.png").exists()


def test_plot_results_csv(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(
        "epoch, train/loss, val/mAP50, lr\n0, 2.5, 0.1, 1e-4\n1, 2.0, 0.2, 1e-4\n2, 1.7, , 5e-5\n"
    )
    out = plot_results_csv(csv_path, tmp_path / "results.png")
    assert out.exists() and out.stat().st_size > 1000


def test_results_figure_skips_undefined_metrics_and_uses_whole_epochs(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("epoch,val/mAP50,val/AP_large,val/n_small\n1,0.1,-1,26\n2,0.2,-1,26\n3,0.25,-1,26\n")
    fig = results_figure(csv_path)
    axes = [ax for ax in fig.axes if ax.get_title()]
    # AP_large is COCO's -1 "undefined" throughout; n_small a constant count
    assert [ax.get_title() for ax in axes] == ["val/mAP50"]
    fig.canvas.draw()
    ticks = [t for t in axes[0].get_xticks() if axes[0].get_xlim()[0] <= t <= axes[0].get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
