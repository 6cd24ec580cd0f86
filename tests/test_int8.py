"""Exported files of a tiny trained model: INT8 export (hmpe export int8=true: ONNX Runtime QDQ and OpenVINO + NNCF),
and ``hmpe predict`` / ``hmpe val`` with ``weights=`` an exported file (:mod:`hmpe.engine.deploy.runtime`)."""

import json
import re

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from helpers import tiny_data, tiny_model_cfg, tiny_model_yaml, tiny_train_cfg

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

IMGSZ = 64
CHECK_LINE = re.compile(r"int8 check on synthetic val \(4 images\): mAP50 fp32 (\d\.\d{3}) -> int8 (\d\.\d{3}) "
                        r"\([+-]\d\.\d{3}\)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model (one decoder layer) trained on 4 synthetic images until it finds their objects."""
    from hmpe.engine.train.trainer import Trainer

    tmp = tmp_path_factory.mktemp("int8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch 4 at 64 px: a second thread gains nothing on a loaded machine
    try:
        Trainer(tiny_train_cfg(tmp, data=tiny_data(imgsz=IMGSZ), imgsz=IMGSZ, epochs=60),
                tiny_model_cfg(num_layers=1)).fit()
    finally:
        torch.set_num_threads(threads)
    return tmp / "runs" / "train" / "t" / "weights" / "last.pt"


def _export(weights, fmt: str, capsys, *extra: str) -> str:
    from hmpe.cli import main

    assert main(["export", f"weights={weights}", f"format={fmt}", "int8=true", "calib_images=4", *extra]) == 0
    return capsys.readouterr().out


def _inputs() -> np.ndarray:
    """The 4 val images (= the training images), preprocessed as the checkpoint's export expects: [4,3,64,64]."""
    from hmpe.data.formats import load_data_config
    from hmpe.data.preprocess import Preprocess
    from hmpe.engine.deploy.quantize import SplitImages

    images = SplitImages(load_data_config(tiny_data(imgsz=IMGSZ)), "val", Preprocess(IMGSZ))
    return np.concatenate([images[i] for i in range(len(images))])


def _assert_detections_survive(fp32: tuple, int8: tuple, conf: float = 0.3) -> None:
    """Every fp32 detection above ``conf`` has an INT8 detection of the same label with box IoU > 0.5."""
    kept = 0
    for b in range(fp32[0].shape[0]):
        boxes, scores, labels = (torch.from_numpy(t[b]) for t in fp32)
        qboxes, qscores, qlabels = (torch.from_numpy(t[b]) for t in int8)
        for box, label in zip(boxes[scores > conf], labels[scores > conf]):
            same = qlabels == label
            assert same.any(), (b, int(label))
            assert float(box_iou(box[None], qboxes[same]).max()) > 0.5, (b, int(label))
            kept += 1
    assert kept >= 4, f"only {kept} confident fp32 detections: the fixture model did not train"


def test_onnx_int8_is_qdq_with_the_fp32_outputs_and_its_detections(trained, capsys):
    from onnx import numpy_helper

    from hmpe.engine.deploy.export import runtime_session
    from hmpe.engine.deploy.quantize import FP32_TYPES, ORT_INT8_OPS

    printed = _export(trained, "onnx", capsys)
    q_path, fp32_path = trained.with_name("last_int8.onnx"), trained.with_name("last.onnx")
    assert "parity check PASSED: onnxruntime" in printed  # the fp32 file beside it, checked as int8=false does
    assert re.search(r"quantized .*last\.onnx \(\d+\.\d MB\) -> .*last_int8\.onnx \(\d+\.\d MB, int8; calibrated on "
                     r"4 train images of synthetic\)", printed), printed
    ref, got = (float(v) for v in CHECK_LINE.search(printed).groups())
    assert ref >= 0.9 and got >= ref - 0.1
    assert q_path.stat().st_size < fp32_path.stat().st_size / 2
    q, f = onnx.load(str(q_path)), onnx.load(str(fp32_path))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "GridSample"} <= ops
    # the deformable sampling and the selections read fp32 tensors, never a DequantizeLinear output
    dq = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    readers = {n.op_type for n in q.graph.node if dq & set(n.input)}
    assert readers & set(ORT_INT8_OPS) and not readers & set(FP32_TYPES)
    # 7-bit weights (reduce_range): int16 sums of 8-bit products do not saturate on CPUs without VNNI
    inits = {t.name: t for t in q.graph.initializer}
    weights = [numpy_helper.to_array(inits[n.input[0]]) for n in q.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weights and all(np.abs(w.astype(np.int16)).max() <= 64 for w in weights)  # [-64, 64], not [-127, 127]
    def declared(graph):  # name, dtype, rank, batch axis (shape inference may name the other axes' sizes)
        return [(o.name, o.type.tensor_type.elem_type, len(o.type.tensor_type.shape.dim),
                 o.type.tensor_type.shape.dim[0].dim_param) for o in (*graph.input, *graph.output)]

    assert declared(q.graph) == declared(f.graph)
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["names"] == {p.key: p.value for p in f.metadata_props}["names"] and "int8 QDQ" in meta["quantization"]
    x = _inputs()
    fp32, int8 = runtime_session(fp32_path)(x), runtime_session(q_path)(x)
    assert [a.shape for a in int8] == [a.shape for a in fp32] and [a.dtype for a in int8] == [a.dtype for a in fp32]
    _assert_detections_survive(fp32, int8)


def test_openvino_int8_by_nncf_keeps_outputs_and_detections(trained, capsys):
    pytest.importorskip("nncf", reason="format=openvino int8=true needs NNCF (pip install 'hmpe[int8]')")
    ov = pytest.importorskip("openvino")
    from hmpe.engine.deploy.export import runtime_session

    printed = _export(trained, "openvino", capsys, "check=false")  # the checks: the onnx test above
    folder = trained.parent / "last_int8_openvino"
    q_path, fp32_path = folder / "last_int8.xml", folder / "last.xml"
    assert "calibrated on 4 train images of synthetic" in printed and "int8 check" not in printed, printed
    model = ov.Core().read_model(str(q_path))
    types = {op.get_type_name() for op in model.get_ops()}
    assert "FakeQuantize" in types and "GridSample" in types
    assert [o.get_any_name() for o in model.outputs] == ["boxes", "scores", "labels"]
    assert "NNCF" in model.get_rt_info(["model_info", "quantization"]).astype(str)
    assert model.get_rt_info(["model_info", "imgsz"]).astype(str) == f"[{IMGSZ}, {IMGSZ}]"  # the fp32 IR's metadata
    x = _inputs()
    fp32, int8 = runtime_session(fp32_path, "openvino")(x), runtime_session(q_path, "openvino")(x)
    assert [a.shape for a in int8] == [a.shape for a in fp32]
    _assert_detections_survive(fp32, int8)


@pytest.fixture
def orphan_ckpt(tmp_path):
    """A checkpoint whose training dataset is gone (its YAML was deleted)."""
    from test_export import make_checkpoint

    path = make_checkpoint(tmp_path / "m.pt", imgsz=IMGSZ)
    ckpt = torch.load(path, weights_only=False)
    ckpt["train_cfg"]["data"] = str(tmp_path / "gone.yaml")
    torch.save(ckpt, path)
    return path


def test_int8_without_a_dataset_refuses_in_one_line(orphan_ckpt, capsys):
    from hmpe.cli import main

    assert main(["export", f"weights={orphan_ckpt}", "format=onnx", "int8=true"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "int8=true calibrates on the dataset's train images" in err and "pass data=" in err and "gone.yaml" in err
    assert sorted(p.name for p in orphan_ckpt.parent.iterdir()) == ["m.pt"]  # refused before any export


def test_openvino_int8_without_nncf_names_the_extra(orphan_ckpt, capsys, monkeypatch):
    import importlib.util

    from hmpe.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else find_spec(name, *a))
    assert main(["export", f"weights={orphan_ckpt}", "format=openvino", "int8=true"]) == 1
    assert capsys.readouterr().err.strip() == ("hmpe export: error: format=openvino int8=true needs nncf: "
                                               "pip install 'hmpe[int8]'")


def test_bench_int8_backend(tmp_path, capsys):
    from hmpe.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", f"model={tiny_model_yaml(tmp_path)}", "decoder.num_layers=1", "imgsz=64", "runs=1", "warmup=0",
                 "threads=1", "nc=5", "backend=[onnxruntime,onnxruntime-int8]", f"save={out}"]) == 0
    assert "int8 backends: random weights calibrated on 8 random images, speed only" in capsys.readouterr().out
    r = json.loads(out.read_text())["results"][0]
    assert list(r["backends"]) == ["onnxruntime", "onnxruntime-int8"]


def test_int8_keys_apply_to_int8_exports_only(orphan_ckpt):
    from hmpe.api import Detector

    det = Detector(str(orphan_ckpt), device="cpu")
    with pytest.raises(ValueError, match="apply to int8=true"):
        det.export(format="onnx", data="synthetic")
    with pytest.raises(ValueError, match="int8=true applies to format=onnx or format=openvino"):
        det.export(format="safetensors", int8=True)
    assert sorted(p.name for p in orphan_ckpt.parent.iterdir()) == ["m.pt"]


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):
    """The trained model's ONNX and OpenVINO exports and its 4 val images as files."""
    pytest.importorskip("openvino")
    from PIL import Image

    from hmpe.data.dataset import build_dataset
    from hmpe.engine.deploy.export import export_onnx, export_openvino

    tmp = tmp_path_factory.mktemp("exported")
    onnx_path = export_onnx(trained, out=tmp / "tiny.onnx", verbose=False)
    xml = export_openvino(trained, out=tmp / "tiny_openvino" / "tiny.xml", check=False, verbose=False)
    ds = build_dataset(tiny_data(imgsz=IMGSZ), "val")
    (tmp / "images").mkdir()
    for i, s in enumerate(ds.samples):
        Image.fromarray(np.asarray(ds.image_loader(s), dtype=np.uint8)).save(tmp / "images" / f"{i}.png")
    return {"pt": trained, "onnx": onnx_path, "xml": xml, "images": tmp / "images"}


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
                ("explore", str(files["images"]), w): "explore needs the PyTorch checkpoint",
                ("export", w, "format=onnx"): "export needs the PyTorch checkpoint",
                ("val", w): "an exported file names no dataset but a shipped one; pass data=DATA",
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


