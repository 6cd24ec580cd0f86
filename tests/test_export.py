"""ONNX export: post-processed outputs, dynamic batch, onnxruntime parity, gather-based sampling."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import SYNTHETIC_NAMES, tiny_data, tiny_model_cfg
from hmpe.models.rtdetr.deformable import MSDeformableAttention, ms_deform_attn_core
from hmpe.models.rtdetr.sampling import gather_sampling, grid_sample_gather, sampling_modules

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

IMGSZ = 96


def make_checkpoint(path, model_cfg=None, imgsz=IMGSZ, seed=0):
    """A checkpoint laid out like ``Trainer.checkpoint`` for a tiny model with non-trivial box heads."""
    from hmpe.models.detector import build_model
    from hmpe.utils.config import default_train_config

    torch.manual_seed(seed)
    cfg = model_cfg or tiny_model_cfg()
    model = build_model(cfg, len(SYNTHETIC_NAMES))
    with torch.no_grad():  # the box heads are zero-initialised: give the boxes some spread
        for p in model.decoder.dec_bbox_head.parameters():
            p.normal_(0, 0.1)
    train_cfg = {**default_train_config(), "imgsz": imgsz, "data": tiny_data(imgsz=imgsz)}
    torch.save({"model": model.state_dict(), "ema": None, "epoch": 0, "model_cfg": cfg, "train_cfg": train_cfg,
                "names": list(SYNTHETIC_NAMES), "metrics": {}}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("export") / "tiny.pt")


@pytest.fixture(scope="module")
def onnx_file(ckpt):
    from hmpe.engine.deploy.export import export_onnx

    return export_onnx(ckpt, out=ckpt.with_name("m.onnx"), check=False, verbose=False)


def _wrapper(weights):
    from hmpe.api import load_for_inference
    from hmpe.engine.deploy.export import ExportWrapper

    model, post, _ = load_for_inference(weights, torch.device("cpu"))
    return ExportWrapper(model, post, IMGSZ).eval()


def _assert_same_top(ref, got, top=10, tol=1e-3):
    """The top detections of PyTorch are in onnxruntime's output: same label, box within ``tol`` of the
    normalised size, same score (matching tolerates rank swaps of near-tied scores)."""
    rb, rs, rl = ref
    gb, gs, gl = got
    for b in range(rb.shape[0]):
        for i in range(top):
            same = gl[b] == rl[b, i]
            assert same.any()
            d = ((gb[b][same] - rb[b, i]).abs() / IMGSZ).amax(-1)
            j = int(d.argmin())
            assert float(d[j]) <= tol, (b, i, float(d[j]))
            assert abs(float(gs[b][same][j] - rs[b, i])) <= tol
        torch.testing.assert_close(gs[b, :top], rs[b, :top], atol=tol, rtol=0)


def test_export_onnx_matches_pytorch_batch_1_and_3(ckpt, onnx_file):
    out = onnx_file
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version >= 17
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, IMGSZ, IMGSZ]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert "circle" in meta["names"]

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    wrapper = _wrapper(ckpt)
    for bs in (1, 3):
        x = torch.rand(bs, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(bs))
        with torch.no_grad():
            ref = wrapper(x)
        got = tuple(torch.from_numpy(a) for a in sess.run(None, {"images": x.numpy()}))
        assert got[0].shape == (bs, ref[0].shape[1], 4) and got[2].dtype == torch.int64
        # boxes are xyxy in input pixels, scores sorted
        assert bool((got[0][..., 2:] >= got[0][..., :2] - 1e-4).all())
        assert bool((got[1][:, :-1] >= got[1][:, 1:]).all())
        _assert_same_top(ref, got)


def test_cli_export_gather_sampling_has_no_gridsample_and_passes_parity(ckpt, tmp_path, capsys):
    from hmpe.cli import main

    out = tmp_path / "g.onnx"
    assert main(["export", f"weights={ckpt}", "format=onnx", "gather_sampling=true", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "\nparity check PASSED: onnxruntime matches PyTorch on batch sizes 1, 3" in printed
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert "GridSample" not in ops and "GatherElements" in ops
    # and it gives PyTorch's (grid_sample) detections
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = _wrapper(ckpt)(x)
    _assert_same_top(ref, tuple(torch.from_numpy(a) for a in sess.run(None, {"images": x.numpy()})))


def test_parity_check_fails_loudly(onnx_file, tmp_path):
    from hmpe.engine.deploy.export import ExportParityError, parity_check

    out = onnx_file
    other = _wrapper(make_checkpoint(tmp_path / "other.pt", seed=1))  # different weights
    with pytest.raises(ExportParityError, match="disagrees"):
        parity_check(out, other, (IMGSZ, IMGSZ), verbose=False)


def _preset_mask() -> dict:
    from hmpe.utils.config import load_model_config

    heat = load_model_config("hmpe-n")["heatmap"]
    return {k: heat[k] for k in ("score_pool", "tau_mode", "tau")}


@pytest.mark.parametrize("mask", [{}, _preset_mask()], ids=["absolute", "hmpe-n preset"])
def test_export_heatmap_model_returns_only_tensors(tmp_path, mask):
    """With the HMPE heatmap path on, the model's outputs hold a non-tensor ``heatmap`` entry; the
    exported graph has the three detection outputs only and still matches, with the key's default mask and with
    the hmpe-n preset's (a per-image quantile: ONNX has no quantile operator)."""
    from hmpe.engine.deploy.export import export_onnx

    cfg = tiny_model_cfg()
    cfg["heatmap"] = {"enabled": True, **mask}
    weights = make_checkpoint(tmp_path / "heat.pt", cfg, imgsz=64)
    out = export_onnx(weights, out=tmp_path / "heat.onnx", verbose=False)  # runs the parity check
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["boxes", "scores", "labels"]


