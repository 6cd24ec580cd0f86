"""HGNetv2 backbone (B0..B6) with an optional strip-convolution (LSConv) hook.

Architecture follows the public PP-HGNetV2 definitions as used by D-FINE / DEIM: a stem that reaches
stride 4, then four stages of HG blocks (stage 1 keeps stride 4, stages 2-4 each halve the map with a
depthwise stride-2 conv). A HG block runs ``layer_num`` convs in sequence, concatenates the block input
with every intermediate output and aggregates them with a squeeze (1x1 -> out/2) + excitation
(1x1 -> out) pair; every block after the first in a stage is residual.

The graph and the module names are timm's ``hgnetv2_b0`` ... ``hgnetv2_b6`` (``stem.stem1.conv``,
``stages.2.blocks.1.layers.0.conv1``, ``...aggregation.0``, ``lab.scale``), which D-FINE / DEIM's
``PPHGNetV2_B*`` files share, so ImageNet weights keep the function they were trained as; stage outputs are
tested equal to timm's. Loading such a file (and RT-DETRv2's key layout) is :mod:`hmpe.models.rtdetr.pretrained`;
nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = [
    "ARCH_CONFIGS",
    "scaled_arch",
    "PUBLIC_USE_LAB",
    "ConvBNAct",
    "HGNetv2",
    "HG_Block",
    "HG_Stage",
    "LearnableAffineBlock",
    "LightConvBNAct",
    "StemBlock",
]

# name -> (stem (in, mid, out), stages: (in, mid, out, num_blocks, downsample, light_block, kernel, layer_num))
ARCH_CONFIGS: dict[str, dict] = {
    "B0": {
        "stem": (3, 16, 16),
        "stages": (
            (16, 16, 64, 1, False, False, 3, 3),
            (64, 32, 256, 1, True, False, 3, 3),
            (256, 64, 512, 2, True, True, 5, 3),
            (512, 128, 1024, 1, True, True, 5, 3),
        ),
    },
    "B1": {
        "stem": (3, 24, 32),
        "stages": (
            (32, 32, 64, 1, False, False, 3, 3),
            (64, 48, 256, 1, True, False, 3, 3),
            (256, 96, 512, 2, True, True, 5, 3),
            (512, 192, 1024, 1, True, True, 5, 3),
        ),
    },
    "B2": {
        "stem": (3, 24, 32),
        "stages": (
            (32, 32, 96, 1, False, False, 3, 4),
            (96, 64, 384, 1, True, False, 3, 4),
            (384, 128, 768, 3, True, True, 5, 4),
            (768, 256, 1536, 1, True, True, 5, 4),
        ),
    },
    "B3": {
        "stem": (3, 24, 32),
        "stages": (
            (32, 32, 128, 1, False, False, 3, 5),
            (128, 64, 512, 1, True, False, 3, 5),
            (512, 128, 1024, 3, True, True, 5, 5),
            (1024, 256, 2048, 1, True, True, 5, 5),
        ),
    },
    "B4": {  # RT-DETRv2's PPHGNetV2 "L"
        "stem": (3, 32, 48),
        "stages": (
            (48, 48, 128, 1, False, False, 3, 6),
            (128, 96, 512, 1, True, False, 3, 6),
            (512, 192, 1024, 3, True, True, 5, 6),
            (1024, 384, 2048, 1, True, True, 5, 6),
        ),
    },
    "B5": {  # "X"
        "stem": (3, 32, 64),
        "stages": (
            (64, 64, 128, 1, False, False, 3, 6),
            (128, 128, 512, 2, True, False, 3, 6),
            (512, 256, 1024, 5, True, True, 5, 6),
            (1024, 512, 2048, 2, True, True, 5, 6),
        ),
    },
    "B6": {  # "H"
        "stem": (3, 48, 96),
        "stages": (
            (96, 96, 192, 2, False, False, 3, 6),
            (192, 192, 512, 3, True, False, 3, 6),
            (512, 384, 1024, 6, True, True, 5, 6),
            (1024, 768, 2048, 3, True, True, 5, 6),
        ),
    },
}
# The public ImageNet weights of B0-B3 were trained with the learnable affine blocks (timm builds them with
# use_lab=True), those of B4-B6 without; a file's lab tensors only mean something in a model that has them.
PUBLIC_USE_LAB = {"B0": True, "B1": True, "B2": True, "B3": True, "B4": False, "B5": False, "B6": False}

_STAGE_STRIDES = (4, 8, 16, 32)
_CHANNEL_STEP = 8  # scaled widths are multiples of it (SIMD-friendly, as timm's make_divisible rounds)


def scaled_arch(cfg: dict, width: float) -> dict:
    """``cfg`` (an ``ARCH_CONFIGS`` entry) with every stem and stage width times ``width``, rounded to a multiple
    of 8 (at least 8); each stage's input follows the previous output. ``width == 1`` returns ``cfg`` itself."""
    if width == 1.0:
        return cfg

    def c(n: int) -> int:
        return max(_CHANNEL_STEP, int(n * width / _CHANNEL_STEP + 0.5) * _CHANNEL_STEP)

    stem_in, stem_mid, stem_out = cfg["stem"]
    stages, c_prev = [], c(stem_out)
    for (_, mid, out, *rest) in cfg["stages"]:
        stages.append((c_prev, c(mid), c(out), *rest))
        c_prev = c(out)
    return {"stem": (stem_in, c(stem_mid), c(stem_out)), "stages": tuple(stages)}


