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
