"""OpenVINO export (hmpe export format=openvino) and its built-in parity check."""

import pytest
import torch

from test_export import make_checkpoint  # tests/ is on sys.path under pytest

IMGSZ = 64

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def hmpe_ckpt(tmp_path_factory):
    """A tiny checkpoint with every HMPE part on (LSConv, heatmap path, MOHFE, HIDQ)."""
    from helpers import tiny_model_cfg

    cfg = tiny_model_cfg()
    cfg["backbone"] = {"name": "B0", "strip_conv": {"kind": "lsconv", "stages": [3, 4], "kernel_size": 5}}
    cfg.update(heatmap={"enabled": True}, mohfe={"enabled": True}, hidq={"enabled": True, "score": "heat*cls"})
    return make_checkpoint(tmp_path_factory.mktemp("ov") / "tiny.pt", cfg, imgsz=IMGSZ)


def test_cli_export_openvino_passes_parity_and_parity_fails_loudly(hmpe_ckpt, tmp_path, capsys):
    from hmpe.api import load_for_inference
    from hmpe.cli import main
    from hmpe.engine.deploy.export import ExportParityError, ExportWrapper, parity_check

    assert main(["export", f"weights={hmpe_ckpt}", "format=openvino"]) == 0
    printed = capsys.readouterr().out
    assert "parity check PASSED: openvino matches PyTorch on batch sizes 1, 3" in printed
    xml = hmpe_ckpt.parent / "tiny_openvino" / "tiny.xml"
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    model = ov.Core().read_model(str(xml))
    assert [o.get_any_name() for o in model.outputs] == ["boxes", "scores", "labels"]
    assert model.get_rt_info(["model_info", "imgsz"]).astype(str) == f"[{IMGSZ}, {IMGSZ}]"
    # the check is not vacuous: another model's PyTorch outputs do not pass against this IR
    other, post, _ = load_for_inference(make_checkpoint(tmp_path / "other.pt", imgsz=IMGSZ, seed=1),
                                        torch.device("cpu"))
    with pytest.raises(ExportParityError, match="openvino disagrees"):
        parity_check(xml, ExportWrapper(other, post, IMGSZ).eval(), (IMGSZ, IMGSZ), verbose=False,
                     backend="openvino")


def test_export_openvino_rejects_bad_out(hmpe_ckpt, tmp_path):
    from hmpe.engine.deploy.export import export_openvino

    with pytest.raises(ValueError, match=r"\.xml"):
        export_openvino(hmpe_ckpt, out=tmp_path / "m.onnx", check=False, verbose=False)


def test_openvino_session_compiles_a_dynamic_batch_file_once_per_batch_size(hmpe_ckpt, tmp_path, monkeypatch):
    """The exported IR keeps a dynamic batch axis; runtime_session compiles it at each batch size it is called
    with (static shapes run faster in the CPU plugin), once per size, with the same outputs."""
    import numpy as np

    from hmpe.engine.deploy.export import export_openvino, runtime_session

    xml = export_openvino(hmpe_ckpt, imgsz=IMGSZ, out=tmp_path / "m.xml", check=False, verbose=False)
    assert ov.Core().read_model(str(xml)).input(0).get_partial_shape()[0].is_dynamic
    compiled_shapes, compile_model = [], ov.Core.compile_model

    def spy(self, model, *args, **kwargs):
        compiled_shapes.append(model.input(0).get_partial_shape().to_string())
        return compile_model(self, model, *args, **kwargs)

    monkeypatch.setattr(ov.Core, "compile_model", spy)
    run = runtime_session(xml, "openvino", threads=1)
    x = np.random.default_rng(0).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    pair, first, again = run(x), run(x[:1]), run(x[:1])
    assert compiled_shapes == [f"[2,3,{IMGSZ},{IMGSZ}]", f"[1,3,{IMGSZ},{IMGSZ}]"]
    assert [o.shape[0] for o in pair] == [2, 2, 2] and [o.shape[0] for o in first] == [1, 1, 1]
    for a, b, c in zip(pair, first, again):
        np.testing.assert_allclose(a[:1], b, atol=1e-4)
        np.testing.assert_array_equal(b, c)


def test_openvino_batch_benchmark_times_the_file_dynamic_and_at_batch_1(hmpe_ckpt, tmp_path):
    """python -m benchmarks.openvino_batch: a dynamic-batch IR is timed as written and reshaped to batch 1."""
    from benchmarks import openvino_batch
    from hmpe.engine.deploy.export import export_openvino

    xml = export_openvino(hmpe_ckpt, imgsz=IMGSZ, out=tmp_path / "m.xml", check=False, verbose=False)
    out = tmp_path / "batch.md"
    medians = openvino_batch.main([str(xml), "--threads", "1", "--rounds", "2", "--warmup", "0", "--out", str(out)])
    assert sorted(medians) == [f"{xml} (batch 1)", f"{xml} (dynamic batch)"]
    assert all(v > 0 for v in medians.values())
    assert "| median ms |" in out.read_text() and "CPU:" in out.read_text()
