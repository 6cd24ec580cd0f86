"""hmpe inside SAHI (:mod:`hmpe.integrations.sahi`): the adapter's contract, and SAHI's slicer against hmpe's.

Why the two slicers can differ, and where they cannot:

* Tile grid. Both lay ``slice`` windows with a stride and move the last one back onto the border, but SAHI's
  stride is ``slice - int(overlap * slice)`` and hmpe's ``round(slice * (1 - overlap))``: they differ by one pixel
  when ``slice * overlap`` has a fractional part above 0.5 (e.g. slice 64 or 128 at overlap 0.2; at exactly 0.5
  as Python's round-half-to-even falls). Here
  ``slice * overlap`` is an integer (64 x 0.25), so the grids coincide (asserted).
* Tile content. A full-size tile is the same pixels in both, through the same preprocessing (hmpe's model input,
  one forward pass per batch of tiles). A tile shorter than ``slice`` (an image smaller than the slice) is
  zero-padded to ``slice x slice`` by hmpe but handed over as it is by SAHI; the test image has none.
* Merge. SAHI runs its ``postprocess_type`` only (here ``NMS`` with ``IOU`` at hmpe's ``merge_iou`` 0.5, and
  ``perform_standard_pred=False``: no whole-image pass, as hmpe's ``full_image=False``). hmpe first resolves
  border fragments (:func:`hmpe.engine.eval.slicing.resolve_fragments`): a detection touching an inner tile side is
  dropped when another tile saw the object whole, or fused with its partner fragments; then the same class-wise
  NMS (SAHI's CPU NMS suppresses at IoU >= the threshold, torchvision's at IoU >: only exact ties could
  differ). With that step switched off the two agree detection for detection, boxes within ``BOX_TOL`` px and
  scores within ``SCORE_TOL`` (float rounding: SAHI's forward passes batch other tiles together). With it on
  (``Detector.predict``, the default), every difference must be such a border fragment.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_data, tiny_model_cfg, tiny_train_cfg

sahi = pytest.importorskip("sahi")

SLICE, OVERLAP, MERGE_IOU, CONF = 64, 0.25, 0.5, 0.1
SIDE = 128  # the mosaic's width and height
BOX_TOL, SCORE_TOL = 1e-3, 1e-5  # px, score: the tolerance of the comparisons below
EDGE_MARGIN, MERGE_IOS = 0.015, 0.6  # hmpe's sliced_predict defaults (the fragment test uses them)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A briefly trained tiny detector (64 px synthetic images) and a 128 x 128 mosaic of its four training
    images: its objects are detected with a spread of scores, and some straddle the tile sides."""
    from hmpe.data.dataset import build_dataset
    from hmpe.engine.train.trainer import Trainer

    tmp = tmp_path_factory.mktemp("sahi")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core machine: see tests/test_heatmap_integration.py
    try:
        trainer = Trainer(tiny_train_cfg(tmp, epochs=40, imgsz=64, data=tiny_data(imgsz=64)), tiny_model_cfg())
        trainer.fit()
    finally:
        torch.set_num_threads(n)
    ds = build_dataset(tiny_data(imgsz=64), "train")
    t = [np.asarray(ds.image_loader(s), dtype=np.uint8) for s in ds.samples]
    image = np.concatenate([np.concatenate(t[:2], 1), np.concatenate(t[2:], 1)], 0)
    path = tmp / "mosaic.png"
    Image.fromarray(image).save(path)
    return trainer.weights_dir / "last.pt", path, image


def _sahi_sliced(detector, image):
    from sahi.predict import get_sliced_prediction

    from hmpe.integrations.sahi import HmpeDetectionModel

    model = HmpeDetectionModel(model=detector, confidence_threshold=CONF, device="cpu")
    result = get_sliced_prediction(image, model, slice_height=SLICE, slice_width=SLICE,
                                   overlap_height_ratio=OVERLAP, overlap_width_ratio=OVERLAP,
                                   perform_standard_pred=False, postprocess_type="NMS",
                                   postprocess_match_metric="IOU", postprocess_match_threshold=MERGE_IOU, verbose=0)
    return _arrays(result.object_prediction_list)


