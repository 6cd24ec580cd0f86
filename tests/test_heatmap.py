"""Heatmap embedding (eqs. 1-4, 6-7): closed form vs autograd, mask, masked PE, probe loss, gradients,
memory, and the heatbar figure."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch

from hmpe.models.heatmap import (
    HeatmapEmbedding,
    MaskFilter,
    ProbeHead,
    assign_dense_targets,
    default_scale_ranges,
    fuse_levels,
    gradcampp_autograd,
    gradcampp_sigmoid_linear,
    masked_position_encoding,
    minmax_per_image,
    probe_loss,
)
from hmpe.models.rtdetr.position import sincos_2d, sincos_2d_additive
from hmpe.viz.heatmap import heatmap_maps, render_heatmap_figure, render_heatmap_output, visible_row_channel

SIZES = [(8, 12), (4, 6), (2, 3)]  # a 64 x 96 input at strides 8, 16, 32


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: extra intra-op threads only add contention on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _feats(B=2, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, D, h, w, generator=g, dtype=dtype) for h, w in SIZES]


def _targets(dtype=torch.float32):
    return [
        {"boxes": torch.tensor([[0.30, 0.40, 0.10, 0.15], [0.60, 0.50, 0.50, 0.60], [0.3, 0.4, 0.05, 0.05]],
                               dtype=dtype), "labels": torch.tensor([1, 3, 0])},
        {"boxes": torch.zeros(0, 4, dtype=dtype), "labels": torch.zeros(0, dtype=torch.long)},
    ]


def _spread(head: ProbeHead, seed=0, bias=-3.0):
    """Weights large enough that sigma spans (0, 1) and the derivatives are far from zero; with the
    default negative bias most locations are background (sigma < 0.5), as in a trained probe."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (head.cls, head.quality, head.reg):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=layer.weight.dtype) * 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=layer.bias.dtype) * 0.5 + bias)


# --------------------------------------------------------------------------------------------------
# eqs. 1-3: closed form == autograd
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", ["design", "gradcam++"])
def test_closed_form_matches_autograd(alpha):
    torch.manual_seed(0)
    head = ProbeHead(16, 5, hidden=8).double()
    _spread(head)
    with torch.no_grad():
        outs = [head(x) for x in _feats(dtype=torch.float64)]
    fs = [o[0] for o in outs]
    cls = [o[1] for o in outs]
    qual = [o[3] for o in outs]
    w = head.cls.weight.flatten(1)  # [C,K]
    top = torch.tensor([[0, 2, 4], [1, 3, 2]])  # per-image target classes
    sel = [s.gather(1, top[:, :, None, None].expand(-1, -1, *s.shape[-2:])) for s in cls]
    fast = gradcampp_sigmoid_linear(fs, sel, w[top], alpha)  # [B,T,H,W] per level
    for t in range(top.shape[1]):  # class target y^c = sum_l sum_ij sigmoid(s_c)
        idx = top[:, t][:, None, None, None]

        def y_cls(xs, idx=idx):
            return sum(torch.sigmoid(head.cls(x).gather(1, idx.expand(-1, 1, *x.shape[-2:]))).sum((1, 2, 3))
                       for x in xs)

        ref = gradcampp_autograd(fs, y_cls, alpha)
        assert sum(r.abs().sum() for r in ref) > 0
        for a, r in zip(fast, ref):
            torch.testing.assert_close(a[:, t:t + 1], r, rtol=1e-5, atol=1e-5 * float(r.abs().max()))
    # quality target y = sum_l sum_ij sigmoid(q)
    fast_q = gradcampp_sigmoid_linear(fs, qual, head.quality.weight.flatten(1), alpha)
    ref_q = gradcampp_autograd(fs, lambda xs: sum(torch.sigmoid(head.quality(x)).sum((1, 2, 3)) for x in xs), alpha)
    assert sum(r.abs().sum() for r in ref_q) > 0
    for a, r in zip(fast_q, ref_q):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5 * float(r.abs().max()))


