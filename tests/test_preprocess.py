"""One preprocessing for every inference path: a model trained with letterboxing gets the same metrics from the
trainer's validation, ``hmpe val``, ``predict`` -> evaluator, and its ONNX file."""

import json
import math

import numpy as np
import pytest
import torch

from helpers import tiny_model_cfg, tiny_train_cfg
from hmpe.data.preprocess import Preprocess


def test_preprocess_matches_the_evaluation_dataset_and_maps_boxes_back():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 100, 3), dtype=np.uint8)
    lb, sq = Preprocess(64, keep_ratio=True), Preprocess(64)
    x = lb(img)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert float(x[:, 27:].abs().max()) == 0.0  # 40 x 100 -> 26 x 64 content, zero padding below
    assert not torch.equal(x, sq(img))
    assert lb.post_size(100, 40) == (100, 100) and sq.post_size(100, 40) == (100, 40)
    # a box on the input canvas maps back to original pixels
    assert torch.allclose(lb.to_original(torch.tensor([[0.0, 0.0, 64.0, 25.6]]), 100, 40),
                          torch.tensor([[0.0, 0.0, 100.0, 40.0]]))
    assert Preprocess.from_train_cfg({"imgsz": 96, "augment": {"keep_ratio": True, "pad_fill": 114}}) == \
        Preprocess(96, True, 114)
    assert Preprocess.from_train_cfg({"imgsz": 96, "augment": True}) == Preprocess(96)


@pytest.fixture(scope="module")
def letterbox_run(tmp_path_factory):
    """A tiny model trained one epoch with letterboxing on rectangular images written as a YOLO dataset."""
    from hmpe.data.tools import data_convert
    from hmpe.engine.train.trainer import Trainer

    tmp = tmp_path_factory.mktemp("letterbox")
    syn = tmp / "syn.yaml"
    syn.write_text("format: synthetic\nnum_train: 4\nnum_val: 4\nimgsz: [48, 96]\nseed: 1\nmin_size: 8\n"
                   "max_size: 20\nmax_objects: 3\nnegative_fraction: 0\noverfit: true\n"
                   "names: [circle, square, triangle, cross, ring]\n")
    data_convert(str(syn), "yolo", str(tmp / "yolo"), None, False, "copy")
    data = str(tmp / "yolo" / "data.yaml")
    cfg = tiny_train_cfg(tmp, data=data, epochs=1, batch=2, imgsz=64, warmup_iters=1, val_interval=1,
                         augment={"keep_ratio": True, "photometric": False, "zoom_out": False, "iou_crop": False,
                                  "hflip": False}, heatmaps_per_epoch=0)
    trainer = Trainer(cfg, tiny_model_cfg(num_denoising=0))
    with torch.no_grad():  # spread the boxes so that a wrong mapping cannot go unnoticed
        for p in trainer.model.decoder.dec_bbox_head.parameters():
            p.normal_(0, 0.1)
    if trainer.ema is not None:
        trainer.ema.module.load_state_dict(trainer.model.state_dict())
    metrics = trainer.fit()
    return trainer, metrics, data, tmp


KEYS = ("mAP50_95", "mAP50", "precision", "recall", "num_predictions")


def _same(a: dict, b: dict) -> None:
    for k in KEYS:
        assert math.isclose(float(a[k]), float(b[k]), rel_tol=1e-6, abs_tol=1e-9), (k, a[k], b[k])


def test_letterbox_model_scores_the_same_on_every_path(letterbox_run, monkeypatch, capsys):
    from hmpe.api import Detector
    from hmpe.cli import main
    from hmpe.engine.eval.evaluator import COCOEvaluator

    trainer, metrics, data, tmp = letterbox_run
    assert trainer.preprocess.keep_ratio and metrics["num_predictions"] > 0
    weights = trainer.weights_dir / "last.pt"
    monkeypatch.chdir(tmp)

    # hmpe val (CLI, in-process)
    assert main(["val", f"weights={weights}", "name=v", "workers=0", "device=cpu"]) == 0
    _same(metrics, json.loads((tmp / "runs" / "val" / "v" / "metrics.json").read_text()))

    # predict -> evaluator
    det = Detector(weights=str(weights), device="cpu")
    samples = trainer.val_set.samples
    preds = det.predict([s.path for s in samples], conf=0.0, save=False)
    ev = COCOEvaluator(samples, trainer.names, max_dets=trainer.cfg["max_dets"])
    ev.update([s.image_id for s in samples],
              [{"boxes": torch.from_numpy(p.boxes), "scores": torch.from_numpy(p.scores),
                "labels": torch.from_numpy(p.labels)} for p in preds])
    _same(metrics, ev.compute())

    # the ONNX file, fed by the same preprocessing, boxes mapped back by its inverse
    ort = pytest.importorskip("onnxruntime")
    from hmpe.data.images import load_image

    onnx_path = det.export(out=tmp / "m.onnx", check=False)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    pre = det.preprocess()
    ev = COCOEvaluator(samples, trainer.names, max_dets=trainer.cfg["max_dets"])
    for s in samples:
        im = load_image(s.path)
        boxes, scores, labels = sess.run(None, {"images": pre(im)[None].numpy()})
        b = pre.to_original(torch.from_numpy(boxes[0]), im.shape[1], im.shape[0])
        ev.update([s.image_id], [{"boxes": b, "scores": torch.from_numpy(scores[0]),
                                  "labels": torch.from_numpy(labels[0])}])
    onnx_metrics = ev.compute()
    for k in ("mAP50_95", "mAP50"):
        assert abs(onnx_metrics[k] - metrics[k]) < 1e-3, (k, onnx_metrics[k], metrics[k])

    # and a squashing preprocessing would have given other boxes: the letterbox is really in use
    sq = Preprocess(pre.imgsz)
    im = load_image(samples[0].path)
    with torch.no_grad():
        a = det._post(det._ensure_model()(pre(im)[None]), pre.post_sizes(torch.tensor([[im.shape[1], im.shape[0]]])))
        b = det._post(det._ensure_model()(sq(im)[None]), torch.tensor([[im.shape[1], im.shape[0]]]))
    assert not torch.allclose(a[0]["boxes"], b[0]["boxes"], atol=1.0)
