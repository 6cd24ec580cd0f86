"""``hmpe predict`` / ``hmpe val`` with ``weights=`` an exported file (:mod:`hmpe.engine.deploy.runtime`)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_data, tiny_model_cfg, tiny_train_cfg

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

IMGSZ = 64


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model trained until it finds the objects of its 4 synthetic images, its ONNX and OpenVINO exports,
    and those images as files."""
    from hmpe.data.dataset import build_dataset
    from hmpe.engine.deploy.export import export_onnx, export_openvino
    from hmpe.engine.train.trainer import Trainer

    tmp = tmp_path_factory.mktemp("exported")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch 4 at 64 px: a second thread gains nothing on a loaded machine
    try:
        Trainer(tiny_train_cfg(tmp, data=tiny_data(imgsz=IMGSZ), imgsz=IMGSZ, epochs=60),
                tiny_model_cfg(num_layers=1)).fit()
    finally:
        torch.set_num_threads(threads)
    pt = tmp / "runs" / "train" / "t" / "weights" / "last.pt"
    onnx_path = export_onnx(pt, out=tmp / "tiny.onnx", verbose=False)
    xml = export_openvino(pt, out=tmp / "tiny_openvino" / "tiny.xml", check=False, verbose=False)
    ds = build_dataset(tiny_data(imgsz=IMGSZ), "val")
    (tmp / "images").mkdir()
    for i, s in enumerate(ds.samples):
        Image.fromarray(np.asarray(ds.image_loader(s), dtype=np.uint8)).save(tmp / "images" / f"{i}.png")
    return {"pt": pt, "onnx": onnx_path, "xml": xml, "images": tmp / "images", "tmp": tmp}


def _arrays(preds) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.stack([getattr(p, k) for p in preds])) for k in ("boxes", "scores", "labels"))


@pytest.mark.parametrize("kind", ["onnx", "xml"])
def test_predict_with_an_exported_file_gives_the_checkpoints_detections(files, kind):
    from hmpe.api import Detector
    from hmpe.engine.deploy.export import compare_detections

    opts = dict(conf=0.0, max_det=0, save=False, batch=3)  # every detection of the graph, batch 3 then 1
    ref = Detector(weights=str(files["pt"]), device="cpu").predict(files["images"], **opts)
    det = Detector(files[kind])  # a path passed as the model is taken as the weights, as a .pt is
    got = det.predict(files["images"], **opts)
    assert det.names == Detector(weights=str(files["pt"])).names and [p.path for p in got] == [p.path for p in ref]
    assert all(len(p.scores) == len(q.scores) > 0 for p, q in zip(got, ref))
    err = compare_detections(_arrays(ref), _arrays(got), (IMGSZ, IMGSZ), top=20)
    assert err["unmatched"] == 0 and err["box"] < 1e-3 and err["score"] < 1e-3, err
    assert any((p.scores > 0.5).any() for p in ref), "the fixture model did not train"


def test_val_with_an_exported_file_scores_what_the_int8_check_scores(files, tmp_path):
    from hmpe.api import Detector
    from hmpe.data.formats import load_data_config
    from hmpe.data.preprocess import Preprocess
    from hmpe.engine.deploy.quantize import SplitImages, runtime_metrics

    data = tiny_data(imgsz=IMGSZ)
    ref = Detector(weights=str(files["pt"])).val(data=data, project=str(tmp_path), plots=False)
    got = Detector(weights=str(files["onnx"])).val(data=data, project=str(tmp_path), plots=False)
    pre = Preprocess(IMGSZ)
    direct = runtime_metrics(files["onnx"], "onnxruntime", SplitImages(load_data_config(data), "val", pre), pre)
    assert ref["mAP50"] >= 0.5
    for key in ("mAP50", "mAP50_95", "AP_small", "AP_small_input"):
        assert got[key] == pytest.approx(direct[key], abs=1e-6) and got[key] == pytest.approx(ref[key], abs=0.02), key
    assert json.loads((tmp_path / "val" / "exp2" / "metrics.json").read_text())["mAP50"] == got["mAP50"]


def test_what_an_exported_file_cannot_do_is_one_line_each(files, tmp_path, capsys, monkeypatch):
    import onnx

    from hmpe.cli import main

    monkeypatch.chdir(tmp_path)
    w = f"weights={files['onnx']}"
    expected = {("heatmap", str(files["images"]), w): "heatmap needs the PyTorch checkpoint",
                ("export", w, "format=onnx"): "export needs the PyTorch checkpoint",
                ("val", w): "an exported file records no dataset; pass data=DATA",
                ("predict", str(files["images"]), w, "imgsz=96"): "was exported at 64 px; export again with imgsz=96",
                ("predict", str(files["images"]), w, "device=cuda"): "run on the CPU by its runtime"}
    for argv, message in expected.items():
        assert main(list(argv)) != 0, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    bare = onnx.load(str(files["onnx"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    assert main(["predict", str(files["images"]), f"weights={tmp_path / 'bare.onnx'}"]) != 0
    assert "no hmpe metadata (names, imgsz)" in capsys.readouterr().err
    assert main(["predict", str(files["images"]), w, "conf=0.3"]) == 0  # and what it can, from the command line
    saved = json.loads((tmp_path / "runs" / "predict" / "exp" / "predictions.json").read_text())
    assert len(saved) == 4 and any(entry["detections"] for entry in saved)
