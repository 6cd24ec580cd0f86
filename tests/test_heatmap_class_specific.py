"""Class-specific Grad-CAM++ at any image size (``heatmap.score_pool``): with the paper's summed score the
closed form saturates as the image grows (every channel weight tends to 1 / mean(F_k), whatever the class);
the mean-pooled score keeps the map following the class's weights at 128 and at 640 px."""

from __future__ import annotations

import pytest
import torch

from hmpe.models.heatmap import HeatmapEmbedding, ProbeHead, gradcampp_autograd, gradcampp_sigmoid_linear
from hmpe.models.heatmap.gradcam import pool_scale

K = 4  # probe channels
W_CLASS = torch.tensor([[3.0, 1.5, 0.2, 0.2],   # class A reads channel 0 most, channel 1 too
                        [1.5, 3.0, 0.2, 0.2]])  # class B the other way round
A_CELLS, B_CELLS = (slice(2, 4), slice(2, 4)), (slice(2, 4), slice(8, 10))  # 2 x 2 cells at stride 8


def _two_object_features(imgsz: int) -> list[torch.Tensor]:
    """F per level (strides 8, 16, 32) of an image with object A (channel 0) and object B (channel 1) on a
    weak uniform background; the coarser levels see the objects in the cells they fall into."""
    feats = []
    for stride in (8, 16, 32):
        n = imgsz // stride
        f = torch.full((1, K, n, n), 0.05, dtype=torch.float64)
        shrink = stride // 8
        for ch, (rows, cols) in ((0, A_CELLS), (1, B_CELLS)):
            r = slice(rows.start // shrink, max(rows.stop // shrink, rows.start // shrink + 1))
            c = slice(cols.start // shrink, max(cols.stop // shrink, cols.start // shrink + 1))
            f[0, ch, r, c] = 1.0
        feats.append(f)
    return feats


def _module(score_pool: str) -> HeatmapEmbedding:
    m = HeatmapEmbedding(16, 2, probe_hidden=K, score_pool=score_pool).double()
    with torch.no_grad():
        m.probe.cls.weight.copy_(W_CLASS[:, :, None, None])
        m.probe.cls.bias.fill_(-4.0)
    return m


def _object_contrast(m: HeatmapEmbedding, feats, cls: int) -> float:
    """Mean H_class of class ``cls`` on its own object over the mean on the other object (level 0)."""
    with torch.no_grad():
        logits = [torch.nn.functional.conv2d(f, m.probe.cls.weight, m.probe.cls.bias) for f in feats]
        h = m.class_heatmaps(feats, logits, torch.tensor([[cls]]))[0][0, 0]
    own, other = (A_CELLS, B_CELLS) if cls == 0 else (B_CELLS, A_CELLS)
    return float(h[own].mean() / h[other].mean().clamp(min=1e-12))


@pytest.mark.parametrize("imgsz", [128, 640])
def test_class_maps_follow_their_class_at_any_size(imgsz):
    feats = _two_object_features(imgsz)
    m = _module("mean")
    assert _object_contrast(m, feats, 0) > 1.5  # H_A hotter on A's object than on B's
    assert _object_contrast(m, feats, 1) > 1.5  # and H_B the other way round


def test_summed_score_saturates_on_large_images():
    """The reason for ``score_pool: mean``: at 640 px the summed form barely tells the two objects apart."""
    small, large = _two_object_features(128), _two_object_features(640)
    m = _module("sum")
    assert _object_contrast(m, large, 0) < 1.15 < _object_contrast(m, small, 0)


@pytest.mark.parametrize("alpha", ["gradcam++", "design"])
def test_mean_pooled_closed_form_matches_autograd(alpha):
    """The autograd reference of eqs. 1-3 with y = mean over cells of sigmoid(s_c) equals the closed form."""
    g = torch.Generator().manual_seed(0)
    head = ProbeHead(16, 5, hidden=8).double()
    with torch.no_grad():
        for layer in (head.cls, head.quality):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=torch.float64) * 0.5)
            layer.bias.fill_(-3.0)
        outs = [head(torch.randn(2, 16, h, w, generator=g, dtype=torch.float64)) for h, w in [(8, 12), (4, 6), (2, 3)]]
    fs, cls = [o[0] for o in outs], [o[1] for o in outs]
    r = pool_scale(fs, "mean")
    assert r == pytest.approx(1 / (96 + 24 + 6))
    idx = torch.tensor([2, 4])[:, None, None, None]
    sel = [s.gather(1, idx.expand(-1, 1, *s.shape[-2:])) for s in cls]
    fast = gradcampp_sigmoid_linear(fs, sel, head.cls.weight.flatten(1)[[2, 4]][:, None], alpha, pool="mean")
    ref = gradcampp_autograd(fs, lambda xs: r * sum(
        torch.sigmoid(head.cls(x).gather(1, idx.expand(-1, 1, *x.shape[-2:]))).sum((1, 2, 3)) for x in xs), alpha)
    assert sum(x.abs().sum() for x in ref) > 0
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_module_mean_pool_closed_form_equals_reference():
    g = torch.Generator().manual_seed(1)
    m = HeatmapEmbedding(16, 5, probe_hidden=8, score_pool="mean").double()
    with torch.no_grad():
        for layer in (m.probe.cls, m.probe.quality):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=torch.float64) * 0.5)
            layer.bias.fill_(-3.0)
    feats = [torch.randn(1, 16, h, w, generator=g, dtype=torch.float64) for h, w in [(8, 12), (4, 6), (2, 3)]]
    a = m(feats)
    m.closed_form = False
    b = m(feats)
    for key in ("h_class", "h_bbox"):
        for x, y in zip(getattr(a, key), getattr(b, key)):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="score_pool"):
        HeatmapEmbedding(16, 5, score_pool="max")