_STRIP_KEYS = {"kind", "stages", "kernel_size"}


class LearnableAffineBlock(nn.Module):
    """Scalar ``scale * x + bias`` after an activation (HGNetv2's "lab" option)."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale]))
        self.bias = nn.Parameter(torch.tensor([bias]))

    def forward(self, x: Tensor) -> Tensor:
        # In x's dtype: a [1]-shaped fp32 parameter would promote a bf16 activation under autocast to fp32,
        # and every later layer of the backbone would then run (and store for backward) in fp32.
        return self.scale.to(x.dtype) * x + self.bias.to(x.dtype)


class ConvBNAct(nn.Module):
    """Conv (no bias) -> BN -> ReLU (optional) -> learnable affine (optional, only with act)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        use_act: bool = True,
        use_lab: bool = False,
    ) -> None:
        super().__init__()
        # Even kernels (the stem's 2x2) get no padding here; the stem pads explicitly (right/bottom).
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=(kernel_size - 1) // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU() if use_act else nn.Identity()
        self.lab = LearnableAffineBlock() if (use_act and use_lab) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.lab(self.act(self.bn(self.conv(x))))


class LightConvBNAct(nn.Module):
    """1x1 conv (channel mix, no act) followed by a depthwise kxk conv (spatial, with act)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, use_lab: bool = False) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_chs, out_chs, 1, use_act=False, use_lab=use_lab)
        self.conv2 = ConvBNAct(out_chs, out_chs, kernel_size, groups=out_chs, use_act=True, use_lab=use_lab)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class StemBlock(nn.Module):
    """Stride-4 stem: 3x3/2 conv, then a max-pool branch and a 2x2-conv branch, concat, 3x3/2, 1x1."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, use_lab: bool = False) -> None:
        super().__init__()
        self.stem1 = ConvBNAct(in_chs, mid_chs, 3, stride=2, use_lab=use_lab)
        self.stem2a = ConvBNAct(mid_chs, mid_chs // 2, 2, use_lab=use_lab)
        self.stem2b = ConvBNAct(mid_chs // 2, mid_chs, 2, use_lab=use_lab)
        self.stem3 = ConvBNAct(mid_chs * 2, mid_chs, 3, stride=2, use_lab=use_lab)
        self.stem4 = ConvBNAct(mid_chs, out_chs, 1, use_lab=use_lab)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=1, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem1(x)
        # 2x2 kernels shrink the map by one: pad right/bottom so both branches keep H x W.
        x = F.pad(x, (0, 1, 0, 1))
        x2 = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))
        x1 = self.pool(x)
        x = torch.cat([x1, x2], dim=1)
        return self.stem4(self.stem3(x))