def test_design_alpha_vanishes_when_confident():
    """Documented behaviour: with eq. 1 taken literally (alpha = d2 + d3 of the exact sigmoid),
    sigma > 0.5 almost everywhere makes every beta_k <= 0 and the map identically zero; the classic
    Grad-CAM++ alpha stays informative."""
    head = ProbeHead(16, 5, hidden=8).double()
    _spread(head, bias=3.0)
    with torch.no_grad():
        head.quality.weight.mul_(0.5)  # |w| < 1: the d2 term dominates d3 (the usual regime)
        outs = [head(x) for x in _feats(dtype=torch.float64)]
    fs, qual = [o[0] for o in outs], [o[3] for o in outs]
    w = head.quality.weight.detach().flatten(1)
    assert all(float(m.max()) == 0 for m in gradcampp_sigmoid_linear(fs, qual, w, "design"))
    assert any(float(m.max()) > 0 for m in gradcampp_sigmoid_linear(fs, qual, w, "gradcam++"))


def test_module_closed_form_equals_reference():
    torch.manual_seed(0)
    m = HeatmapEmbedding(16, 5, probe_hidden=8).double()
    _spread(m.probe)
    feats = _feats(dtype=torch.float64)
    a = m(feats)
    m.closed_form = False
    b = m(feats)
    for key in ("h_class", "h_bbox", "h_mixed", "mask"):
        for x, y in zip(getattr(a, key), getattr(b, key)):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_loss_based_bbox_heat_is_gone_and_old_configs_read_as_quality():
    """A loss-based H_bbox needs targets, so inference silently used the quality map: dropped; an older config
    or checkpoint that names it builds the model it ran at inference, with a warning."""
    from hmpe.models.detector import build_model
    from hmpe.utils.config import load_model_config

    with pytest.raises(ValueError, match="bbox_heat must be 'quality'"):
        HeatmapEmbedding(16, 5, bbox_heat="loss")
    cfg = load_model_config("hmpe-n")
    cfg["heatmap"]["bbox_heat"] = "loss"
    with pytest.warns(UserWarning, match="bbox_heat: loss was dropped"):
        model = build_model(cfg, 3)
    assert model.heatmap.bbox_heat == "quality"


def test_heatmap_shapes_and_ranges():
    m = HeatmapEmbedding(16, 5, probe_hidden=8)
    with torch.no_grad():
        out = m(_feats())
    assert out.topk_classes.shape == (2, 3) and out.class_scores.shape == (2, 5)
    for key in ("h_class", "h_bbox", "h_mixed", "mask"):
        maps = getattr(out, key)
        assert [tuple(x.shape) for x in maps] == [(2, 1, h, w) for h, w in SIZES]
        assert all(float(x.min()) >= 0 and float(x.max()) <= 1 for x in maps)
    assert torch.allclose(out.gate, torch.full((3,), 0.5))
    # min-max per image jointly over levels, then finer levels max-pooled into coarser ones
    raw = [torch.rand(2, 1, h, w) * 5 + 1 for h, w in SIZES]
    n = minmax_per_image(raw)
    assert torch.allclose(torch.stack([x.amax((1, 2, 3)) for x in n]).amax(0), torch.ones(2))
    assert torch.allclose(torch.stack([x.amin((1, 2, 3)) for x in n]).amin(0), torch.zeros(2))
    spot = [torch.zeros(1, 1, h, w) for h, w in SIZES]
    spot[0][0, 0, 5, 7] = 1.0  # a one-cell hot spot at stride 8 survives on every coarser level
    fused = fuse_levels(spot, "down")
    assert fused[1][0, 0, 2, 3] == 1.0 and fused[2][0, 0, 1, 1] == 1.0 and fused[0].sum() == 1.0


# --------------------------------------------------------------------------------------------------
# eqs. 6-7: mask and masked position encoding
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pe", ["rtdetr", "paper"])
def test_mask_tau0_is_eq6_and_masked_pe(pe):
    m = HeatmapEmbedding(16, 5, probe_hidden=8, tau=0.0, pe=pe, fuse_levels="none")
    with torch.no_grad():
        m.gate.fill_(100.0)  # lambda = 1: H_mixed = H_class, which is 0 at its (joint) minimum -> cold cells
    out = m(_feats())
    assert any((mk == 0).any() for mk in out.mask) and any((mk == 1).any() for mk in out.mask)
    for lvl, (h, mk) in enumerate(zip(out.h_mixed, out.mask)):
        assert torch.equal(mk, (h > 0).to(mk.dtype))  # eq. 6 literally
        assert mk.requires_grad is False
        pe_full = (sincos_2d if pe == "rtdetr" else sincos_2d_additive)(*h.shape[-2:], 16)
        pe_m = out.masked_pe(lvl)  # [B,HW,D]
        assert pe_m.shape == (2, h.shape[-2] * h.shape[-1], 16)
        hot = mk.flatten(1).bool()  # [B,HW]
        assert torch.all(pe_m[~hot] == 0)
        assert torch.equal(pe_m[hot], pe_full[None].expand(2, -1, -1)[hot])
    # the function on its own, token and map layouts, with a threshold
    hm = torch.rand(2, 1, 4, 5)
    mask = MaskFilter(0.3)(hm)
    assert torch.equal(mask, (hm > 0.3).float())
    pe_tok = torch.randn(20, 8)
    out_tok = masked_position_encoding(pe_tok, mask)
    assert torch.equal(out_tok, pe_tok[None] * mask.flatten(2).transpose(1, 2))
    pe_map = torch.randn(1, 8, 4, 5)
    assert torch.equal(masked_position_encoding(pe_map, mask), pe_map * mask)