def _arrays(preds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.array([p.bbox.to_xyxy() for p in preds], dtype=np.float64).reshape(-1, 4)
    return boxes, np.array([p.score.value for p in preds]), np.array([p.category.id for p in preds], dtype=int)


def _matches(a, b) -> np.ndarray:
    """``[N,M]`` bool: detection i of ``a`` and j of ``b`` (each ``(boxes, scores, labels)``) are the same one."""
    close = np.abs(a[0][:, None, :] - b[0][None, :, :]).max(-1) <= BOX_TOL
    return close & (np.abs(a[1][:, None] - b[1][None, :]) <= SCORE_TOL) & (a[2][:, None] == b[2][None, :])


def test_tile_grids_coincide_here_and_differ_by_stride_rounding():
    from sahi.slicing import get_slice_bboxes

    from hmpe.engine.eval.slicing import tile_grid

    for w, h in ((128, 128), (200, 150), (64, 300)):
        assert [tuple(b) for b in get_slice_bboxes(h, w, SLICE, SLICE, False, OVERLAP, OVERLAP)] == \
            tile_grid(w, h, SLICE, OVERLAP)
    # 64 x 0.2 = 12.8: SAHI strides by 64 - 12 = 52, hmpe by round(51.2) = 51 (the module doc)
    assert get_slice_bboxes(64, 300, 64, 64, False, 0.2, 0.2)[1][0] == 52 and tile_grid(300, 64, 64, 0.2)[1][0] == 51


def test_sahi_matches_hmpe_slicer_without_the_fragment_step(scene):
    """hmpe's slicer with its fragment step off (``merge_ios`` above 1: no intersection over the smaller box
    reaches it) and SAHI's NMS give the same detections, one to one."""
    from hmpe.api import Detector
    from hmpe.engine.eval.slicing import model_predict_fn, sliced_predict

    weights, _, image = scene
    det = Detector(weights=str(weights), device="cpu")
    pre = det.preprocess()
    fn = model_predict_fn(det._ensure_model(), det._post, det.device, pre.imgsz)
    ours = tuple(t.numpy().astype(np.float64) for t in
                 sliced_predict(fn, image, SLICE, pre, OVERLAP, 4, CONF, "nms", MERGE_IOU, merge_ios=1.01))
    theirs = _sahi_sliced(det, image)
    assert 5 <= len(ours[1]) <= 200, "the scene should keep a manageable, non-empty set at this conf"
    m = _matches(ours, theirs)
    assert len(ours[1]) == len(theirs[1]) and m.any(1).all() and m.any(0).all()


def _fragment_of(box, label, other) -> bool:
    """``box`` touches an inner side of a tile that holds it, and lies (IoS >= MERGE_IOS) on a detection of
    ``other`` of the same class: what hmpe's fragment step drops, or fuses into a union."""
    from hmpe.engine.eval.slicing import box_ios, cut_flags, tile_grid

    h = w = SIDE
    b = torch.tensor(box, dtype=torch.float32)[None]
    cut = any(bool(cut_flags(b, t, w, h, EDGE_MARGIN * SLICE)[0]) for t in tile_grid(w, h, SLICE, OVERLAP)
              if t[0] <= box[0] and t[1] <= box[1] and box[2] <= t[2] and box[3] <= t[3])
    same = other[2] == label
    if not cut or not same.any():
        return False
    return bool((box_ios(b, torch.tensor(other[0][same], dtype=torch.float32)) >= MERGE_IOS).any())


def test_sahi_vs_detector_predict_differ_only_by_border_fragments(scene):
    from hmpe.api import Detector

    weights, path, image = scene
    det = Detector(weights=str(weights), device="cpu")
    (p,) = det.predict(path, conf=CONF, slice=SLICE, overlap=OVERLAP, merge="nms", merge_iou=MERGE_IOU, batch=4,
                       save=False)
    ours = (p.boxes.astype(np.float64), p.scores.astype(np.float64), p.labels.astype(int))
    theirs = _sahi_sliced(det, image)
    m = _matches(ours, theirs)
    assert m.any(1).sum() >= len(ours[1]) // 2 > 0
    for i in np.flatnonzero(~m.any(1)):  # a union of fragments SAHI kept apart
        assert any(_fragment_of(theirs[0][j], ours[2][i], tuple(x[i:i + 1] for x in ours))
                   for j in range(len(theirs[1]))), f"hmpe detection {i} unexplained"
    for j in np.flatnonzero(~m.any(0)):  # a fragment hmpe dropped or fused
        assert _fragment_of(theirs[0][j], theirs[2][j], ours), f"SAHI detection {j} is not a border fragment"


def test_adapter_contract_and_whole_image_prediction(scene, tmp_path):
    from sahi.predict import get_prediction

    from hmpe.api import Detector
    from hmpe.integrations.sahi import HmpeDetectionModel

    weights, _, mosaic = scene
    # one training image at the model's own size: the whole 128-px mosaic would be shrunk to 64 px, where the
    # objects are half the size the model learned and it may find none above CONF (it found none on an AVX2 CPU)
    image = np.ascontiguousarray(mosaic[:SLICE, :SLICE])
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    model = HmpeDetectionModel(model_path=str(weights), confidence_threshold=CONF, device="cpu")
    names = Detector(weights=str(weights), device="cpu").names
    assert model.category_mapping == {str(i): n for i, n in enumerate(names)} and model.num_categories == len(names)
    assert model.has_mask is False and model.category_names == names
    theirs = _arrays(get_prediction(image, model).object_prediction_list)
    (p,) = model.model.predict(path, conf=CONF, max_det=0, save=False)  # the whole image, no slicing
    boxes = p.boxes.astype(np.float64)
    boxes = boxes.clip(0, SLICE)  # SAHI clips to the image
    ours = (boxes, p.scores.astype(np.float64), p.labels.astype(int))
    m = _matches(ours, theirs)
    assert len(ours[1]) == len(theirs[1]) > 0 and m.any(1).all() and m.any(0).all()
    with pytest.raises(TypeError, match="hmpe.api.Detector"):
        HmpeDetectionModel(model=object(), device="cpu")
    with pytest.raises(ValueError, match="model_path"):
        HmpeDetectionModel(device="cpu")


def test_missing_sahi_is_one_line_naming_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "sahi" or m.startswith("sahi.")]:
        monkeypatch.setitem(sys.modules, name, None)  # every submodule too: a cached one would still import
    monkeypatch.setitem(sys.modules, "sahi", None)
    monkeypatch.delitem(sys.modules, "hmpe.integrations.sahi", raising=False)
    with pytest.raises(ImportError) as err:
        importlib.import_module("hmpe.integrations.sahi")
    msg = str(err.value)
    assert "\n" not in msg and 'pip install "hmpe[sahi]"' in msg
