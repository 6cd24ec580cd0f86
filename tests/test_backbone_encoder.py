"""HGNetv2 backbone, sin-cos position encodings and the hybrid encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hmpe.models.rtdetr.backbone import HGNetv2, LightConvBNAct
from hmpe.models.rtdetr.encoder import HybridEncoder, RepVggBlock
from hmpe.models.rtdetr.position import sincos_2d, sincos_2d_additive


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# Public reference: timm model cards give HGNetv2 B0 / B1 / B2 classifiers 6.0M / 6.3M / 11.2M params,
# of which the head (1x1 conv to 2048 + fc 2048->1000) is 4.15M / 4.15M / 5.20M, leaving backbones of
# about 1.85M / 2.2M / 6.0M.
@pytest.mark.parametrize(
    "name, chans, band",
    [
        ("B0", [256, 512, 1024], (1.7e6, 2.0e6)),
        ("B1", [256, 512, 1024], (2.0e6, 2.4e6)),
        ("B2", [384, 768, 1536], (5.7e6, 6.3e6)),
    ],
)
def test_hgnetv2_shapes_and_params(name, chans, band):
    torch.manual_seed(0)
    m = HGNetv2(name).eval()
    x = torch.rand(1, 3, 96, 160)  # rectangular on purpose
    with torch.no_grad():
        outs = m(x)
    assert m.out_channels == chans
    assert m.out_strides == [8, 16, 32]
    assert [tuple(o.shape) for o in outs] == [(1, c, 96 // s, 160 // s) for c, s in zip(chans, [8, 16, 32])]
    n = n_params(m)
    print(f"HGNetv2-{name}: {n / 1e6:.3f}M params")
    assert band[0] < n < band[1]


@pytest.mark.parametrize("width, chans", [(0.5, [128, 256, 512]), (0.75, [192, 384, 768])])
def test_hgnetv2_width_scales_every_stage(width, chans):
    """``backbone.width``: every stem and stage conv narrower (multiples of 8), the same strides and blocks."""
    torch.manual_seed(0)
    full, thin = HGNetv2("B0"), HGNetv2("B0", width=width).eval()
    assert thin.out_channels == chans and thin.out_strides == full.out_strides
    assert [len(s.blocks) for s in thin.stages] == [len(s.blocks) for s in full.stages]
    convs = [m for m in thin.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in full.modules())
    assert all(c_mid % 8 == 0 and c_out % 8 == 0 for (_, c_mid, c_out, *_) in thin.stage_configs)
    assert n_params(thin) < n_params(full) * width  # 1x1 / 3x3 convs shrink with width squared
    with torch.no_grad():
        outs = thin(torch.rand(1, 3, 96, 160))
    assert [tuple(o.shape) for o in outs] == [(1, c, 96 // s, 160 // s) for c, s in zip(chans, [8, 16, 32])]
    assert HGNetv2("B0", width=1.0).stage_configs is HGNetv2("B0").stage_configs  # 1: the named variant itself
    with pytest.raises(ValueError, match="width must be > 0"):
        HGNetv2("B0", width=0)


def test_hgnetv2_odd_size_and_return_idx():
    m = HGNetv2("B0", return_idx=(2, 3)).eval()
    with torch.no_grad():
        outs = m(torch.rand(1, 3, 100, 70))
    assert m.out_strides == [16, 32] and m.out_channels == [512, 1024]
    assert [tuple(o.shape[-2:]) for o in outs] == [(7, 5), (4, 3)]  # ceil(100/16), ceil(70/16) ...
    # stages past the deepest requested one are not built
    assert len(HGNetv2("B0", return_idx=(1,)).stages) == 2


def test_hgnetv2_freeze():
    m = HGNetv2("B0", freeze_at=1, freeze_norm=True)
    assert not any(p.requires_grad for p in m.stem.parameters())
    assert not any(p.requires_grad for p in m.stages[0].parameters())
    assert all(p.requires_grad for p in m.stages[1].parameters())
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    m(torch.rand(1, 3, 64, 64))


class _Stand(nn.Module):
    """Stand-in strip block: [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, kind: str, channels: int, kernel_size: int):
        super().__init__()
        self.kind, self.channels, self.kernel_size = kind, channels, kernel_size
        self.proj = nn.Conv2d(channels, channels, (1, kernel_size), padding=(0, kernel_size // 2))

    def forward(self, x):
        return self.proj(x)


def _strip_layers(m: HGNetv2) -> dict[str, nn.Module]:
    return {name: mod for name, mod in m.named_modules() if isinstance(mod, _Stand)}


def test_strip_conv_hook_injected_factory():
    calls = []

    def factory(kind, channels, kernel_size):
        calls.append((kind, channels, kernel_size))
        return _Stand(kind, channels, kernel_size)

    m = HGNetv2("B0", strip_conv={"kind": "lsconv", "stages": [3, 4], "kernel_size": 9}, strip_factory=factory)
    # B0: stage 3 mid 64 (2 blocks -> the second), stage 4 mid 128 (1 block); layer_num 3 -> layers.2
    assert calls == [("lsconv", 64, 9), ("lsconv", 128, 9)]
    assert sorted(_strip_layers(m)) == ["stages.2.blocks.1.layers.2", "stages.3.blocks.0.layers.2"]
    # everything else stays a plain light conv
    assert isinstance(m.stages[2].blocks[0].layers[2], LightConvBNAct)
    assert isinstance(m.stages[2].blocks[1].layers[1], LightConvBNAct)
    outs = m(torch.rand(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 256, 8, 12), (2, 512, 4, 6), (2, 1024, 2, 3)]
    # baseline switches
    assert not _strip_layers(HGNetv2("B0", strip_conv={"kind": "none", "stages": [3, 4]}, strip_factory=factory))
    assert not _strip_layers(HGNetv2("B0", strip_conv=None))
    with pytest.raises(ValueError, match="unknown keys"):
        HGNetv2("B0", strip_conv={"kind": "lsconv", "stage": [3]}, strip_factory=factory)


def test_strip_conv_needs_a_factory_and_pretrained_skips_it(tmp_path):
    # the backbone is an RT-DETR block: the strip block's builder (hmpe.models.lsconv) is passed in, never imported
    with pytest.raises(ValueError, match="strip_factory"):
        HGNetv2("B1", strip_conv={"kind": "dsconv", "stages": [4], "kernel_size": 7})
    factory = _Stand  # a stand-in for hmpe.models.lsconv.build_strip_block: this test does not depend on that file
    m = HGNetv2("B1", strip_conv={"kind": "dsconv", "stages": [4], "kernel_size": 7}, strip_factory=factory)
    (name, mod), = _strip_layers(m).items()
    assert name == "stages.3.blocks.0.layers.2" and (mod.kind, mod.channels, mod.kernel_size) == ("dsconv", 192, 7)

    # a plain-backbone weights file loads into a strip-conv backbone: the strip block starts fresh and its
    # place in the file is reported, not loaded (hmpe.models.rtdetr.pretrained)
    from hmpe.models.rtdetr.pretrained import load_pretrained_backbone

    plain = HGNetv2("B1")
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    m2 = HGNetv2("B1", strip_conv={"kind": "dsconv", "stages": [4]}, strip_factory=factory)
    report = load_pretrained_backbone(m2, tmp_path / "plain.pth")
    torch.testing.assert_close(m2.stem.stem1.conv.weight, plain.stem.stem1.conv.weight)
    assert m2.strip_prefixes == ["stages.3.blocks.0.layers.2."]
    assert list(report.unused) == ["replaced by the strip conv"]
    assert list(report.left_at_init) == ["strip conv stages.3.blocks.0.layers.2"]


# ---------------------------------------------------------------------------------------------- PE
def test_sincos_2d_h_major_rectangular():
    h, w, dim, t = 3, 5, 16, 10000.0
    pe = sincos_2d(h, w, dim, t)
    assert pe.shape == (h * w, dim)
    f = dim // 4
    omega = 1.0 / t ** (torch.arange(f, dtype=torch.float32) / f)
    for i in range(h):
        for j in range(w):
            tok = pe[i * w + j]
            want = torch.cat([(i * omega).sin(), (i * omega).cos(), (j * omega).sin(), (j * omega).cos()])
            torch.testing.assert_close(tok, want)
    # the flattening of a real feature map puts (i, j) at i*w + j: a map holding its own row index
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    assert torch.equal(rows.flatten(), pe.new_tensor([k // w for k in range(h * w)]))
    # row-first halves: the "sin" of the first half only changes with the row
    assert torch.equal(pe[:w, :f], pe[0:1, :f].expand(w, f))
    # square maps: identical to the official w-major construction (whose first half ends up on rows)
    n = 4
    gw, gh = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    ow, oh = gw.flatten()[:, None] * omega, gh.flatten()[:, None] * omega
    official = torch.cat([ow.sin(), ow.cos(), oh.sin(), oh.cos()], dim=1)
    torch.testing.assert_close(sincos_2d(n, n, dim, t), official)
    assert sincos_2d(2, 3, 8, dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError):
        sincos_2d(2, 2, 6)


def test_sincos_2d_additive():
    h, w, dim = 3, 4, 8
    pe = sincos_2d_additive(h, w, dim)
    assert pe.shape == (h * w, dim)
    i, j, d = 2, 1, 1
    tau = 10000.0 ** (2 * d / dim)
    tok = pe[i * w + j]
    torch.testing.assert_close(tok[d], torch.tensor(i / tau).sin() + torch.tensor(j / tau).cos())
    torch.testing.assert_close(tok[dim // 2 + d], torch.tensor(i / tau).cos() + torch.tensor(j / tau).sin())


# ------------------------------------------------------------------------------------------ encoder
def _small_encoder(**kw) -> HybridEncoder:
    torch.manual_seed(0)
    cfg = dict(in_channels=[16, 24, 32], hidden_dim=32, nhead=4, dim_feedforward=64)
    cfg.update(kw)
    return HybridEncoder(**cfg)


def _feats(b=2, h=48, w=80, chans=(16, 24, 32)):
    # ceil division, as the backbone's padded stride-2 convs produce
    return [torch.randn(b, c, -(-h // s), -(-w // s)) for c, s in zip(chans, (8, 16, 32))]


def test_encoder_shapes_rectangular():
    enc = _small_encoder().eval()
    for h, w in [(48, 80), (100, 70)]:
        feats = [torch.randn(2, c, -(-h // s), -(-w // s)) for c, s in zip((16, 24, 32), (8, 16, 32))]
        with torch.no_grad():
            outs = enc(feats)
        assert [tuple(o.shape) for o in outs] == [(2, 32, *f.shape[-2:]) for f in feats]
    assert enc.out_channels == [32, 32, 32] and enc.out_strides == [8, 16, 32]


def test_encoder_real_sizes():
    # the presets' sizes with HGNetv2-B0 channels
    enc = HybridEncoder([256, 512, 1024], hidden_dim=128, dim_feedforward=512).eval()
    with torch.no_grad():
        outs = enc(HGNetv2("B0").eval()(torch.rand(1, 3, 64, 96)))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 8, 12), (1, 128, 4, 6), (1, 128, 2, 3)]
    print(f"HybridEncoder(128/512, B0): {n_params(enc) / 1e6:.3f}M params")


def test_encoder_zero_pos_masks_equal_no_position():
    enc = _small_encoder().eval()
    feats = _feats()
    masks = [None, None, torch.zeros(2, 1, 2, 3)]  # S5 of 48 x 80
    with torch.no_grad():
        masked = enc(feats, pos_masks=masks)
        full = enc(feats)
        ones = enc(feats, pos_masks=[None, None, torch.ones(2, 1, 2, 3)])
        # the same encoder with its position encoding zeroed
        enc.position_encoding = lambda h, w, device, dtype: torch.zeros(1, h * w, 32, device=device, dtype=dtype)
        no_pos = enc(feats)
    for a, b in zip(masked, no_pos):
        torch.testing.assert_close(a, b)
    for a, b in zip(ones, full):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(full[2], no_pos[2])  # position does matter


def test_encoder_pos_mask_per_token():
    # a mask that keeps PE only on token (0, 1) of S5 equals building PE' by hand
    enc = _small_encoder().eval()
    feats = _feats(b=1, h=64, w=96)  # S5 2x3
    mask = torch.zeros(1, 1, 2, 3)
    mask[0, 0, 0, 1] = 1
    pe = enc.position_encoding(2, 3, torch.device("cpu"), torch.float32)
    keep = torch.zeros(1, 6, 1)
    keep[0, 1] = 1  # token 0 * 3 + 1
    with torch.no_grad():
        got = enc(feats, pos_masks=[None, None, mask])
        enc.position_encoding = lambda h, w, device, dtype: pe * keep
        want = enc(feats)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_encoder_embeds_hook_and_layer_qkv():
    enc = _small_encoder().eval()
    feats = _feats()
    proj = enc.project(feats)
    with torch.no_grad():
        base = enc.encode(proj)
        same = enc.encode(proj, embeds=[None, None, proj[2]])  # E = X reproduces the baseline
        emb = enc.encode(proj, embeds=[None, None, torch.randn_like(proj[2])])
    for a, b in zip(base, same):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(base[2], emb[2])
    layer = enc.encoder[0].layers[0]
    src, e, pos = torch.randn(1, 6, 32), torch.randn(1, 6, 32), torch.randn(1, 6, 32)
    # q = k = E + pos, v = E, residual on src: checked against nn.MultiheadAttention directly
    with torch.no_grad():
        attn, _ = layer.self_attn(e + pos, e + pos, e)
        x = layer.norm1(src + attn)
        want = layer.norm2(x + layer.linear2(layer.activation(layer.linear1(x))))
        torch.testing.assert_close(layer(src, pos, qk=e, value=e), want)


def test_encoder_paper_pe_and_no_aifi():
    feats = _feats(b=1)
    with torch.no_grad():
        out = _small_encoder(pe="paper").eval()(feats)
        out0 = _small_encoder(num_encoder_layers=0).eval()(feats)
    assert out[2].shape == out0[2].shape == (1, 32, 2, 3)


def test_encoder_gradient_flows():
    enc = _small_encoder(num_encoder_layers=2, use_encoder_idx=(1, 2))
    feats = [f.requires_grad_() for f in _feats(b=2, h=32, w=64)]
    sum(o.square().mean() for o in enc(feats)).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    no_grad = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad


def test_backbone_gradient_flows():
    m = HGNetv2("B0")
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    sum(o.mean() for o in m(x)).backward()
    assert x.grad is not None
    assert all(p.grad is not None for p in m.parameters())


def test_repvgg_reparameterize():
    enc = _small_encoder()
    feats = _feats(b=1)
    enc.train()
    enc(feats)  # populate BN statistics
    enc.eval()
    with torch.no_grad():
        before = enc(feats)
        enc.reparameterize()
        after = enc(feats)
    assert all(m.conv is not None for m in enc.modules() if isinstance(m, RepVggBlock))
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