# --------------------------------------------------------------------------------------------------
# probe targets and loss
# --------------------------------------------------------------------------------------------------
def test_dense_assignment_levels_and_ties():
    assert default_scale_ranges((8, 16, 32)) == [(0.0, 64.0), (64.0, 128.0), (128.0, float("inf"))]
    sizes, strides, img = [(80, 80), (40, 40), (20, 20)], (8, 16, 32), (640, 640)
    n0, n1 = 80 * 80, 40 * 40
    boxes = torch.tensor([[0.5, 0.5, 40 / 640, 30 / 640],  # 40 px -> stride 8
                          [0.2, 0.2, 100 / 640, 50 / 640],  # 100 px -> stride 16
                          [0.7, 0.7, 300 / 640, 200 / 640],  # 300 px -> stride 32
                          [0.9, 0.1, 4 / 640, 4 / 640]])  # 4 px: still one positive (centre cell)
    pos, gt, ltrb = assign_dense_targets(boxes, sizes, strides, img)
    lvl = torch.cat([torch.full((n,), i) for i, n in enumerate((n0, n1, 400))])
    for b, want in enumerate((0, 1, 2, 0)):
        assert (pos & (gt == b)).any(), b
        assert torch.all(lvl[pos & (gt == b)] == want), b
    assert int((pos & (gt == 3)).sum()) == 1
    assert torch.all(ltrb[pos] >= 0)
    # centre region radius 1.5 strides: at most 3 x 3 locations for a box larger than the region
    assert int((pos & (gt == 0)).sum()) <= 9
    # ties -> smallest box
    nested = torch.tensor([[0.5, 0.5, 60 / 640, 60 / 640], [0.5, 0.5, 20 / 640, 20 / 640]])
    pos, gt, _ = assign_dense_targets(nested, sizes, strides, img)
    both = pos[:n0]
    assert torch.all(gt[:n0][both] == 1)


def test_probe_loss_positive_and_empty_images():
    torch.manual_seed(0)
    m = HeatmapEmbedding(16, 5, probe_hidden=8)
    out = m(_feats())
    losses = m.loss(out, _targets(), image_size=(64, 96))
    assert set(losses) == {"loss_probe_cls", "loss_probe_reg", "loss_probe_quality"}
    for v in losses.values():
        assert torch.isfinite(v) and float(v.detach()) > 0
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses = probe_loss(out.probe, empty, (8, 16, 32), (64, 96))
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_probe_reg"].detach()) == 0 and float(losses["loss_probe_cls"].detach()) > 0
    sum(losses.values()).backward()
    # weights are applied
    w = probe_loss(out.probe, _targets(), (8, 16, 32), (64, 96), weight_cls=2.0, weight_reg=0.0)
    base = probe_loss(out.probe, _targets(), (8, 16, 32), (64, 96))
    assert torch.allclose(w["loss_probe_cls"], 2 * base["loss_probe_cls"]) and float(w["loss_probe_reg"].detach()) == 0


def test_gradients_reach_probe_and_gate():
    torch.manual_seed(0)
    m = HeatmapEmbedding(16, 5, probe_hidden=8)
    feats = [f.requires_grad_(True) for f in _feats()]
    out = m(feats)
    for h in out.h_class + out.h_bbox + out.mask:
        assert h.grad_fn is None  # heatmaps and mask are not differentiated
    downstream = sum((x * h).mean() for x, h in zip(feats, out.h_mixed))  # e.g. E = W (X * H_mixed)
    loss = sum(m.loss(out, _targets()).values()) + downstream
    loss.backward()
    assert m.gate.grad is not None and torch.all(m.gate.grad != 0)
    for name, p in m.probe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert float(m.probe.cls.weight.grad.abs().sum()) > 0 and float(m.probe.tower[0][0].weight.grad.abs().sum()) > 0
    assert all(f.grad is not None for f in feats)  # the probe supervises the shared features


