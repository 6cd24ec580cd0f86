"""RT-DETR hybrid encoder: input projection, AIFI (attention on selected levels) and CCFM fusion.

Data flow (L levels, e.g. S3, S4, S5)::

    feats_l [B, C_l, H_l, W_l] --project--> X_l [B, D, H_l, W_l]
    AIFI on use_encoder_idx levels: tokens [B, H*W, D], q = k = X + PE (PE optionally masked), v = X
    CCFM top-down (lateral 1x1, nearest upsample, concat, CSPRepLayer) then bottom-up
    (3x3/2 conv, concat, CSPRepLayer) -> outs_l [B, D, H_l, W_l]

Module names follow the public RT-DETR / D-FINE code (``input_proj.0.conv``, ``encoder.0.layers.0``,
``lateral_convs``, ``fpn_blocks``, ``downsample_convs``, ``pan_blocks``).

Hooks for the HMPE parts (docs/method.md, heatmap embedding and MOHFE):
- ``pos_masks``: per level ``[B,1,H,W]`` multipliers of the position encoding at AIFI levels (eq. 6-7).
- ``embeds``: per level ``[B,D,H,W]`` tensors that replace the attention input of the first AIFI layer:
  ``q = k = E + PE'``, ``v = E``, while the residual stream stays ``X`` (MOHFE, eq. 5).
- ``pe``: "rtdetr" (concatenated sin-cos, default) or "paper" (eq. 7 additive form).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmpe.models.rtdetr.common import get_activation
from hmpe.models.rtdetr.position import MODES, PositionEncoding, masked_position_encoding

__all__ = [
    "CSPRepLayer",
    "ConvNormLayer",
    "HybridEncoder",
    "RepVggBlock",
    "TransformerEncoder",
    "TransformerEncoderLayer",
]


class ConvNormLayer(nn.Module):
    """kxk conv (no bias, 'same' padding for odd k) -> BN -> activation."""

    def __init__(self, ch_in: int, ch_out: int, kernel_size: int, stride: int = 1, act: str | None = None):
        super().__init__()
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=False)
        self.norm = nn.BatchNorm2d(ch_out)
        self.act = get_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


def _fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of the single conv equal to conv -> BN in eval mode."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    return weight, bias


class RepVggBlock(nn.Module):
    """3x3 conv-BN + 1x1 conv-BN, summed, then activation; re-parameterisable to one 3x3 conv."""

    def __init__(self, ch_in: int, ch_out: int, act: str | None = "relu"):
        super().__init__()
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3, act=None)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1, act=None)
        self.act = get_activation(act)
        self.conv: nn.Conv2d | None = None  # set by reparameterize()

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None:
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both branches (with their BN statistics) into one 3x3 conv, for inference/export."""
        w3, b3 = _fuse_conv_bn(self.conv1.conv, self.conv1.norm)
        w1, b1 = _fuse_conv_bn(self.conv2.conv, self.conv2.norm)
        conv = nn.Conv2d(w3.shape[1], w3.shape[0], 3, padding=1, bias=True).to(w3.device, w3.dtype)
        conv.weight.copy_(w3 + F.pad(w1, (1, 1, 1, 1)))
        conv.bias.copy_(b3 + b1)
        self.conv = conv
        del self.conv1, self.conv2


class CSPRepLayer(nn.Module):
    """CSP fusion block (RT-DETR's RepC3): two 1x1 branches, RepVGG bottlenecks on one, summed."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3, expansion: float = 1.0,
                 act: str | None = "silu"):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden, 1, act=act)
        self.conv2 = ConvNormLayer(in_channels, hidden, 1, act=act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden, act=act) for _ in range(num_blocks)])
        self.conv3 = ConvNormLayer(hidden, out_channels, 1, act=act) if hidden != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class TransformerEncoderLayer(nn.Module):
    """Self-attention + FFN, post-norm by default (as RT-DETR's AIFI).

    ``forward(src, pos, qk=None, value=None)``: the residual stream is ``src``; queries and keys are
    ``(qk if given else src) + pos`` and values are ``value if given else src``. With ``qk = value = E``
    this is MOHFE's attention (Q, K from E + PE', V from E) on top of the features X.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 1024, dropout: float = 0.0,
                 activation: str = "gelu", normalize_before: bool = False):
        super().__init__()
        self.normalize_before = normalize_before
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = get_activation(activation)

    def forward(self, src: Tensor, pos: Tensor | None = None, qk: Tensor | None = None,
                value: Tensor | None = None) -> Tensor:
        """src [B,N,D]; pos [B or 1,N,D] or None; qk, value [B,N,D] or None -> [B,N,D]."""
        residual = src
        if self.normalize_before:
            src = self.norm1(src)
        q_in = src if qk is None else qk
        if pos is not None:
            q_in = q_in + pos  # position on queries and keys only, never on values
        v_in = src if value is None else value
        attn, _ = self.self_attn(q_in, q_in, value=v_in, need_weights=False)
        src = residual + self.dropout1(attn)
        if not self.normalize_before:
            src = self.norm1(src)

        residual = src
        if self.normalize_before:
            src = self.norm2(src)
        src = self.linear2(self.dropout(self.activation(self.linear1(src))))
        src = residual + self.dropout2(src)
        if not self.normalize_before:
            src = self.norm2(src)
        return src