def test_export_rejects_bad_arguments(ckpt, tmp_path):
    from hmpe.api import Detector
    from hmpe.cli import main

    with pytest.raises(ValueError, match="opset"):
        Detector(weights=str(ckpt)).export(opset=13, out=tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="onnx, openvino or safetensors"):
        Detector(weights=str(ckpt)).export(format="tflite")
    assert main(["export", f"weights={ckpt}", "bogus=1"]) == 2  # unknown key: exit 2, nothing exported


# ----------------------------------------------------------------------------- gather-based sampling
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_sample_gather_equals_grid_sample(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 9, generator=g, dtype=dtype, requires_grad=True)
    grid = (torch.rand(3, 4, 6, 2, generator=g, dtype=dtype) * 3 - 1.5)  # inside, on and outside the map
    grid[0, 0, :5] = torch.tensor([[-1, -1], [1, 1], [0, 0], [-1 - 1 / 9, 0], [1 + 1 / 9, 0.3]], dtype=dtype)
    grid[1, 0, 0] = torch.tensor([2 / 9 - 1 + 1 / 9, 2 / 7 - 1 + 1 / 7], dtype=dtype)  # exactly pixel (1, 1)
    grid.requires_grad_(True)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    got = grid_sample_gather(x, grid)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, ref, atol=tol, rtol=0)
    gr = torch.autograd.grad((ref * ref.detach()).sum(), (x, grid))
    gg = torch.autograd.grad((got * ref.detach()).sum(), (x, grid))
    for a, b in zip(gg, gr):
        torch.testing.assert_close(a, b, atol=tol * 10, rtol=0)


def test_deformable_attention_gather_matches_grid_sample():
    torch.manual_seed(0)
    shapes = [(8, 10), (4, 5), (2, 3)]
    B, M, Dh, Q, L, P = 2, 4, 8, 7, 3, 4
    value = torch.randn(B, sum(h * w for h, w in shapes), M, Dh)
    locs = torch.rand(B, Q, M, L, P, 2) * 1.2 - 0.1
    w = torch.rand(B, Q, M, L, P).softmax(-1)
    torch.testing.assert_close(ms_deform_attn_core(value, shapes, locs, w, "gather"),
                               ms_deform_attn_core(value, shapes, locs, w), atol=1e-6, rtol=0)


def test_gather_sampling_context_switches_and_restores():
    from hmpe.models.lsconv import build_strip_block

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"attn": MSDeformableAttention(32, 4, 3, 2),
                                 "snake": build_strip_block("lsconv", 8, 5)})
    snakes = [m for m in sampling_modules(model) if not isinstance(m, MSDeformableAttention)]
    assert snakes
    for m in snakes:
        m.sampler = "grid_sample"
    before = [m.sampler for m in sampling_modules(model)]
    assert "gather" not in before
    x = torch.randn(1, 8, 6, 7)
    with torch.no_grad():
        y_grid = model["snake"].eval()(x)
    with gather_sampling(model):
        assert all(m.sampler == "gather" for m in sampling_modules(model))
        with torch.no_grad():
            torch.testing.assert_close(model["snake"](x), y_grid, atol=1e-5, rtol=0)
    assert [m.sampler for m in sampling_modules(model)] == before
    with pytest.raises(RuntimeError), gather_sampling(model):
        raise RuntimeError("boom")
    assert [m.sampler for m in sampling_modules(model)] == before  # restored on errors too
    other = MSDeformableAttention(32, 4, 3, 2)
    with gather_sampling(model):
        assert other.sampler == "grid_sample"  # no global state


def test_gather_sampling_deformable_export_has_no_gridsample(tmp_path):
    torch.manual_seed(0)
    attn = MSDeformableAttention(32, 4, 2, 2).eval()
    shapes = [(6, 6), (3, 3)]

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, q, ref, v):
            return self.attn(q, ref, v, shapes)

    inputs = (torch.randn(2, 5, 32), torch.rand(2, 5, 1, 4) * 0.5 + 0.25, torch.randn(2, 45, 32))
    with torch.no_grad():
        ref = attn(*inputs[:2], inputs[2], shapes)
    path = tmp_path / "attn.onnx"
    with gather_sampling(attn), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap(), inputs, str(path), opset_version=17, dynamo=False,
                          input_names=["q", "ref", "v"], dynamic_axes={k: {0: "b"} for k in ("q", "ref", "v")})
    assert "GridSample" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: t.numpy() for k, t in zip(("q", "ref", "v"), inputs)})[0]
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