# --------------------------------------------------------------------------------------------------
# memory: no hooks, no retained graphs
# --------------------------------------------------------------------------------------------------
def _live_objects() -> tuple[int, int]:
    """(live tensors, all gc-tracked Python objects)."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on deprecated torch module attributes warns
        objs = gc.get_objects()
        return sum(1 for o in objs if isinstance(o, torch.Tensor)), len(objs)


def test_memory_flat_over_many_calls():
    m = HeatmapEmbedding(16, 5, probe_hidden=8).eval()
    feats = _feats()
    with torch.no_grad():
        for _ in range(3):
            m(feats).masked_pes()
        tensors0, objects0 = _live_objects()
        for _ in range(50):
            out = m(feats)
            out.masked_pes()
        del out
    tensors1, objects1 = _live_objects()
    assert tensors1 <= tensors0
    assert objects1 - objects0 < 50, (objects0, objects1)  # nothing accumulates per call
    # training steps (the autograd reference inside) free their graphs too
    m.train()
    m.closed_form = False
    tg = _targets()
    for _ in range(2):
        out = m(feats)
        sum(m.loss(out, tg).values()).backward()
    del out
    tensors0, _ = _live_objects()
    for _ in range(10):
        out = m(feats)
        (sum(m.loss(out, tg).values()) + sum(h.mean() for h in out.h_mixed)).backward()
    del out
    assert _live_objects()[0] <= tensors0
    for mod in m.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks
    assert not torch.nn.modules.module._global_forward_hooks
    assert not torch.nn.modules.module._global_backward_hooks


# --------------------------------------------------------------------------------------------------
# heatbar figure
# --------------------------------------------------------------------------------------------------
def _colourbar_count(rgb: np.ndarray, cmap: str = "viridis") -> int:
    """Number of colour bars: vertical runs of pixels that go through the colour map from its top
    (max) to its bottom (min), counted per group of adjacent columns."""
    from matplotlib import colormaps

    lut = (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)
    code = lambda a: (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]  # noqa: E731
    exact = np.isin(code(rgb.astype(np.int64)), code(np.round(lut).astype(np.int64)))
    runs_per_col = {}
    for x in np.nonzero(exact.sum(0) >= 50)[0]:  # candidate columns: many exact colour-map pixels
        col = rgb[:, x].astype(np.float32)
        d = ((col[:, None, :] - lut[None]) ** 2).sum(-1)
        idx, ok = d.argmin(1), d.min(1) < 50
        n, start = 0, None
        for y in range(len(ok) + 1):  # runs of colour-map pixels with a non-increasing index
            if y < len(ok) and ok[y] and start is not None and idx[y] <= idx[y - 1]:
                continue
            if start is not None:
                run = idx[start:y]
                n += int(len(run) > 50 and run.max() - run.min() > 200)
            start = y if (y < len(ok) and ok[y]) else None
        if n:
            runs_per_col[x] = n
    total, prev = 0, None
    for x, n in runs_per_col.items():  # one strip = adjacent columns; stacked bars count separately
        if prev is None or x != prev + 1:
            total += n
        prev = x
    return total


def test_heatmap_figure_aspect_and_colourbar(tmp_path):
    H, W = 60, 120  # a 2:1 image, pure magenta so that its panel can be found in the rendered pixels
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = image[..., 2] = 255
    rng = np.random.default_rng(0)
    maps = {"H_class": rng.random((8, 15)), "H_bbox": rng.random((8, 15)), "H_mixed": rng.random((8, 15)),
            "Mask": (rng.random((8, 15)) > 0.5).astype(np.float32), "PE' ch.3": rng.random((8, 15)) * 2 - 1}
    png = tmp_path / "fig.png"
    rgb = render_heatmap_figure(image, [[30, 15, 60, 40]], [1], ["a", "b"], maps, png)
    assert png.is_file() and rgb.dtype == np.uint8 and rgb.ndim == 3
    magenta = (rgb[..., 0] > 245) & (rgb[..., 1] < 10) & (rgb[..., 2] > 245)
    ys, xs = np.nonzero(magenta)
    aspect = (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)
    assert abs(aspect - 2.0) < 0.05, aspect
    assert _colourbar_count(rgb) == len(maps) - 1  # the binary mask gets a two-entry legend, not a bar


def test_heatmap_figure_mask_panel_states_masked_fraction(monkeypatch):
    import hmpe.viz.heatmap as vh

    mask = np.zeros((4, 4), np.float32)
    mask[:1] = 1  # 12 of 16 cells masked
    titles = []
    monkeypatch.setattr(vh, "_mask_panel", lambda ax, legend_ax, up, cmap, alpha: titles.append(ax.get_title()))
    vh.render_heatmap_figure(np.zeros((32, 32, 3), np.uint8), [], [], [], {"Mask": mask})
    assert titles == ["Mask (75% masked)"] and vh.masked_fraction(mask) == 0.75


def test_heatmap_output_figure(tmp_path):
    m = HeatmapEmbedding(16, 5, probe_hidden=8)
    with torch.no_grad():
        out = m(_feats())
    for level in (0, "max"):
        maps = heatmap_maps(out, index=1, level=level)
        k = visible_row_channel(16, SIZES[0][0])
        assert list(maps) == ["H_class", "H_bbox", "H_mixed", "Mask", f"PE' ch.{k}"]
        assert all(v.shape == SIZES[0] for v in maps.values())
        mask, pe = out.mask[0][1, 0].numpy(), maps[f"PE' ch.{k}"]  # the PE panel is the finest level's
        np.testing.assert_allclose(pe[mask == 0], 0)
        rows = np.broadcast_to(np.arange(SIZES[0][0])[:, None], SIZES[0]).astype(np.float32)
        wave = np.sin(rows * 10000.0 ** (-k / 4))  # channel k of sincos_2d: sin(row * w_k), F = 16 // 4
        np.testing.assert_allclose(pe[mask == 1], wave[mask == 1], atol=1e-5)
    image = np.full((64, 96, 3), 128, np.uint8)
    rgb = render_heatmap_output(image, [[10, 10, 30, 30]], [0], ["a"] * 5, out, index=0,
                                out_png=tmp_path / "o.png")
    assert rgb.shape[2] == 3 and (tmp_path / "o.png").is_file()


def test_closed_form_exports_to_onnx(tmp_path):
    """The default (closed-form, quality) path is export-friendly: ONNX parity with onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = HeatmapEmbedding(16, 5, probe_hidden=8).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, a, b, c):
            o = self.inner([a, b, c])
            return (*o.h_mixed, *o.mask)

    feats = tuple(_feats(B=1))
    with torch.no_grad():
        ref = Wrap(m)(*feats)
    path = tmp_path / "heatmap.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(Wrap(m), feats, str(path), opset_version=17, dynamo=False)
        except Exception as e:  # pragma: no cover - exporter not available in this torch build
            pytest.skip(f"ONNX exporter unavailable: {e}")
    sess = ort.InferenceSession(str(path))
    outs = sess.run(None, {i.name: f.numpy() for i, f in zip(sess.get_inputs(), feats)})
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o, r.numpy(), atol=1e-5)