# --------------------------------------------------------------------------------------------------
# the mask (eq. 6): absolute threshold or per-image quantile, and its diagnostics
# --------------------------------------------------------------------------------------------------
def test_quantile_mask_masks_the_stated_fraction_per_image():
    from hmpe.models.heatmap.mask_stats import threshold_mask

    g = torch.Generator().manual_seed(0)
    h = torch.rand(3, 1, 10, 10, generator=g)
    h[1] *= 0.01  # an image whose map is dim everywhere: an absolute tau masks all of it
    m = threshold_mask(h, 0.3, "quantile")
    assert m.shape == h.shape and m.dtype == h.dtype
    for b in range(3):
        assert float(1 - m[b].mean()) == pytest.approx(0.3, abs=0.011)  # 30 of 100 cells masked
    assert float(threshold_mask(h, 0.05)[1].sum()) == 0  # absolute tau: the dim image loses every cell
    with pytest.raises(ValueError, match="tau_mode"):
        threshold_mask(h, 0.3, "percentile")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        HeatmapEmbedding(16, 5, tau=2.0, tau_mode="quantile")


@pytest.mark.parametrize("tau", [0.0, 0.3, 0.4, 0.999])
def test_quantile_threshold_is_torch_quantile_lower_with_ties(tau):
    """The threshold is computed by a top-k (ONNX has no quantile operator) and equals torch.quantile's "lower"
    value, ties (the ReLU's zeros) and a one-cell map included, in fp32 and bf16."""
    from hmpe.models.heatmap.mask_stats import mask_threshold

    g = torch.Generator().manual_seed(1)
    for shape in [(3, 1, 20, 20), (2, 1, 7, 9), (1, 1, 1, 1)]:
        h = torch.rand(shape, generator=g).round(decimals=1)
        h[0].view(-1)[: h[0].numel() // 3] = 0
        for x in (h, h.bfloat16()):
            ref = torch.quantile(x.float().reshape(shape[0], -1), tau, dim=1, interpolation="lower").to(x.dtype)
            got = mask_threshold(x, tau, "quantile")
            assert got.shape == (shape[0], 1, 1, 1) and torch.equal(got.reshape(-1), ref), (shape, x.dtype)


def test_module_tau_mode_reaches_the_mask():
    torch.manual_seed(0)
    m = HeatmapEmbedding(16, 5, probe_hidden=8, tau=0.5, tau_mode="quantile").eval()
    out = m([torch.randn(2, 16, h, w) for h, w in [(8, 12), (4, 6), (2, 3)]])
    for mask in out.mask:  # at least half of each level masked, per image
        assert (1 - mask.flatten(1).mean(1) >= 0.5 - 1e-6).all()
    assert "mode='quantile'" in repr(m.mask_filter)


def test_mask_stats_accumulator_counts_background_and_objects():
    from hmpe.models.heatmap.mask_stats import MaskStatsAccumulator

    acc = MaskStatsAccumulator()
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 0, 0] = 1  # image 0: only the object's cell hot (box over cell (0,0) of a 32 x 32 input)
    mask[1, 0] = 1  # image 1: no objects, everything hot
    acc.update([mask], [torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)], (32, 32))
    s = acc.summary(["S3"])
    assert s["mask_obj_hot/S3"] == 1.0
    assert s["mask_bg_masked/S3"] == pytest.approx(15 / (15 + 16))  # 15 masked background cells of 31
