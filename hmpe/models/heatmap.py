"""HMPE heatmap embedding (paper sec. 3.1, eqs. 1-4 and 6-7; docs/method.md).

Pipeline per image, on the projected features ``X_l [B, D, H_l, W_l]`` (strides 8, 16, 32)::

    ProbeHead (shared over levels): X_l -> F_l [B,K,H_l,W_l] -> cls s [B,C,..], reg b [B,4,..], quality q [B,1,..]
    H_class (eqs. 1-3, top-3 classes, per-pixel max), H_bbox (same eqs., y = sum sigmoid(q) or L_reg)
    -> min-max per image (jointly over levels) -> finer levels max-pooled into coarser ones
    -> H_mixed = lambda_l H_class + (1 - lambda_l) H_bbox      (eq. 4, lambda_l = sigmoid(p_l))
    -> Mask = 1[H_mixed > tau]                                 (eq. 6)
    -> PE' = Mask * PE                                         (eq. 7)

Interpretations (every one is also in ``docs/method.md``):
- ``A`` of eqs. 1-3 is ``F``, the input of the probe's final 1x1 layers (non-negative: the tower ends
  with ReLU).
- ``y^c = sum_l sum_ij sigmoid(s_c(i,j))`` is summed over *all* levels of the image, so the channel
  weights ``beta_k^c`` are one vector per image and class (the probe's channels mean the same thing on
  every level, its weights are shared), and the raw maps of the levels share one scale.
- ``alpha = d2 + d3`` (eq. 1) taken literally is ``alpha="design"``. Classic Grad-CAM++
  (Chattopadhay et al.) uses ``alpha = d2 / (2 d2 + sum_ab A_ab d3)`` with the exponential trick
  ``d2 = g^2, d3 = g^3`` (``alpha="gradcam++"``, the module's default: in trained detectors the design
  alpha left H_bbox identically zero on 11-21 of 32 held-out images). With the exact derivatives of a sigmoid, the
  design alpha is negative where ``sigmoid(s) > 0.5`` (for ``|w_k| < ~1``); once the probe is confident
  those locations dominate eq. 2, every beta_k <= 0 and the map is identically zero (seen for H_bbox on
  6-11 of 32 images after a short training run; see docs/method.md).
- For the sigmoid of a 1x1 layer, ``g = sigma'(s) w_k``, ``d2 = sigma''(s) w_k^2``,
  ``d3 = sigma'''(s) w_k^3``; since ``sigma' > 0``, ``ReLU(g) = sigma' ReLU(w_k)`` and eq. 2 factorises:
  ``beta_k = ReLU(w_k) (w_k^2 sum_ij sigma' sigma'' + w_k^3 sum_ij sigma' sigma''')`` -- O(HW + K).
- The heatmaps are computed from detached ``F`` under ``no_grad``: they carry no gradient into the
  probe or the backbone (the mask is not differentiated: docs/method.md). ``H_mixed`` is differentiable
  w.r.t. the gate ``p`` only, which learns through whatever multiplies features by ``H_mixed``
  downstream (MOHFE / HIDQ embeddings).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from hmpe.models.mask_stats import mix_and_mask, threshold_mask

__all__ = [
    "ProbeHead",
    "HeatmapEmbedding",
    "HeatmapOutput",
    "MaskFilter",
    "masked_position_encoding",
    "probe_loss",
    "assign_dense_targets",
    "default_scale_ranges",
    "sigmoid_derivatives",
    "gradcampp_sigmoid_linear",
    "gradcampp_linear",
    "gradcampp_autograd",
    "minmax_per_image",
    "resize_map",
    "fuse_levels",
]


# ----------------------------------------------------------------------------------------------------
# probe head
# ----------------------------------------------------------------------------------------------------
def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(16, c), c)


class _DWBlock(nn.Sequential):
    """Pointwise 1x1 + depthwise 3x3 + GroupNorm + ReLU (GN: the head is shared over levels).

    Pointwise first: the depthwise conv then runs on ``cout <= cin`` channels (on CPU a depthwise conv
    costs about as much time as a dense 1x1 of the same width, far above its FLOP share)."""

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


# ----------------------------------------------------------------------------------------------------
# dense targets and probe loss
# ----------------------------------------------------------------------------------------------------
def default_scale_ranges(strides: Sequence[int]) -> list[tuple[float, float]]:
    """Box max-side ranges (input pixels) per level: ``(hi_{l-1}, hi_l]`` with ``hi_l = 8 * stride_l``
    and the last level open-ended. Strides (8,16,32) -> (0,64], (64,128], (128,inf)."""
    his = [8.0 * s for s in strides[:-1]] + [math.inf]
    los = [0.0] + his[:-1]
    return list(zip(los, his))


def _locations(sizes: Sequence[tuple[int, int]], strides: Sequence[int], device, dtype):
    """Centres of all locations of all levels, concatenated level after level (h-major within a level).

    Returns xy [P,2] pixels, stride [P], level [P], row [P], col [P], level height [P], width [P]."""
    xy, st, lv, rows, cols, hs, ws = [], [], [], [], [], [], []
    for l, ((h, w), s) in enumerate(zip(sizes, strides)):
        ii, jj = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        ii, jj = ii.reshape(-1), jj.reshape(-1)
        xy.append(torch.stack([(jj.to(dtype) + 0.5) * s, (ii.to(dtype) + 0.5) * s], 1))
        n = h * w
        st.append(torch.full((n,), float(s), device=device, dtype=dtype))
        lv.append(torch.full((n,), l, device=device, dtype=torch.long))
        rows.append(ii), cols.append(jj)
        hs.append(torch.full((n,), h, device=device, dtype=torch.long))
        ws.append(torch.full((n,), w, device=device, dtype=torch.long))
    cat = lambda t: torch.cat(t, 0)  # noqa: E731
    return cat(xy), cat(st), cat(lv), cat(rows), cat(cols), cat(hs), cat(ws)


def _hw(image_size: int | Sequence[int]) -> tuple[float, float]:
    if isinstance(image_size, (int, float)):
        return float(image_size), float(image_size)
    h, w = image_size
    return float(h), float(w)


def assign_dense_targets(
    boxes: Tensor,
    sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    image_size: int | Sequence[int],
    radius: float = 1.5,
    scale_ranges: Sequence[tuple[float, float]] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Dense (FCOS-style) assignment of one image over all levels' locations.

    boxes [N,4] normalised cxcywh; sizes [(H_l, W_l)]; image_size (h, w) pixels of the network input.
    A location of level l is positive for box n when
      - the box's max side (pixels) lies in level l's range (``default_scale_ranges``), and
      - the location centre lies in the centre region ``|x - cx| < radius * s``, ``|y - cy| < radius * s``
        and inside the box, or it is the cell that contains the box centre (so that every box,
        however small, has at least one positive at its level).
    Ties (a location positive for several boxes) go to the smallest box.
    Returns pos [P] bool, gt index [P] long (valid where pos), ltrb [P,4] in stride units (>= 0).
    """
    device, dtype = boxes.device, torch.float32 if boxes.dtype != torch.float64 else torch.float64
    xy, st, lv, rows, cols, hs, ws = _locations(sizes, strides, device, dtype)
    P, N = xy.shape[0], boxes.shape[0]
    if N == 0:
        return (torch.zeros(P, dtype=torch.bool, device=device), torch.zeros(P, dtype=torch.long, device=device),
                torch.zeros(P, 4, dtype=dtype, device=device))
    H, W = _hw(image_size)
    b = boxes.to(dtype) * torch.tensor([W, H, W, H], device=device, dtype=dtype)
    cx, cy, bw, bh = b.unbind(-1)  # [N]
    x1, y1, x2, y2 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
    ranges = torch.tensor(list(scale_ranges or default_scale_ranges(strides)), device=device, dtype=dtype)
    lo, hi = ranges[lv, 0], ranges[lv, 1]  # [P]
    side = torch.maximum(bw, bh)
    in_range = (side[None] > lo[:, None]) & (side[None] <= hi[:, None])  # [P,N]
    x, y = xy[:, 0:1], xy[:, 1:2]  # [P,1]
    ltrb = torch.stack([x - x1[None], y - y1[None], x2[None] - x, y2[None] - y], -1)  # [P,N,4] pixels
    in_box = ltrb.amin(-1) > 0
    r = radius * st[:, None]
    in_centre = ((x - cx[None]).abs() < r) & ((y - cy[None]).abs() < r)
    ci = torch.minimum(torch.floor(cy[None] / st[:, None]).long().clamp(min=0), hs[:, None] - 1)  # [P,N]
    cj = torch.minimum(torch.floor(cx[None] / st[:, None]).long().clamp(min=0), ws[:, None] - 1)
    centre_cell = (rows[:, None] == ci) & (cols[:, None] == cj)
    pos_pn = in_range & ((in_centre & in_box) | centre_cell)
    area = (bw * bh)[None].expand(P, N)
    cost = torch.where(pos_pn, area, torch.full_like(area, math.inf))
    _, gt = cost.min(1)  # smallest box wins ties
    pos = pos_pn.any(1)
    sel = ltrb[torch.arange(P, device=device), gt] / st[:, None]
    return pos, gt, sel.clamp(min=0)