def test_one_position_encoding_for_the_encoder_and_the_heatmap_output():
    """The detector's heatmap path draws the PE the encoder masks: the encoder's own settings object, whose
    defaults come from heatmap.pe / heatmap.temperature unless the encoder sets them."""
    from helpers import tiny_model_cfg
    from hmpe.models.detector import build_model

    cfg = tiny_model_cfg()
    cfg["heatmap"] = {"enabled": True, "pe": "paper", "temperature": 20.0}
    torch.manual_seed(0)
    model = build_model(cfg, 3).eval()
    assert model.heatmap.position is model.encoder.position
    assert (model.encoder.pe, model.encoder.pe_temperature) == ("paper", 20.0)
    cfg["encoder"] = {**cfg["encoder"], "pe_temperature": 100.0}
    assert build_model(cfg, 3).heatmap.position.temperature == 100.0  # the encoder's setting wins
    with torch.no_grad():
        heat = model(torch.rand(1, 3, 64, 64))["heatmap"]
    lvl = model.encoder.use_encoder_idx[0]
    h, w = heat.mask[lvl].shape[-2:]
    expected = masked_position_encoding(model.encoder.position_encoding(h, w, torch.device("cpu"), torch.float32),
                                        heat.mask[lvl])
    assert torch.equal(heat.masked_pe(lvl), expected)
    assert torch.equal(expected[0], sincos_2d_additive(h, w, 64, 20.0) * heat.mask[lvl].flatten()[:, None])
