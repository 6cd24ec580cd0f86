"""Deploy mode (hmpe.models.rtdetr.deploy): fused model == unfused model, for every preset and strip-block kind."""

import pytest
import torch
from torch import nn

from hmpe.models.rtdetr.deploy import fuse_conv_bn_pairs, is_fused
from hmpe.models.detector import build_model
from hmpe.models.lsconv import build_strip_block
from hmpe.utils.config import CONFIG_DIR, load_model_config, model_presets

# the presets cover LSConv, the heatmap path, MOHFE and HIDQ; the dsconv ablation row adds DSConv in a model
DSCONV = str(CONFIG_DIR / "models" / "ablation" / "dsconv.yaml")


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics / affines, non-zero box heads and path weights, so every fold matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
        for name, p in model.named_parameters():
            if name.endswith("fuse_logits") or ("bbox_head" in name and "layers.2" in name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _outputs(model, x):
    """[queries (logits | boxes) per image, heatmaps]; queries as a set: near-tied selection scores may
    swap two queries' places, which changes no detection."""
    with torch.no_grad():
        out = model(x)
    heat = out.get("heatmap")
    extra = [torch.cat([h.flatten() for h in heat.h_mixed])] if heat is not None else []
    return [torch.cat([out["pred_logits"], out["pred_boxes"]], -1), *extra]


def _assert_same(ref, got, tol=1e-4):
    q_ref, q_got = ref[0], got[0]
    assert q_ref.shape == q_got.shape
    for a, b in zip(q_ref, q_got):  # per image: every query has a counterpart within tol (L_inf)
        d = (a[:, None] - b[None]).abs().amax(-1).amin(1)
        assert float(d.max()) < tol, f"a query moved by {float(d.max()):.2e}"
    for a, b in zip(ref[1:], got[1:]):
        torch.testing.assert_close(b, a, atol=tol, rtol=tol)


@pytest.mark.parametrize("preset", model_presets() + [DSCONV])
def test_fused_model_matches_unfused(preset):
    torch.manual_seed(0)
    model = _randomise(build_model(load_model_config(preset), 4))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref = _outputs(model, x)
    backbone_ref = [f.clone() for f in model.backbone(x)]
    model.fuse()
    assert is_fused(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "a BatchNorm2d was left unfused"
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and min(m.weight.shape[-2:]) > 1]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    _assert_same(ref, _outputs(model, x))
    for a, b in zip(backbone_ref, model.backbone(x)):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    # the constants are computed once: a second call reuses the cache and gives the same result
    _assert_same(ref, _outputs(model.fuse(), x))


@pytest.mark.parametrize("kind", ["lsconv", "dsconv", "strip"])
@pytest.mark.parametrize("sampler", ["gather", "grid_sample"])
def test_strip_blocks_fold(kind, sampler):
    from hmpe.models.rtdetr.deploy import fuse_model

    block = build_strip_block(kind, 8, 5, sampler=sampler)
    _randomise(block, seed=2)
    x = torch.randn(1, 8, 12, 10)
    with torch.no_grad():
        ref = block(x)
        fuse_model(block)
        got = block(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_pairing_is_by_child_order_only():
    """A norm registered before its conv, or of another width, is left alone."""
    seq = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5))
    assert fuse_conv_bn_pairs(seq) == 0
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.BatchNorm2d(4))
    assert fuse_conv_bn_pairs(seq) == 1 and isinstance(seq[1], nn.Identity) and seq[0].bias is not None


@pytest.mark.parametrize("folded", [False, True])
def test_snake_path_one_gather_equals_two(folded):
    """Inference path of SnakePath (one gather of both morphs' taps, one matmul) == snake_x(x) + snake_y(x)."""
    from hmpe.models.lsconv import SnakePath

    torch.manual_seed(3)
    path = SnakePath(6, 5, kernel_size=7, extend_scope=1.5).eval()
    with torch.no_grad():
        for snake in (path.snake_x, path.snake_y):
            snake.offset_conv.weight.normal_(0, 0.5)  # bent strips: fractional, clamped coordinates
        if folded:
            path.fold_affine(torch.rand(5) + 0.5, torch.randn(5))
        x = torch.randn(2, 6, 9, 11)
        ref = path.snake_x(x) + path.snake_y(x)
        got = path(x)
    assert path.snake_x.deformation(x).abs().max() > 0.5
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