def _flat_levels(maps: Sequence[Tensor]) -> Tensor:
    """[B,c,H_l,W_l] per level -> [B,P,c]."""
    return torch.cat([m.flatten(2) for m in maps], 2).transpose(1, 2)


def sigmoid_focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise sigmoid focal loss (RetinaNet), not reduced."""
    p = logits.sigmoid()
    ce = Fn.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


def probe_loss(
    probe_outputs: Sequence[dict[str, Tensor]],
    targets: Sequence[dict[str, Tensor]],
    strides: Sequence[int],
    image_size: int | Sequence[int],
    *,
    radius: float = 1.5,
    scale_ranges: Sequence[tuple[float, float]] | None = None,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    huber_beta: float = 1.0,
    weight_cls: float = 1.0,
    weight_reg: float = 1.0,
    weight_quality: float = 1.0,
) -> dict[str, Tensor]:
    """Auxiliary dense losses of the probe (docs/method.md), normalised by the batch's positives.

    probe_outputs: per level ``{"cls": [B,C,H,W], "reg": [B,4,H,W], "quality": [B,1,H,W]}``.
    - ``loss_probe_cls``: focal loss on all locations, one-hot class target at positives;
    - ``loss_probe_reg``: ``L_reg`` = Huber (smooth-L1, ``huber_beta`` stride units) on l,t,r,b,
      averaged over the 4 sides per positive location, summed over positives;
    - ``loss_probe_quality``: BCE of the quality logit against ``exp(-L_reg)`` (detached) at positives
      and 0 at negatives, summed over all locations (as YOLOX's objectness).
    Each is divided by ``max(#positives in the batch, 1)`` and weighted. Images without objects are
    valid: all their locations are negatives.
    """
    # fp32 whatever the autocast dtype (the probe's losses are losses, see docs/method.md "Mixed precision")
    cls = _flat_levels([o["cls"] for o in probe_outputs]).float()  # [B,P,C]
    reg = _flat_levels([o["reg"] for o in probe_outputs]).float()  # [B,P,4]
    qual = _flat_levels([o["quality"] for o in probe_outputs])[..., 0].float()  # [B,P]
    sizes = [tuple(o["cls"].shape[-2:]) for o in probe_outputs]
    B, P, C = cls.shape
    # Dense targets, no boolean indexing: a mask-select or ``if p.any()`` waits for the device (a host
    # sync per image on CUDA); multiplying by the positive mask gives the same sums without one.
    cls_t, reg_t, pos = [], [], []
    for t in targets:
        boxes, labels = t["boxes"].to(cls.device), t["labels"].to(cls.device).long()
        p, gt, ltrb = assign_dense_targets(boxes, sizes, strides, image_size, radius, scale_ranges)
        onehot = (Fn.one_hot(labels[gt], C).to(cls.dtype) if labels.numel() else cls.new_zeros(P, C))
        cls_t.append(onehot * p[:, None])
        reg_t.append(ltrb.to(reg.dtype))
        pos.append(p)
    cls_t, reg_t, pos = torch.stack(cls_t), torch.stack(reg_t), torch.stack(pos)  # [B,P,C], [B,P,4], [B,P]
    posf = pos.to(cls.dtype)
    num_pos = posf.sum().clamp(min=1)
    loss_cls = sigmoid_focal_loss(cls, cls_t, focal_alpha, focal_gamma).sum() / num_pos
    l_reg = Fn.smooth_l1_loss(reg, reg_t, beta=huber_beta, reduction="none").mean(-1)  # [B,P]
    loss_reg = (l_reg * posf).sum() / num_pos
    q_t = torch.exp(-l_reg.detach()) * posf  # exp(-L_reg) at positives, 0 elsewhere
    loss_q = Fn.binary_cross_entropy_with_logits(qual, q_t, reduction="sum") / num_pos
    return {
        "loss_probe_cls": weight_cls * loss_cls,
        "loss_probe_reg": weight_reg * loss_reg,
        "loss_probe_quality": weight_quality * loss_q,
    }


# ----------------------------------------------------------------------------------------------------
# Grad-CAM++ heatmaps (eqs. 1-3)
# ----------------------------------------------------------------------------------------------------
def sigmoid_derivatives(s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sigma and its first three derivatives as polynomials of sigma = sigmoid(s)."""
    p = torch.sigmoid(s)
    d1 = p * (1 - p)
    d2 = d1 * (1 - 2 * p)
    d3 = d1 * (1 - 6 * p + 6 * p * p)
    return p, d1, d2, d3


def _check_alpha(alpha: str) -> None:
    if alpha not in ("design", "gradcam++"):
        raise ValueError(f"alpha must be 'design' or 'gradcam++', got {alpha!r}")


def gradcampp_sigmoid_linear(feats: Sequence[Tensor], logits: Sequence[Tensor], weight: Tensor,
                             alpha: str = "design") -> list[Tensor]:
    """Closed form of eqs. 1-3 for ``y^t = sum_l sum_ij sigmoid(s_t)``, ``s_t = w_t . F + b_t`` (1x1 layer).

    feats: per level F [B,K,H,W]; logits: per level s [B,T,H,W] (T targets, e.g. the top-3 classes);
    weight: w [B,T,K] or [T,K]. Returns raw (un-normalised) maps per level [B,T,H,W].
    g = s1 w_k, d2 = s2 w_k^2, d3 = s3 w_k^3 with s1, s2, s3 the sigmoid's derivatives at s.
    ``alpha="design"``: alpha = d2 + d3 (eq. 1 taken literally); since s1 > 0, ReLU(g) = s1 ReLU(w_k)
    and eq. 2 factorises: beta_k = ReLU(w_k) (w_k^2 sum_ij s1 s2 + w_k^3 sum_ij s1 s3), O(HW + K).
    ``alpha="gradcam++"``: classic alpha = g^2 / (2 g^2 + S_k g^3) = 1 / (2 + S_k g) where g > 0,
    S_k = sum_ab A_k(ab) over all levels. H = ReLU(sum_k beta_k F_k) (eq. 3).
    """
    _check_alpha(alpha)
    B = feats[0].shape[0]
    w = weight if weight.dim() == 3 else weight[None].expand(B, -1, -1)  # [B,T,K]
    if alpha == "design":
        a2 = a3 = 0
        for s in logits:
            _, d1, d2, d3 = sigmoid_derivatives(s)
            a2 = a2 + (d1 * d2).sum((2, 3))  # [B,T]
            a3 = a3 + (d1 * d3).sum((2, 3))
        beta = w.clamp(min=0) * (w * w * a2[..., None] + w * w * w * a3[..., None])  # [B,T,K] eqs. 1-2
    else:
        # ReLU(g) = s1 ReLU(w_k) (s1 > 0); with u = S_k ReLU(g): g / (2 + S_k g) = (u / (2 + u)) / S_k, so one
        # [B,T,K,HW] buffer, divided in place (3-4x faster than the literal form). S_k = 0 means F_k = 0
        # everywhere, so beta_k does not matter there (eq. 3 multiplies it by F_k): it is set to 0.
        S = sum(f.sum((2, 3)) for f in feats)  # [B,K]; A = F >= 0
        c = (S[:, None, :] * w.clamp(min=0))[..., None]  # [B,T,K,1]
        beta = 0
        for s in logits:
            u = sigmoid_derivatives(s)[1].flatten(2)[:, :, None, :] * c  # [B,T,K,HW] = S_k ReLU(g)
            beta = beta + u.div_(u + 2).sum(-1)  # [B,T,K]
        beta = beta / torch.where(S > 0, S, torch.ones_like(S))[:, None, :]
    return [torch.einsum("btk,bkhw->bthw", beta, f).clamp(min=0) for f in feats]  # eq. 3


def gradcampp_linear(feats: Sequence[Tensor], derivs: Sequence[tuple[Tensor, Tensor, Tensor]],
                     weight: Tensor, alpha: str = "design") -> list[Tensor]:
    """Closed form of eqs. 1-3 for a separable target over a 1x1 layer ``z = W F + b``:
    ``y = sum_l sum_ij sum_m phi_m(z_m(i,j))``.

    derivs: per level (phi', phi'', phi''') each [B,M,H,W] evaluated at z; weight W [M,K].
    Then g_k = sum_m phi'_m W_mk, d2_k = sum_m phi''_m W_mk^2, d3_k = sum_m phi'''_m W_mk^3 exactly
    (the cross terms vanish because phi is separable in m). Returns raw maps per level [B,1,H,W].
    """
    _check_alpha(alpha)
    S = sum(f.sum((2, 3)) for f in feats)[:, :, None, None]  # [B,K,1,1]
    beta = 0
    for f, (d1, d2, d3) in zip(feats, derivs):
        g = torch.einsum("bmhw,mk->bkhw", d1, weight)
        if alpha == "design":
            a = torch.einsum("bmhw,mk->bkhw", d2, weight ** 2) + torch.einsum("bmhw,mk->bkhw", d3, weight ** 3)
            beta = beta + (a * g.clamp(min=0)).sum((2, 3))  # [B,K] eq. 2 (alpha: eq. 1)
        else:
            gp = g.clamp(min=0)
            beta = beta + (gp / (2 + S * gp)).sum((2, 3))
    return [torch.einsum("bk,bkhw->bhw", beta, f).clamp(min=0)[:, None] for f in feats]  # eq. 3


def _grad(out: Tensor, inputs: Sequence[Tensor], create_graph: bool) -> list[Tensor]:
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    gs = torch.autograd.grad(out, list(inputs), create_graph=create_graph, retain_graph=True,
                             allow_unused=True, materialize_grads=True)
    return list(gs)


def gradcampp_autograd(feats: Sequence[Tensor], y_fn: Callable[[list[Tensor]], Tensor],
                       alpha: str = "design") -> list[Tensor]:
    """Reference eqs. 1-3 by ``torch.autograd.grad`` (create_graph for the 2nd and 3rd order).

    feats: per level F [B,K,H,W]; y_fn(list of F) -> y [B] (one target per image, e.g.
    ``sum_l sum_ij sigmoid(s_c)``). Exact for any head in which the score at (i,j) depends on F at
    (i,j) only (a 1x1 final layer, a per-location MLP, any element-wise loss on top): then
    ``d/dF_k(ij) sum_ab g_k(ab)`` is the diagonal second derivative. Costs 2K backward passes.
    ``alpha="gradcam++"`` uses the classic alpha (first derivatives only). Returns raw maps [B,1,H,W].
    """
    _check_alpha(alpha)
    with torch.inference_mode(False), torch.enable_grad():  # clone: usable under inference_mode too
        fs = [f.detach().clone().requires_grad_(True) for f in feats]
        y = y_fn(fs).sum()  # images are independent: grads of the batch sum are per-image grads
        g = _grad(y, fs, create_graph=alpha == "design")
        if alpha == "gradcam++":
            S = sum(f.detach().sum((2, 3)) for f in fs)[:, :, None, None]  # [B,K,1,1]
            beta = 0
            for gl in g:
                gl = gl.detach()
                a = gl ** 2 / (2 * gl ** 2 + S * gl ** 3)
                a = torch.where(gl != 0, a, torch.zeros_like(a))
                beta = beta + (a * gl.clamp(min=0)).sum((2, 3))
        else:
            K = fs[0].shape[1]
            beta = torch.zeros(fs[0].shape[0], K, dtype=fs[0].dtype, device=fs[0].device)
            for k in range(K):
                d2 = [d[:, k] for d in _grad(sum(gl[:, k].sum() for gl in g), fs, create_graph=True)]
                d3 = [d[:, k] for d in _grad(sum(d.sum() for d in d2), fs, create_graph=False)]
                for gl, a2, a3 in zip(g, d2, d3):
                    beta[:, k] += ((a2 + a3) * gl[:, k].clamp(min=0)).sum((1, 2)).detach()  # eqs. 1-2
    return [torch.einsum("bk,bkhw->bhw", beta, f.detach()).clamp(min=0)[:, None] for f in feats]  # eq. 3


def _elementwise_derivatives(phi: Callable[[Tensor], Tensor], z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """phi', phi'', phi''' of an element-wise function at z, by autograd (grad of the sum is element-wise)."""
    with torch.inference_mode(False), torch.enable_grad():
        z = z.detach().clone().requires_grad_(True)
        y = phi(z)
        d1 = _grad(y.sum(), [z], create_graph=True)[0]
        d2 = _grad(d1.sum(), [z], create_graph=True)[0]
        d3 = _grad(d2.sum(), [z], create_graph=False)[0]
    return d1.detach(), d2.detach(), d3.detach()


# ----------------------------------------------------------------------------------------------------
# normalisation, resizing, mask and masked PE (eqs. 4, 6, 7)
# ----------------------------------------------------------------------------------------------------
def minmax_per_image(maps: Sequence[Tensor], eps: float = 1e-12) -> list[Tensor]:
    """Min-max normalise [B,1,H_l,W_l] maps to [0,1] per image, jointly over the levels."""
    lo = torch.stack([m.amin((1, 2, 3)) for m in maps], 0).amin(0)[:, None, None, None]
    hi = torch.stack([m.amax((1, 2, 3)) for m in maps], 0).amax(0)[:, None, None, None]
    den = (hi - lo).clamp(min=eps)
    return [(m - lo) / den for m in maps]


def resize_map(m: Tensor, size: Sequence[int]) -> Tensor:
    """Resize [B,1,h,w] to ``size``: max pooling when shrinking (a one-cell hot spot of a small object
    survives), bilinear (align_corners=False) when enlarging."""
    size = (int(size[0]), int(size[1]))
    if tuple(m.shape[-2:]) == size:
        return m
    if size[0] <= m.shape[-2] and size[1] <= m.shape[-1]:
        h, w = int(m.shape[-2]), int(m.shape[-1])  # Python ints: static kernel sizes in a trace
        kh, kw = h // size[0], w // size[1]
        if kh * size[0] == h and kw * size[1] == w:
            # whole factors (strides 8/16/32): the same bins as adaptive pooling, and an ONNX export with a
            # dynamic batch axis works (adaptive_max_pool2d's exporter needs fully static input shapes)
            return Fn.max_pool2d(m, (kh, kw))
        return Fn.adaptive_max_pool2d(m, size)
    return Fn.interpolate(m, size=size, mode="bilinear", align_corners=False)


def fuse_levels(maps: Sequence[Tensor], mode: str = "max") -> list[Tensor]:
    """"Three upsampled masks": combine the per-level maps [B,1,H_l,W_l] (finest level first).

    ``"max"``: every level's map resized to every level's H_l x W_l, fused by per-pixel max;
    ``"down"``: only finer levels are max-pooled into coarser ones (a level keeps its own sharp map and
    also shows every smaller object); ``"none"``: each level keeps its own map.
    """
    if mode == "none":
        return list(maps)
    if mode not in ("max", "down"):
        raise ValueError(f"fuse mode must be 'max', 'down' or 'none', got {mode!r}")
    out = []
    for l, target in enumerate(maps):
        size = target.shape[-2:]
        fused = target
        for m in (maps if mode == "max" else maps[:l]):
            if m is not target:
                fused = torch.maximum(fused, resize_map(m, size))
        out.append(fused)
    return out


class MaskFilter(nn.Module):
    """Eq. 6: ``Mask(i,j) = 1[H_mixed(i,j) > tau]`` (tau = 0 is eq. 6 literally). Not differentiated."""

    def __init__(self, tau: float = 0.05):
        super().__init__()
        self.tau = float(tau)

    def forward(self, h: Tensor) -> Tensor:
        return threshold_mask(h, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


def masked_position_encoding(pe: Tensor, mask: Tensor) -> Tensor:
    """Eq. 7: ``PE' = Mask * PE``.

    pe: [H*W, D] or [B, H*W, D] tokens h-major (``hmpe.models.position``), or a map [B|1, D, H, W];
    mask: [B,1,H,W]. Returns [B, H*W, D] for token input, [B, D, H, W] for map input.
    Hot cells keep the encoding bit for bit; cold cells are exactly zero.
    """
    if pe.dim() == 4:
        return pe * mask
    m = mask.flatten(2).transpose(1, 2).to(pe.dtype)  # [B,HW,1]
    return (pe if pe.dim() == 3 else pe[None]) * m


@functools.lru_cache(maxsize=8)  # a constant per grid: figures and the explorer ask for it again and again
def _position_encoding(mode: str, h: int, w: int, dim: int, temperature: float, device, dtype) -> Tensor:
    """The (shared, cached) encoding of one grid; callers must not modify it in place."""
    from hmpe.models.position import sincos_2d, sincos_2d_additive

    if mode == "rtdetr":
        return sincos_2d(h, w, dim, temperature, device=device, dtype=dtype)
    if mode == "paper":
        return sincos_2d_additive(h, w, dim, temperature, device=device, dtype=dtype)
    raise ValueError(f"pe must be 'rtdetr' or 'paper', got {mode!r}")


# ----------------------------------------------------------------------------------------------------
# the module
# ----------------------------------------------------------------------------------------------------
@dataclass
class HeatmapOutput:
    """Output of :class:`HeatmapEmbedding`; every map is per level ``[B,1,H_l,W_l]`` in [0,1].

    - ``h_class``, ``h_bbox``: normalised, fused heatmaps, no gradient;
    - ``h_mixed``: eq. 4, differentiable w.r.t. the gate only;
    - ``mask``: eq. 6, {0,1}, no gradient;
    - ``probe``: per level ``{"cls", "reg", "quality"}`` raw probe outputs (with grad in training),
      the input of :func:`probe_loss`;
    - ``class_scores`` [B,C]: image-level score ``max_l max_ij sigmoid(s_c)``;
      ``topk_classes`` [B,T]: the classes whose maps make ``H_class``;
    - ``gate`` [L]: ``lambda_l = sigmoid(p_l)``.
    """

    h_class: list[Tensor]
    h_bbox: list[Tensor]
    h_mixed: list[Tensor]
    mask: list[Tensor]
    probe: list[dict[str, Tensor]]
    class_scores: Tensor
    topk_classes: Tensor
    gate: Tensor
    strides: tuple[int, ...]
    image_size: tuple[int, int]
    dim: int
    pe_mode: str = "rtdetr"
    temperature: float = 10000.0
    bbox_source: list[str] = field(default_factory=list)  # per image: "quality" or "loss"

    @property
    def num_levels(self) -> int:
        return len(self.mask)

    def position_encoding(self, level: int) -> Tensor:
        """Unmasked PE of a level [H*W, D] (h-major), ``pe_mode`` 'rtdetr' or 'paper'."""
        h, w = self.mask[level].shape[-2:]
        m = self.mask[level]
        return _position_encoding(self.pe_mode, h, w, self.dim, self.temperature, m.device, m.dtype)

    def masked_pe(self, level: int, pe: Tensor | None = None) -> Tensor:
        """Eq. 7 at a level: ``Mask * PE`` -> [B, H*W, D] (pe defaults to ``position_encoding(level)``)."""
        return masked_position_encoding(self.position_encoding(level) if pe is None else pe, self.mask[level])

    def masked_pes(self) -> list[Tensor]:
        return [self.masked_pe(l) for l in range(self.num_levels)]


class HeatmapEmbedding(nn.Module):
    """Probe head + Grad-CAM++ heatmaps + gate + mask filter (eqs. 1-4, 6, 7; docs/method.md).

    ``forward(feats, targets=None, image_size=None) -> HeatmapOutput`` with feats per level
    ``[B,dim,H_l,W_l]``; ``loss(out, targets, image_size=None) -> dict`` (the probe losses).
    - ``bbox_heat="quality"``: ``y = sum_l sum_ij sigmoid(q)`` (works at inference);
      ``"loss"``: ``y = L_reg`` (Huber of the probe's l,t,r,b against the assigned targets) when
      ``targets`` are given and the image has positives; other images fall back to quality.
    - ``closed_form=True``: the closed form (default, export-friendly); ``False``: the autograd reference.
    - ``fuse_levels``: how the per-level maps become "three upsampled masks" (:func:`fuse_levels`):
      ``"down"`` (default: finer maps max-pooled into every coarser level), ``"max"`` (every map
      resized to every level, max) or ``"none"``.
    - ``alpha``: ``"gradcam++"`` (classic Grad-CAM++, default) or ``"design"`` (eq. 1 taken literally;
      goes dark once the probe is confident, see docs/method.md).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_levels: int = 3,
        strides: Sequence[int] = (8, 16, 32),
        tau: float = 0.05,
        bbox_heat: str = "quality",
        pe: str = "rtdetr",
        topk_classes: int = 3,
        closed_form: bool = True,
        probe_convs: int = 2,
        probe_hidden: int | None = None,
        fuse_levels: str = "down",
        temperature: float = 10000.0,
        radius: float = 1.5,
        scale_ranges: Sequence[tuple[float, float]] | None = None,
        huber_beta: float = 1.0,
        alpha: str = "gradcam++",
        loss_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        _check_alpha(alpha)
        if fuse_levels not in ("max", "down", "none"):
            raise ValueError(f"fuse_levels must be 'max', 'down' or 'none', got {fuse_levels!r}")
        if bbox_heat not in ("quality", "loss"):
            raise ValueError(f"bbox_heat must be 'quality' or 'loss', got {bbox_heat!r}")
        if pe not in ("rtdetr", "paper"):
            raise ValueError(f"pe must be 'rtdetr' or 'paper', got {pe!r}")
        if len(strides) != num_levels:
            raise ValueError(f"{num_levels} levels but strides {tuple(strides)}")
        self.dim, self.num_classes, self.num_levels = dim, num_classes, num_levels
        self.strides = tuple(int(s) for s in strides)
        self.bbox_heat, self.pe, self.topk_classes = bbox_heat, pe, topk_classes
        self.closed_form, self.fuse, self.temperature = closed_form, fuse_levels, temperature
        self.radius, self.huber_beta, self.alpha = radius, huber_beta, alpha
        self.scale_ranges = list(scale_ranges) if scale_ranges is not None else default_scale_ranges(self.strides)
        w = {"cls": 1.0, "reg": 1.0, "quality": 1.0}
        w.update(loss_weights or {})
        self.loss_weights = w
        self.probe = ProbeHead(dim, num_classes, hidden=probe_hidden, num_convs=probe_convs)
        self.gate = nn.Parameter(torch.zeros(num_levels))  # p_l; lambda_l = sigmoid(p_l) = 0.5 (eq. 4)
        self.mask_filter = MaskFilter(tau)

    # -- heatmaps -------------------------------------------------------------------------------------
    def class_heatmaps(self, fs: list[Tensor], cls: list[Tensor], classes: Tensor) -> list[Tensor]:
        """H_class per level [B,1,H,W], normalised and fused, for the classes ``classes`` [B,T] (per-pixel max
        over them): ``forward`` passes the top-T classes; the explorer passes one chosen class. fs / cls:
        the probe's F and class logits per level (the first two outputs of :class:`ProbeHead`)."""
        return fuse_levels(minmax_per_image(self._class_maps(fs, cls, classes)), self.fuse)

    def _class_maps(self, fs: list[Tensor], cls: list[Tensor], top: Tensor) -> list[Tensor]:
        """Raw H_class per level [B,1,H,W]: eqs. 1-3 for each of the top-T classes, per-pixel max."""
        w = self.probe.cls.weight.flatten(1).to(fs[0].dtype)  # [C,K]
        if self.closed_form:
            sel = [s.gather(1, top[:, :, None, None].expand(-1, -1, *s.shape[-2:])) for s in cls]  # [B,T,H,W]
            maps = gradcampp_sigmoid_linear(fs, sel, w[top], self.alpha)  # [B,T,H,W] per level
            return [m.amax(1, keepdim=True) for m in maps]
        out = None
        for t in range(top.shape[1]):
            idx = top[:, t][:, None, None, None]

            def y_fn(xs, idx=idx):
                return sum(torch.sigmoid(self._head(self.probe.cls, x).gather(
                    1, idx.expand(-1, 1, *x.shape[-2:]))).sum((1, 2, 3)) for x in xs)

            maps = gradcampp_autograd(fs, y_fn, self.alpha)
            out = maps if out is None else [torch.maximum(a, b) for a, b in zip(out, maps)]
        return out

    @staticmethod
    def _head(layer: nn.Conv2d, x: Tensor) -> Tensor:
        return Fn.conv2d(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))

    def _quality_maps(self, fs: list[Tensor], qual: list[Tensor]) -> list[Tensor]:
        """Raw H_bbox per level [B,1,H,W] with y = sum sigmoid(q)."""
        if self.closed_form:
            return gradcampp_sigmoid_linear(fs, qual, self.probe.quality.weight.flatten(1).to(fs[0].dtype), self.alpha)
        return gradcampp_autograd(
            fs, lambda xs: sum(torch.sigmoid(self._head(self.probe.quality, x)).sum((1, 2, 3)) for x in xs), self.alpha)

    def _loss_maps(self, fs: list[Tensor], targets, image_size) -> tuple[list[Tensor], Tensor]:
        """Raw H_bbox per level with y = L_reg (Huber of softplus(reg) vs the assigned l,t,r,b).

        Returns the maps and has_pos [B] (images without positives must fall back)."""
        sizes = [tuple(f.shape[-2:]) for f in fs]
        B = fs[0].shape[0]
        pos_l, tgt_l = [], []
        pos_all, tgt_all = [], []
        for t in targets:
            p, _, ltrb = assign_dense_targets(t["boxes"].to(fs[0].device), sizes, self.strides, image_size,
                                              self.radius, self.scale_ranges)
            pos_all.append(p), tgt_all.append(ltrb.to(fs[0].dtype))
        pos = torch.stack(pos_all)  # [B,P]
        tgt = torch.stack(tgt_all)  # [B,P,4]
        npos = pos.sum(1).clamp(min=1).to(fs[0].dtype)  # [B]
        start = 0
        for h, w in sizes:
            n = h * w
            pos_l.append(pos[:, start:start + n].reshape(B, 1, h, w).to(fs[0].dtype) / npos[:, None, None, None])
            tgt_l.append(tgt[:, start:start + n].transpose(1, 2).reshape(B, 4, h, w))
            start += n
        layer = self.probe.reg
        beta_h = self.huber_beta

        def phi(z, t, pw):  # element-wise: Huber(softplus(z) - t) / 4 (mean over sides) at positives
            return Fn.smooth_l1_loss(Fn.softplus(z), t, beta=beta_h, reduction="none") * pw / 4

        if self.closed_form:
            derivs = []
            for f, t, pw in zip(fs, tgt_l, pos_l):
                z = self._head(layer, f)  # [B,4,H,W]
                derivs.append(_elementwise_derivatives(lambda zz, t=t, pw=pw: phi(zz, t, pw), z))
            maps = gradcampp_linear(fs, derivs, layer.weight.flatten(1).to(fs[0].dtype), self.alpha)
        else:
            maps = gradcampp_autograd(fs, lambda xs: sum(
                phi(self._head(layer, x), t, pw).sum((1, 2, 3)) for x, t, pw in zip(xs, tgt_l, pos_l)), self.alpha)
        return maps, pos.any(1)

    def forward(self, feats: Sequence[Tensor], targets: Sequence[dict] | None = None,
                image_size: Sequence[int] | None = None) -> HeatmapOutput:
        if len(feats) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels, got {len(feats)}")
        if image_size is None:
            image_size = (feats[0].shape[-2] * self.strides[0], feats[0].shape[-1] * self.strides[0])
        image_size = (int(image_size[0]), int(image_size[1]))
        probe, fs, cls, qual = [], [], [], []
        for x in feats:
            f, s, b, q = self.probe(x)  # F [B,K,H,W], s [B,C,H,W], b [B,4,H,W], q [B,1,H,W]
            probe.append({"cls": s, "reg": b, "quality": q})
            fs.append(f), cls.append(s), qual.append(q)

        cd = torch.float64 if feats[0].dtype == torch.float64 else torch.float32  # heatmap math in fp32+
        use_loss = self.bbox_heat == "loss" and targets is not None
        # The autograd paths (reference, bbox_heat=loss) need normal tensors even under inference_mode.
        autograd_path = use_loss or not self.closed_form
        ctx = torch.inference_mode(False) if autograd_path else contextlib.nullcontext()
        # no_grad: the heatmaps are not differentiated (F detached); autocast off: eqs. 1-3 (the einsums and
        # the min-max normalisation) in fp32 even inside an AMP forward (docs/method.md "Mixed precision")
        with ctx, torch.no_grad(), torch.autocast(feats[0].device.type, enabled=False):
            prep = (lambda t: t.detach().to(cd).clone()) if autograd_path else (lambda t: t.detach().to(cd))
            fs, cls, qual = [prep(f) for f in fs], [prep(s) for s in cls], [prep(q) for q in qual]
            if use_loss:
                targets = [{"boxes": t["boxes"].detach().clone()} for t in targets]
            scores = torch.stack([torch.sigmoid(s).amax((2, 3)) for s in cls], 0).amax(0)  # [B,C]
            top = scores.topk(min(self.topk_classes, self.num_classes), dim=1).indices  # [B,T]
            h_class = self.class_heatmaps(fs, cls, top)
            h_bbox = self._quality_maps(fs, qual)
            B = feats[0].shape[0]
            source = ["quality"] * B
            if use_loss:
                loss_maps, has_pos = self._loss_maps(fs, targets, image_size)
                sel = has_pos[:, None, None, None]
                h_bbox = [torch.where(sel, a, b) for a, b in zip(loss_maps, h_bbox)]
                source = ["loss" if p else "quality" for p in has_pos.tolist()]  # one host sync
            h_bbox = fuse_levels(minmax_per_image(h_bbox), self.fuse)
            h_class = [h.to(feats[0].dtype) for h in h_class]
            h_bbox = [h.to(feats[0].dtype) for h in h_bbox]

        lam = torch.sigmoid(self.gate).to(feats[0].dtype)  # [L]
        h_mixed, mask = mix_and_mask(h_class, h_bbox, lam, self.mask_filter.tau)  # eqs. 4 and 6
        return HeatmapOutput(
            h_class=h_class, h_bbox=h_bbox, h_mixed=h_mixed, mask=mask, probe=probe,
            class_scores=scores.to(feats[0].dtype), topk_classes=top, gate=lam, strides=self.strides,
            image_size=image_size, dim=self.dim, pe_mode=self.pe, temperature=self.temperature,
            bbox_source=source,
        )

    def loss(self, out: HeatmapOutput, targets: Sequence[dict], image_size: Sequence[int] | None = None
             ) -> dict[str, Tensor]:
        """Probe losses (:func:`probe_loss`) with this module's strides, ranges and weights, in fp32 even
        when called inside an autocast region (the model's forward)."""
        with torch.autocast(out.gate.device.type, enabled=False):
            return self._loss(out, targets, image_size)

    def _loss(self, out: HeatmapOutput, targets: Sequence[dict], image_size: Sequence[int] | None
              ) -> dict[str, Tensor]:
        return probe_loss(
            out.probe, targets, self.strides, image_size if image_size is not None else out.image_size,
            radius=self.radius, scale_ranges=self.scale_ranges, huber_beta=self.huber_beta,
            weight_cls=self.loss_weights["cls"], weight_reg=self.loss_weights["reg"],
            weight_quality=self.loss_weights["quality"],
        )

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_classes={self.num_classes}, strides={self.strides}, "
                f"bbox_heat={self.bbox_heat!r}, pe={self.pe!r}, topk_classes={self.topk_classes}, "
                f"closed_form={self.closed_form}, alpha={self.alpha!r}, fuse_levels={self.fuse!r}")