def test_an_export_names_a_shipped_dataset_and_val_uses_it(files, tmp_path, capsys):
    """A model trained on a shipped dataset: its export records the name (never a path), and ``hmpe val`` of the
    file needs no ``data=``."""
    from hmpe.api import Detector
    from hmpe.engine.deploy.export import export_onnx
    from hmpe.engine.deploy.runtime import exported_metadata

    ckpt = torch.load(files["pt"], weights_only=False)
    ckpt["data_cfg"] = {**ckpt["data_cfg"], "_source": "synthetic"}  # as if trained with data=synthetic
    torch.save(ckpt, tmp_path / "shipped-data.pt")
    named = export_onnx(tmp_path / "shipped-data.pt", check=False, verbose=False)
    assert exported_metadata(named)["data"] == "synthetic" and "data" not in exported_metadata(files["onnx"])
    metrics = Detector(weights=str(named)).val(project=str(tmp_path), plots=False, batch=32)
    assert "hmpe val: synthetic [val]" in capsys.readouterr().out and metrics["n_small"] > 0



def test_bench_times_exported_files_as_they_are(files, tmp_path, capsys):
    from hmpe.cli import main

    out = tmp_path / "bench.json"
    listed = f"files=[{files['onnx']},{files['xml']}]"
    assert main(["bench", listed, "batch=[1,2]", "runs=2", "warmup=1", "threads=1", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"{files['onnx']}: onnxruntime, {IMGSZ}x{IMGSZ}, batch 2: median" in printed
    reports = json.loads(out.read_text())["results"]
    assert [(r["runtime"], r["batch"]) for r in reports] == [("onnxruntime", 1), ("openvino", 1), ("onnxruntime", 2),
                                                              ("openvino", 2)]
    assert all(r["runs"] == 2 and 0 < r["latency_ms_min"] <= r["latency_ms_median"] for r in reports)
    assert main(["bench", listed, "imgsz=320"]) == 2  # a model key: the files run at their exported size
    assert "imgsz: files= times exported files as they are" in capsys.readouterr().err
