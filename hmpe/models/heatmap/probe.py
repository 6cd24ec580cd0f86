"""The probe head of the heatmap embedding (docs/method.md, heatmap embedding: the probe).

A light dense head shared over the levels; its features ``F`` are the Grad-CAM++ activations ``A``
of eqs. 1-3 (:mod:`hmpe.models.heatmap.gradcam`), its outputs the input of the probe losses
(:mod:`hmpe.models.heatmap.losses`).
"""

from __future__ import annotations

import math

import torch.nn.functional as Fn
from torch import Tensor, nn

__all__ = ["ProbeHead"]


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(16, c), c)


class _DWBlock(nn.Sequential):
    """Pointwise 1x1 + depthwise 3x3 + GroupNorm + ReLU (GN: the head is shared over levels).

    Pointwise first: the depthwise conv then runs on ``cout <= cin`` channels (on CPU a depthwise conv
    costs far more time than its FLOP share)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False),
            _gn(cout),
            nn.ReLU(inplace=True),
        )


class ProbeHead(nn.Module):
    """Light dense head shared across levels (docs/method.md, heatmap embedding: the probe).

    ``x [B,dim,H,W] -> (F [B,K,H,W], cls [B,C,H,W] logits, reg [B,4,H,W], quality [B,1,H,W] logit)``.
    The tower is ``num_convs`` separable blocks (1x1, depthwise 3x3, GN, ReLU), so ``F >= 0`` like the
    Grad-CAM activations ``A``; ``K = hidden`` (default ``dim // 2``). ``num_convs = 0`` uses ``F = x``.
    ``reg`` is the l,t,r,b distance from the location to the box sides in stride units, made
    non-negative by softplus (smooth, never a dead unit, unlike ReLU; unbounded, unlike a sigmoid).
    """

    def __init__(self, dim: int, num_classes: int, hidden: int | None = None, num_convs: int = 2,
                 prior_prob: float = 0.01):
        super().__init__()
        hidden = dim if num_convs == 0 else (hidden or max(dim // 2, 8))
        self.num_classes = num_classes
        self.hidden = hidden
        self.tower = nn.Sequential(*[_DWBlock(dim if i == 0 else hidden, hidden) for i in range(num_convs)])
        self.cls = nn.Conv2d(hidden, num_classes, 1)
        self.reg = nn.Conv2d(hidden, 4, 1)
        self.quality = nn.Conv2d(hidden, 1, 1)
        bias = -math.log((1 - prior_prob) / prior_prob)
        for m in (self.cls, self.reg, self.quality):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls.bias, bias)  # prior prob 0.01 (RetinaNet)
        nn.init.constant_(self.quality.bias, bias)  # most locations are background for quality as well

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        f = self.tower(x)  # F [B,K,H,W]
        return f, self.cls(f), Fn.softplus(self.reg(f)), self.quality(f)