class TransformerEncoder(nn.Module):
    """``num_layers`` copies of a layer; an alternative attention input (qk/value) drives the first only.

    Later layers attend over their own (already embedding-informed) output, as a stacked encoder would.
    """

    def __init__(self, layer: TransformerEncoderLayer, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, src: Tensor, pos: Tensor | None = None, qk: Tensor | None = None,
                value: Tensor | None = None) -> Tensor:
        x = src
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, qk=qk if i == 0 else None, value=value if i == 0 else None)
        return self.norm(x) if self.norm is not None else x


def _check_encoder_args(in_channels: list[int], feat_strides: Sequence[int], use_encoder_idx: list[int],
                        hidden_dim: int, pe: str) -> None:
    if len(feat_strides) != len(in_channels):
        raise ValueError(f"{len(in_channels)} in_channels but {len(feat_strides)} feat_strides")
    if any(i < 0 or i >= len(in_channels) for i in use_encoder_idx):
        raise ValueError(f"use_encoder_idx {use_encoder_idx} out of range for {len(in_channels)} levels")
    if pe not in MODES:
        raise ValueError(f"pe must be 'rtdetr' or 'paper', got {pe!r}")
    if pe == "rtdetr" and hidden_dim % 4 != 0:
        raise ValueError(f"hidden_dim must be divisible by 4 for the 2D sin-cos encoding, got {hidden_dim}")