class HG_Block(nn.Module):  # noqa: N801 - public name
    """``layer_num`` chained convs; concat(input, all outputs) -> squeeze/excitation 1x1 convs."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        layer_num: int,
        kernel_size: int = 3,
        residual: bool = False,
        light_block: bool = False,
        use_lab: bool = False,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(layer_num):
            c_in = in_chs if i == 0 else mid_chs
            if light_block:
                self.layers.append(LightConvBNAct(c_in, mid_chs, kernel_size, use_lab=use_lab))
            else:
                self.layers.append(ConvBNAct(c_in, mid_chs, kernel_size, use_lab=use_lab))
        total_chs = in_chs + layer_num * mid_chs
        self.aggregation = nn.Sequential(
            ConvBNAct(total_chs, out_chs // 2, 1, use_lab=use_lab),  # squeeze
            ConvBNAct(out_chs // 2, out_chs, 1, use_lab=use_lab),  # excitation
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        outs = [x]
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        x = self.aggregation(torch.cat(outs, dim=1))
        return x + identity if self.residual else x


class HG_Stage(nn.Module):  # noqa: N801 - public name
    """Optional depthwise 3x3/2 downsample (no act) followed by ``num_blocks`` HG blocks."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        num_blocks: int,
        layer_num: int,
        downsample: bool = True,
        light_block: bool = False,
        kernel_size: int = 3,
        use_lab: bool = False,
    ) -> None:
        super().__init__()
        if downsample:
            self.downsample = ConvBNAct(in_chs, in_chs, 3, stride=2, groups=in_chs, use_act=False, use_lab=use_lab)
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *[
                HG_Block(
                    in_chs if i == 0 else out_chs,
                    mid_chs,
                    out_chs,
                    layer_num,
                    kernel_size=kernel_size,
                    residual=i > 0,
                    light_block=light_block,
                    use_lab=use_lab,
                )
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


def _freeze_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` with a FrozenBatchNorm2d holding the same statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = _freeze_bn(child)
        if new is not child:
            setattr(module, name, new)
    return module


class HGNetv2(nn.Module):
    """HGNetv2 backbone returning the feature maps of the stages in ``return_idx``.

    Args:
        name: "B0" ... "B6" (timm's ``hgnetv2_b0`` ... ``hgnetv2_b6``; B4/B5/B6 are RT-DETRv2's L/X/H).
        width: factor on every stem and stage width (:func:`scaled_arch`); 1 is the named variant, the only
            width that public ImageNet weights fit (:func:`hmpe.models.rtdetr.pretrained.load_pretrained_backbone`
            refuses the others).
        return_idx: 0-based stage indices to return; (1, 2, 3) gives S3, S4, S5 (strides 8, 16, 32).
        use_lab: learnable affine after each activation; the public B0-B3 ImageNet weights have it
            (``PUBLIC_USE_LAB``), so the B0/B1 presets set it. The default stays False so that a model
            config written without the key keeps meaning the graph it was trained with.
        freeze_at: -1 freezes nothing; 0 freezes the stem; k >= 1 freezes the stem and stages 1..k.
        freeze_norm: replace every BatchNorm2d by a FrozenBatchNorm2d (statistics and affine fixed).
            Both freezes apply to the HGNetv2 layers only: strip-conv blocks are new layers and always train.
        strip_conv: ``{kind: lsconv|dsconv|none, stages: [3, 4], kernel_size: 9}``; in the last HG block
            of each listed stage (1-based, as in the paper) the last of its ``layers`` (mid -> mid) is
            replaced by ``strip_factory(kind, mid_channels, kernel_size)``. None or kind "none": baseline.
            ``strip_prefixes`` lists the state-dict prefixes of the replaced layers (a pretrained file's
            tensors there have no counterpart; :mod:`hmpe.models.rtdetr.pretrained` reports them).
        strip_factory: builder for the strip block, required when a strip conv is requested:
            :func:`hmpe.models.lsconv.build_strip_block`, which ``build_model`` passes (the RT-DETR blocks
            never import the HMPE parts).
    """

    def __init__(
        self,
        name: str = "B0",
        width: float = 1.0,
        return_idx: Sequence[int] = (1, 2, 3),
        use_lab: bool = False,
        freeze_at: int = -1,
        freeze_norm: bool = False,
        strip_conv: dict | None = None,
        strip_factory: Callable[[str, int, int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if name not in ARCH_CONFIGS:
            raise ValueError(f"unknown HGNetv2 variant {name!r}; choose from {sorted(ARCH_CONFIGS)}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        cfg = scaled_arch(ARCH_CONFIGS[name], float(width))
        return_idx = [int(i) for i in return_idx]
        if not return_idx or any(i < 0 or i > 3 for i in return_idx) or sorted(set(return_idx)) != return_idx:
            raise ValueError(f"return_idx must be increasing stage indices in 0..3, got {return_idx}")
        self.name = name
        self.width = float(width)
        self.use_lab = bool(use_lab)
        self.return_idx = return_idx
        self.stage_configs = cfg["stages"]

        self.stem = StemBlock(*cfg["stem"], use_lab=use_lab)
        # Stages past the deepest requested one are not built: they would cost time and leave
        # parameters without gradients (which DDP rejects). Their keys in a weights file are ignored.
        self.stages = nn.ModuleList(
            HG_Stage(c_in, c_mid, c_out, n_blocks, layer_num, down, light, k, use_lab=use_lab)
            for (c_in, c_mid, c_out, n_blocks, down, light, k, layer_num) in cfg["stages"][: max(return_idx) + 1]
        )
        self.out_channels = [cfg["stages"][i][2] for i in return_idx]
        self.out_strides = [_STAGE_STRIDES[i] for i in return_idx]

        if freeze_at >= 0:
            frozen = [self.stem] + [self.stages[i] for i in range(min(freeze_at, len(self.stages)))]
            for m in frozen:
                for p in m.parameters():
                    p.requires_grad_(False)
        if freeze_norm:
            _freeze_bn(self)
        strip = self._parse_strip_conv(strip_conv)
        self.strip_conv = strip  # normalised config (None = baseline), kept for reporting
        self.strip_prefixes: list[str] = []
        if strip is not None:  # after the freezes: the new layers start fresh and train
            if strip_factory is None:
                raise ValueError("strip_conv needs a strip_factory, e.g. hmpe.models.lsconv.build_strip_block "
                                 "(hmpe.models.detector.build_model passes it)")
            self._apply_strip_conv(strip, strip_factory)

    # -- strip conv -------------------------------------------------------------------------------
    @staticmethod
    def _parse_strip_conv(strip_conv: dict | None) -> dict | None:
        if strip_conv is None:
            return None
        unknown = set(strip_conv) - _STRIP_KEYS
        if unknown:
            raise ValueError(f"strip_conv: unknown keys {sorted(unknown)}; allowed {sorted(_STRIP_KEYS)}")
        kind = str(strip_conv.get("kind", "lsconv")).lower()
        if kind in ("none", "", "off"):
            return None
        stages = [int(s) for s in strip_conv.get("stages", (3, 4))]
        if any(s < 1 or s > 4 for s in stages):
            raise ValueError(f"strip_conv.stages are 1-based stage numbers in 1..4, got {stages}")
        return {"kind": kind, "stages": sorted(set(stages)), "kernel_size": int(strip_conv.get("kernel_size", 9))}

    def _apply_strip_conv(self, strip: dict, factory: Callable[..., nn.Module]) -> None:
        for s in strip["stages"]:
            if s - 1 >= len(self.stages):
                raise ValueError(f"strip_conv: stage {s} is not built (return_idx={self.return_idx})")
            c_mid, layer_num = self.stage_configs[s - 1][1], self.stage_configs[s - 1][7]
            if layer_num < 2:  # with a single layer the last one is in->mid, not mid->mid
                raise ValueError(f"strip_conv: stage {s} has no mid->mid layer to replace")
            block = self.stages[s - 1].blocks[-1]
            block.layers[-1] = factory(strip["kind"], c_mid, strip["kernel_size"])
            last_block = len(self.stages[s - 1].blocks) - 1
            self.strip_prefixes.append(f"stages.{s - 1}.blocks.{last_block}.layers.{layer_num - 1}.")

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> list[Tensor]:
        """x [B,3,H,W] in [0,1] -> feature maps of ``return_idx`` stages (e.g. S3, S4, S5)."""
        x = self.stem(x)
        outs = []
        for idx, stage in enumerate(self.stages):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
        return outs
