"""Grad-CAM++ heatmaps of the probe (paper eqs. 1-3; docs/method.md).

Interpretations (every one is also in ``docs/method.md``):
- ``A`` of eqs. 1-3 is ``F``, the input of the probe's final 1x1 layers (non-negative: the tower ends
  with ReLU).
- ``y^c = sum_l sum_ij sigmoid(s_c(i,j))`` is summed over *all* levels of the image, so the channel
  weights ``beta_k^c`` are one vector per image and class (the probe's channels mean the same thing on
  every level, its weights are shared), and the raw maps of the levels share one scale.
- ``alpha`` (one of :data:`ALPHAS`, the model config's ``heatmap.cam_weights``; every function here and the
  module default to ``"gradcam++"``):
  ``"gradcam++"`` is classic Grad-CAM++ (Chattopadhay et al.), ``alpha = d2 / (2 d2 + sum_ab A_ab d3)``
  with the exponential trick ``d2 = g^2, d3 = g^3``; ``"design"`` is ``alpha = d2 + d3`` (eq. 1 taken
  literally). With the exact derivatives of a sigmoid the design alpha is negative where
  ``sigmoid(s) > 0.5`` (for ``|w_k| < ~1``); once the probe is confident those locations dominate
  eq. 2, every beta_k <= 0 and the map is identically zero (docs/method.md).
- For the sigmoid of a 1x1 layer, ``g = sigma'(s) w_k``, ``d2 = sigma''(s) w_k^2``,
  ``d3 = sigma'''(s) w_k^3``; since ``sigma' > 0``, ``ReLU(g) = sigma' ReLU(w_k)`` and eq. 2 factorises:
  ``beta_k = ReLU(w_k) (w_k^2 sum_ij sigma' sigma'' + w_k^3 sum_ij sigma' sigma''')`` -- O(HW + K).

The functions compute eqs. 1-3 for two forms of the target ``y``: the sigmoid of a 1x1 layer's logits
(:func:`gradcampp_sigmoid_linear`: the class and quality maps) and any per-location head by autograd
(:func:`gradcampp_autograd`: ``closed_form=False`` and the reference the closed form is tested against).
The closed form is the general formula specialised where that is exact (the factorisation above needs
``sigma' > 0``), so the two round differently and stay separate. ``pool`` (:func:`pool_scale`) chooses
whether ``y`` sums or averages the cells.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["ALPHAS", "POOLS", "check_alpha", "check_pool", "gradcampp_autograd", "gradcampp_sigmoid_linear",
           "pool_scale", "sigmoid_derivatives"]

ALPHAS = ("gradcam++", "design")
POOLS = ("sum", "mean")  # how the score y of eqs. 1-3 pools the cells: the paper's sum, or their mean


def sigmoid_derivatives(s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sigma and its first three derivatives as polynomials of sigma = sigmoid(s)."""
    p = torch.sigmoid(s)
    d1 = p * (1 - p)
    d2 = d1 * (1 - 2 * p)
    d3 = d1 * (1 - 6 * p + 6 * p * p)
    return p, d1, d2, d3


def check_alpha(alpha: str) -> None:
    """Raise unless ``alpha`` names one of :data:`ALPHAS`."""
    if alpha not in ALPHAS:
        raise ValueError(f"heatmap.cam_weights (the alpha of eq. 1) must be 'design' or 'gradcam++', got {alpha!r}")


