"""HGNetv2 backbone (B0..B2) with an optional strip-convolution (LSConv) hook.

Architecture follows the public PP-HGNetV2 definitions as used by D-FINE / DEIM: a stem that reaches
stride 4, then four stages of HG blocks (stage 1 keeps stride 4, stages 2-4 each halve the map with a
depthwise stride-2 conv). A HG block runs ``layer_num`` convs in sequence, concatenates the block input
with every intermediate output and aggregates them with a squeeze (1x1 -> out/2) + excitation
(1x1 -> out) pair; every block after the first in a stage is residual.

Module names mirror the public implementation (``stem.stem1.conv``, ``stages.2.blocks.1.layers.0.conv1``,
``...aggregation.0``, ``lab.scale``) so that a locally stored public state dict loads strictly.
Nothing is ever downloaded: ``weights`` is a path to a local file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = [
    "ARCH_CONFIGS",
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
}

_STAGE_STRIDES = (4, 8, 16, 32)
_STRIP_KEYS = {"kind", "stages", "kernel_size"}


class LearnableAffineBlock(nn.Module):
    """Scalar ``scale * x + bias`` after an activation (HGNetv2's "lab" option)."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale]))
        self.bias = nn.Parameter(torch.tensor([bias]))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x + self.bias


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


def _default_strip_factory(kind: str, channels: int, kernel_size: int) -> nn.Module:
    # Imported lazily: the plain backbone must work without hmpe.models.lsconv.
    from hmpe.models import lsconv

    return lsconv.build_strip_block(kind, channels, kernel_size=kernel_size)


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
        name: "B0", "B1" or "B2".
        return_idx: 0-based stage indices to return; (1, 2, 3) gives S3, S4, S5 (strides 8, 16, 32).
        use_lab: learnable affine after each activation (the public B0/B1 ImageNet weights use it).
        freeze_at: -1 freezes nothing; 0 freezes the stem; k >= 1 freezes the stem and stages 1..k.
        freeze_norm: replace every BatchNorm2d by a FrozenBatchNorm2d (after loading ``weights``).
        strip_conv: ``{kind: lsconv|dsconv|none, stages: [3, 4], kernel_size: 9}``; in the last HG block
            of each listed stage (1-based, as in the paper) the last of its ``layers`` (mid -> mid) is
            replaced by ``strip_factory(kind, mid_channels, kernel_size)``. None or kind "none": baseline.
        weights: path to a local state dict (strict). A file saved from the plain backbone also loads
            into a strip-conv backbone: it is loaded before the replacement, which then starts fresh.
        strip_factory: builder for the strip block; defaults to ``hmpe.models.lsconv.build_strip_block``
            (imported only when a strip conv is requested).
    """

    def __init__(
        self,
        name: str = "B0",
        return_idx: Sequence[int] = (1, 2, 3),
        use_lab: bool = False,
        freeze_at: int = -1,
        freeze_norm: bool = False,
        strip_conv: dict | None = None,
        weights: str | os.PathLike | None = None,
        strip_factory: Callable[[str, int, int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if name not in ARCH_CONFIGS:
            raise ValueError(f"unknown HGNetv2 variant {name!r}; choose from {sorted(ARCH_CONFIGS)}")
        cfg = ARCH_CONFIGS[name]
        return_idx = [int(i) for i in return_idx]
        if not return_idx or any(i < 0 or i > 3 for i in return_idx) or sorted(set(return_idx)) != return_idx:
            raise ValueError(f"return_idx must be increasing stage indices in 0..3, got {return_idx}")
        self.name = name
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

        strip = self._parse_strip_conv(strip_conv)
        self.strip_conv = strip  # normalised config (None = baseline), kept for reporting
        if weights is not None:
            state = self._read_weights(weights)
            if strip is not None and self._fits(state):
                self._load(state, weights)  # plain-backbone file: load, then replace layers fresh
                state = None
        if strip is not None:
            self._apply_strip_conv(strip, strip_factory or _default_strip_factory)
        if weights is not None and state is not None:
            self._load(state, weights)

        if freeze_at >= 0:
            frozen = [self.stem] + [self.stages[i] for i in range(min(freeze_at, len(self.stages)))]
            for m in frozen:
                for p in m.parameters():
                    p.requires_grad_(False)
        if freeze_norm:
            _freeze_bn(self)

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

    # -- weights ----------------------------------------------------------------------------------
    @staticmethod
    def _read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"HGNetv2 weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        # Accept the usual checkpoint wrappers around a state dict.
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise ValueError(f"HGNetv2 weights file {path} does not hold a state dict")
        return state

    def _key_diff(self, state: dict[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
        own = self.state_dict()
        # BatchNorm's step counter is optional in a state dict (FrozenBatchNorm2d has none).
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        dropped = tuple(f"stages.{i}." for i in range(len(self.stages), len(self.stage_configs)))
        unexpected = [k for k in state if k not in own and not (dropped and k.startswith(dropped))]
        shape = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)
        ]
        return missing, unexpected, shape

    def _fits(self, state: dict[str, Tensor]) -> bool:
        return not any(self._key_diff(state))

    def _load(self, state: dict[str, Tensor], path: str | os.PathLike) -> None:
        missing, unexpected, shape = self._key_diff(state)
        if missing or unexpected or shape:

            def fmt(items: list[str]) -> str:
                head = ", ".join(items[:20])
                return head + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")

            lines = [f"HGNetv2-{self.name} weights file {path} does not fit the model (strict load)."]
            if missing:
                lines.append(f"  missing keys ({len(missing)}): {fmt(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys ({len(unexpected)}): {fmt(unexpected)}")
            if shape:
                lines.append(f"  shape mismatches ({len(shape)}): {fmt(shape)}")
            if any(".lab." in k for k in missing + unexpected):
                lines.append("  hint: 'lab' keys differ - set use_lab to match the file")
            raise RuntimeError("\n".join(lines))
        # Strictness was checked above; strict=False only tolerates num_batches_tracked / dropped stages.
        self.load_state_dict(state, strict=False)

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