class HybridEncoder(nn.Module):
    """RT-DETR hybrid encoder; see the module docstring for the data flow and HMPE hooks.

    Args:
        in_channels: channels of the backbone levels (e.g. HGNetv2-B0: [256, 512, 1024]).
        feat_strides: their strides; the outputs keep them.
        hidden_dim: D, channels of every output level (divisible by 4 and by nhead).
        use_encoder_idx: levels (0-based) that get AIFI; (2,) = S5.
        num_encoder_layers: transformer layers per AIFI level (0 disables AIFI).
        pe_temperature: sin-cos temperature.
        expansion, depth_mult: CSPRepLayer width ratio and depth (round(3 * depth_mult) RepVGG blocks).
        act: activation of the conv layers; enc_act: of the transformer FFN.
        pe: "rtdetr" (concatenated sin-cos) or "paper" (the additive form of eq. 7).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        feat_strides: Sequence[int] = (8, 16, 32),
        hidden_dim: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        enc_act: str = "gelu",
        use_encoder_idx: Sequence[int] = (2,),
        num_encoder_layers: int = 1,
        pe_temperature: float = 10000,
        expansion: float = 1.0,
        depth_mult: float = 1.0,
        act: str = "silu",
        pe: str = "rtdetr",
    ) -> None:
        super().__init__()
        in_channels, use_encoder_idx = list(in_channels), [int(i) for i in use_encoder_idx]
        _check_encoder_args(in_channels, feat_strides, use_encoder_idx, hidden_dim, pe)
        self.in_channels = in_channels
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = use_encoder_idx
        self.num_encoder_layers = num_encoder_layers
        # the PE of AIFI; the detector hands the same object to the heatmap path (one PE for both)
        self.position = PositionEncoding(pe, hidden_dim, float(pe_temperature))
        self.out_channels = [hidden_dim] * len(in_channels)
        self.out_strides = list(feat_strides)

        # input projection: 1x1 conv + BN per level, no activation (as RT-DETR)
        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, hidden_dim, 1, bias=False), norm=nn.BatchNorm2d(hidden_dim)))
            for c in in_channels
        )

        # AIFI: one transformer encoder per selected level
        layer = TransformerEncoderLayer(hidden_dim, nhead, dim_feedforward, dropout, activation=enc_act)
        self.encoder = nn.ModuleList(
            TransformerEncoder(layer, num_encoder_layers) for _ in (use_encoder_idx if num_encoder_layers > 0 else [])
        )
        self._build_ccfm(len(in_channels), hidden_dim, round(3 * depth_mult), expansion, act)

    def _build_ccfm(self, n: int, dim: int, n_blocks: int, expansion: float, act: str) -> None:
        """CCFM's layers: top-down (deepest level first), then bottom-up; ``n_blocks`` RepVGG blocks each."""
        self.lateral_convs = nn.ModuleList(ConvNormLayer(dim, dim, 1, act=act) for _ in range(n - 1))
        self.fpn_blocks = nn.ModuleList(
            CSPRepLayer(dim * 2, dim, n_blocks, expansion=expansion, act=act) for _ in range(n - 1)
        )
        self.downsample_convs = nn.ModuleList(ConvNormLayer(dim, dim, 3, stride=2, act=act) for _ in range(n - 1))
        self.pan_blocks = nn.ModuleList(
            CSPRepLayer(dim * 2, dim, n_blocks, expansion=expansion, act=act) for _ in range(n - 1)
        )

    @property
    def pe(self) -> str:
        """Form of the position encoding ("rtdetr" | "paper")."""
        return self.position.mode

    @property
    def pe_temperature(self) -> float:
        return self.position.temperature

    # -- pieces -----------------------------------------------------------------------------------
    def project(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Backbone maps [B,C_l,H,W] -> [B,D,H,W] per level."""
        if len(feats) != len(self.input_proj):
            raise ValueError(f"expected {len(self.input_proj)} feature maps, got {len(feats)}")
        return [proj(f) for proj, f in zip(self.input_proj, feats)]

    def position_encoding(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """[1, h*w, D], h-major. Recomputed per call (no state while training) unless the deploy-mode
        cache is on (:meth:`enable_constant_cache`), which keeps one per size, device and dtype."""
        cache = getattr(self, "_pe_cache", None)
        key = (h, w, str(device), dtype)
        if cache is not None and key in cache:
            return cache[key]
        pe = self.position(h, w, device, dtype)[None]
        if cache is not None and not torch.jit.is_tracing():
            cache[key] = pe
        return pe

    def enable_constant_cache(self) -> None:
        """Deploy mode (:func:`hmpe.models.rtdetr.deploy.fuse_model`): compute each position encoding once."""
        self._pe_cache: dict = {}

    def encode(self, proj_feats: Sequence[Tensor], pos_masks: Sequence[Tensor | None] | None = None,
               embeds: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """AIFI on the selected levels, then CCFM. Inputs are projected maps [B,D,H_l,W_l]."""
        feats = list(proj_feats)
        for enc, lvl in zip(self.encoder, self.use_encoder_idx):
            x = feats[lvl]
            h, w = x.shape[-2:]
            src = x.flatten(2).transpose(1, 2)  # [B, H*W, D], token i*W + j
            pos = self.position_encoding(h, w, x.device, x.dtype)
            mask = pos_masks[lvl] if pos_masks is not None else None
            if mask is not None:
                pos = masked_position_encoding(pos, mask)  # PE' = Mask * PE (eq. 6-7): [B,N,D]
            emb = embeds[lvl] if embeds is not None else None
            if emb is not None:
                emb = emb.flatten(2).transpose(1, 2)
            out = enc(src, pos, qk=emb, value=emb)
            feats[lvl] = out.transpose(1, 2).reshape(x.shape)
        return self.fuse(feats)

    def fuse(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """CCFM: top-down then bottom-up path aggregation over [B,D,H_l,W_l] maps (shallow first)."""
        n = len(feats)
        # top-down: inner[0] is always the current deepest processed map
        inner = [feats[-1]]
        for k, idx in enumerate(range(n - 1, 0, -1)):
            high = self.lateral_convs[k](inner[0])
            inner[0] = high
            low = feats[idx - 1]
            # size= rather than scale_factor=2: odd input sizes give maps that are not exactly 2x apart
            up = F.interpolate(high, size=low.shape[-2:], mode="nearest")
            inner.insert(0, self.fpn_blocks[k](torch.cat([up, low], dim=1)))
        # bottom-up
        outs = [inner[0]]
        for k in range(n - 1):
            down = self.downsample_convs[k](outs[-1])
            outs.append(self.pan_blocks[k](torch.cat([down, inner[k + 1]], dim=1)))
        return outs

    def forward(self, feats: Sequence[Tensor], pos_masks: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """Backbone maps -> encoded maps, each [B, hidden_dim, H_l, W_l]."""
        return self.encode(self.project(feats), pos_masks)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold every RepVGG block into a single conv (inference / export only)."""
        for m in self.modules():
            if isinstance(m, RepVggBlock) and m.conv is None:
                m.reparameterize()