def gradcampp_sigmoid_linear(feats: Sequence[Tensor], logits: Sequence[Tensor], weight: Tensor,
                             alpha: str = "gradcam++", pool: str = "sum") -> list[Tensor]:
    """Closed form of eqs. 1-3 for ``y^t = sum_l sum_ij sigmoid(s_t)``, ``s_t = w_t . F + b_t`` (1x1 layer);
    ``pool="mean"``: ``y^t`` divided by the number of cells N of all levels (:func:`pool_scale`).

    feats: per level F [B,K,H,W]; logits: per level s [B,T,H,W] (T targets, e.g. the top-3 classes);
    weight: w [B,T,K] or [T,K]. Returns raw (un-normalised) maps per level [B,T,H,W].
    g = s1 w_k, d2 = s2 w_k^2, d3 = s3 w_k^3 with s1, s2, s3 the sigmoid's derivatives at s.
    ``alpha="design"``: alpha = d2 + d3 (eq. 1 taken literally); since s1 > 0, ReLU(g) = s1 ReLU(w_k)
    and eq. 2 factorises: beta_k = ReLU(w_k) (w_k^2 sum_ij s1 s2 + w_k^3 sum_ij s1 s3), O(HW + K).
    ``alpha="gradcam++"``: classic alpha = g^2 / (2 g^2 + S_k g^3) = 1 / (2 + S_k g) where g > 0,
    S_k = sum_ab A_k(ab) over all levels. H = ReLU(sum_k beta_k F_k) (eq. 3).
    """
    check_alpha(alpha)
    B = feats[0].shape[0]
    w = weight if weight.dim() == 3 else weight[None].expand(B, -1, -1)  # [B,T,K]
    r = pool_scale(feats, pool)  # every derivative of y is r x that of the summed score
    if alpha == "design":
        a2 = a3 = 0
        for s in logits:
            _, d1, d2, d3 = sigmoid_derivatives(s)
            a2 = a2 + (d1 * d2).sum((2, 3))  # [B,T]
            a3 = a3 + (d1 * d3).sum((2, 3))
        beta = w.clamp(min=0) * (w * w * a2[..., None] + w * w * w * a3[..., None]) * r * r  # [B,T,K] eqs. 1-2
    else:
        # ReLU(g) = s1 ReLU(w_k) (s1 > 0); with u = S_k ReLU(g): g / (2 + S_k g) = (u / (2 + u)) / S_k, so one
        # [B,T,K,HW] buffer, divided in place (cheaper than the literal form). S_k = 0 means F_k = 0
        # everywhere, so beta_k does not matter there (eq. 3 multiplies it by F_k): it is set to 0.
        S = sum(f.sum((2, 3)) for f in feats)  # [B,K]; A = F >= 0
        c = (S[:, None, :] * w.clamp(min=0) * r)[..., None]  # [B,T,K,1]
        beta = 0
        for s in logits:
            u = sigmoid_derivatives(s)[1].flatten(2)[:, :, None, :] * c  # [B,T,K,HW] = S_k ReLU(g)
            beta = beta + u.div_(u + 2).sum(-1)  # [B,T,K]
        beta = beta / torch.where(S > 0, S, torch.ones_like(S))[:, None, :]
    return [torch.einsum("btk,bkhw->bthw", beta, f).clamp(min=0) for f in feats]  # eq. 3


def check_pool(pool: str) -> None:
    """Raise unless ``pool`` names one of :data:`POOLS`."""
    if pool not in POOLS:
        raise ValueError(f"score_pool must be one of {POOLS}, got {pool!r}")


def pool_scale(feats: Sequence[Tensor], pool: str) -> float:
    """Factor from the summed target ``y = sum_l sum_ij score`` to the pooled one: 1 (``"sum"``, the paper's
    y) or 1 / N with N the cells of all levels (``"mean"``).

    Why ``"mean"``: classic Grad-CAM++ gives ``beta_k = sum_ij g / (2 + S_k g)`` with ``S_k = sum_ab F_k`` over
    all N cells. With the summed score ``S_k g`` grows with N, every term tends to ``1 / S_k`` and ``beta_k``
    to ``N / S_k``: the same weights for every class (the map stops depending on the class score) once the
    image is large. Dividing y by N divides g by N, so ``S_k g = mean(F_k) g_sum`` no longer grows with the
    image; the maps keep following the class's weights at any resolution (docs/method.md)."""
    check_pool(pool)
    return 1.0 if pool == "sum" else 1.0 / sum(f.shape[-2] * f.shape[-1] for f in feats)


def _grad(out: Tensor, inputs: Sequence[Tensor], create_graph: bool) -> list[Tensor]:
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    gs = torch.autograd.grad(out, list(inputs), create_graph=create_graph, retain_graph=True,
                             allow_unused=True, materialize_grads=True)
    return list(gs)


def gradcampp_autograd(feats: Sequence[Tensor], y_fn: Callable[[list[Tensor]], Tensor],
                       alpha: str = "gradcam++") -> list[Tensor]:
    """Reference eqs. 1-3 by ``torch.autograd.grad`` (create_graph for the 2nd and 3rd order).

    feats: per level F [B,K,H,W]; y_fn(list of F) -> y [B] (one target per image, e.g.
    ``sum_l sum_ij sigmoid(s_c)``). Exact for any head in which the score at (i,j) depends on F at
    (i,j) only (a 1x1 final layer, a per-location MLP, any element-wise loss on top): then
    ``d/dF_k(ij) sum_ab g_k(ab)`` is the diagonal second derivative. Costs 2K backward passes.
    ``alpha="gradcam++"`` uses the classic alpha (first derivatives only). Returns raw maps [B,1,H,W].
    """
    check_alpha(alpha)
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
