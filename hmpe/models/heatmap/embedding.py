"""The heatmap embedding module (paper sec. 3.1, eqs. 1-4 and 6-7; docs/method.md).

``HeatmapEmbedding``: probe head -> Grad-CAM++ maps -> normalised, fused -> gate (eq. 4) -> mask
(eq. 6); its :class:`HeatmapOutput` applies the mask to the encoder's position encoding (eq. 7).
The heatmaps are computed from detached ``F`` under ``no_grad``: they carry no gradient into the
probe or the backbone (the mask is not differentiated: docs/method.md). ``H_mixed`` is differentiable
w.r.t. the gate ``p`` only, which learns through whatever multiplies features by ``H_mixed``
downstream (MOHFE / HIDQ embeddings).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from hmpe.models.heatmap.gradcam import (
    check_alpha,
    check_pool,
    gradcampp_autograd,
    gradcampp_sigmoid_linear,
    pool_scale,
)
from hmpe.models.heatmap.losses import probe_loss
from hmpe.models.heatmap.maps import MaskFilter, fuse_levels, minmax_per_image
from hmpe.models.heatmap.mask_stats import mix_and_mask
from hmpe.models.heatmap.probe import ProbeHead
from hmpe.models.heatmap.targets import default_scale_ranges
from hmpe.models.rtdetr.position import PositionEncoding, masked_position_encoding

__all__ = ["HeatmapEmbedding", "HeatmapOutput"]


@dataclass
class HeatmapOutput:
    """Output of :class:`HeatmapEmbedding`; every map is per level ``[B,1,H_l,W_l]`` in [0,1].

    - ``h_class``, ``h_bbox``: normalised, fused heatmaps, no gradient;
    - ``h_mixed``: eq. 4, differentiable w.r.t. the gate only;
    - ``mask``: eq. 6, {0,1}; no gradient, except with ``mask_grad="ste"`` in training (same values);
    - ``probe``: per level ``{"cls", "reg", "quality"}`` raw probe outputs (with grad in training),
      the input of :func:`probe_loss`;
    - ``class_scores`` [B,C]: image-level score ``max_l max_ij sigmoid(s_c)``;
      ``topk_classes`` [B,T]: the classes whose maps make ``H_class``;
    - ``gate`` [L]: ``lambda_l = sigmoid(p_l)``;
    - ``position``: the position encoding the mask applies to (the hybrid encoder's, in a detector).
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
    position: PositionEncoding

    @property
    def num_levels(self) -> int:
        return len(self.mask)

    def position_encoding(self, level: int) -> Tensor:
        """Unmasked PE of a level [H*W, D] (h-major), of :attr:`position` (shared and cached: read only)."""
        h, w = self.mask[level].shape[-2:]
        m = self.mask[level]
        return self.position(h, w, m.device, m.dtype, cached=True)

    def masked_pe(self, level: int, pe: Tensor | None = None) -> Tensor:
        """Eq. 7 at a level: ``Mask * PE`` -> [B, H*W, D] (pe defaults to ``position_encoding(level)``)."""
        return masked_position_encoding(self.position_encoding(level) if pe is None else pe, self.mask[level])

    def masked_pes(self) -> list[Tensor]:
        return [self.masked_pe(l) for l in range(self.num_levels)]


class HeatmapEmbedding(nn.Module):
    """Probe head + Grad-CAM++ heatmaps + gate + mask filter (eqs. 1-4, 6, 7; docs/method.md).

    ``forward(feats, image_size=None) -> HeatmapOutput`` with feats per level
    ``[B,dim,H_l,W_l]``; ``loss(out, targets, image_size=None) -> dict`` (the probe losses).
    - ``bbox_heat="quality"`` (the only form): H_bbox from ``y = sum_l sum_ij sigmoid(q)``, the same map in
      training and at inference (a loss-based map needs targets, so it had no inference meaning).
    - ``closed_form=True``: the closed form (default, export-friendly); ``False``: the autograd reference.
    - ``fuse_levels``: how the per-level maps become "three upsampled masks" (:func:`fuse_levels`):
      ``"down"`` (default: finer maps max-pooled into every coarser level), ``"max"`` (every map
      resized to every level, max) or ``"none"``.
    - ``cam_weights``: the Grad-CAM++ weights alpha of eq. 1, ``"gradcam++"`` (classic Grad-CAM++, default) or
      ``"design"`` (eq. 1 taken literally; goes dark once the probe is confident, see docs/method.md).
    - ``score_pool``: the score y of eqs. 1-3 summed over the cells (``"sum"``, the paper) or averaged
      (``"mean"``: class-specific maps at any image size, :func:`~hmpe.models.heatmap.gradcam.pool_scale`).
    - ``mask_grad``: ``"none"`` (the mask is a constant of the backward pass: the gate learns only where MOHFE /
      HIDQ multiply by ``H_mixed``) or ``"ste"`` (straight-through in training, :class:`MaskFilter`: the gate also
      learns from the masked position encoding of eq. 7), ``mask_grad_temperature`` its width.
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
        cam_weights: str = "gradcam++",
        loss_weights: dict[str, float] | None = None,
        score_pool: str = "sum",
        tau_mode: str = "absolute",
        mask_grad: str = "none",
        mask_grad_temperature: float = 0.05,
    ):
        super().__init__()
        check_alpha(cam_weights)
        check_pool(score_pool)
        self.score_pool = score_pool
        if fuse_levels not in ("max", "down", "none"):
            raise ValueError(f"fuse_levels must be 'max', 'down' or 'none', got {fuse_levels!r}")
        if bbox_heat != "quality":
            raise ValueError(f"bbox_heat must be 'quality' (the loss-based H_bbox was dropped: it needs targets, "
                             f"so inference silently used the quality map), got {bbox_heat!r}")
        if len(strides) != num_levels:
            raise ValueError(f"{num_levels} levels but strides {tuple(strides)}")
        self.dim, self.num_classes, self.num_levels = dim, num_classes, num_levels
        self.strides = tuple(int(s) for s in strides)
        self.bbox_heat, self.topk_classes = bbox_heat, topk_classes
        self.closed_form, self.fuse = closed_form, fuse_levels
        # the PE the mask applies to; a detector replaces it with its encoder's (one PE for both)
        self.position = PositionEncoding(pe, dim, temperature)
        self.radius, self.huber_beta, self.cam_weights = radius, huber_beta, cam_weights
        self.scale_ranges = list(scale_ranges) if scale_ranges is not None else default_scale_ranges(self.strides)
        w = {"cls": 1.0, "reg": 1.0, "quality": 1.0}
        w.update(loss_weights or {})
        self.loss_weights = w
        self.probe = ProbeHead(dim, num_classes, hidden=probe_hidden, num_convs=probe_convs)
        self.gate = nn.Parameter(torch.zeros(num_levels))  # p_l; lambda_l = sigmoid(p_l) = 0.5 (eq. 4)
        self.mask_filter = MaskFilter(tau, tau_mode, mask_grad, mask_grad_temperature)

    @property
    def pe(self) -> str:
        """Form of :attr:`position` ("rtdetr" | "paper")."""
        return self.position.mode

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
            maps = gradcampp_sigmoid_linear(fs, sel, w[top], self.cam_weights, self.score_pool)  # [B,T,H,W] per level
            return [m.amax(1, keepdim=True) for m in maps]
        out, r = None, pool_scale(fs, self.score_pool)
        for t in range(top.shape[1]):
            idx = top[:, t][:, None, None, None]

            def y_fn(xs, idx=idx):
                return r * sum(torch.sigmoid(self._head(self.probe.cls, x).gather(
                    1, idx.expand(-1, 1, *x.shape[-2:]))).sum((1, 2, 3)) for x in xs)

            maps = gradcampp_autograd(fs, y_fn, self.cam_weights)
            out = maps if out is None else [torch.maximum(a, b) for a, b in zip(out, maps)]
        return out

    @staticmethod
    def _head(layer: nn.Conv2d, x: Tensor) -> Tensor:
        return Fn.conv2d(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))

    def _quality_maps(self, fs: list[Tensor], qual: list[Tensor]) -> list[Tensor]:
        """Raw H_bbox per level [B,1,H,W] with y = sum sigmoid(q)."""
        if self.closed_form:
            return gradcampp_sigmoid_linear(fs, qual, self.probe.quality.weight.flatten(1).to(fs[0].dtype),
                                            self.cam_weights, self.score_pool)
        r = pool_scale(fs, self.score_pool)
        return gradcampp_autograd(
            fs, lambda xs: r * sum(torch.sigmoid(self._head(self.probe.quality, x)).sum((1, 2, 3)) for x in xs),
            self.cam_weights)

    def forward(self, feats: Sequence[Tensor], image_size: Sequence[int] | None = None) -> HeatmapOutput:
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
        # The autograd reference needs normal tensors even under inference_mode.
        autograd_path = not self.closed_form
        ctx = torch.inference_mode(False) if autograd_path else contextlib.nullcontext()
        # no_grad: the heatmaps are not differentiated (F detached); autocast off: eqs. 1-3 (the einsums and
        # the min-max normalisation) in fp32 even inside an AMP forward (docs/method.md "Mixed precision")
        with ctx, torch.no_grad(), torch.autocast(feats[0].device.type, enabled=False):
            prep = (lambda t: t.detach().to(cd).clone()) if autograd_path else (lambda t: t.detach().to(cd))
            fs, cls, qual = [prep(f) for f in fs], [prep(s) for s in cls], [prep(q) for q in qual]
            scores = torch.stack([torch.sigmoid(s).amax((2, 3)) for s in cls], 0).amax(0)  # [B,C]
            top = scores.topk(min(self.topk_classes, self.num_classes), dim=1).indices  # [B,T]
            h_class = self.class_heatmaps(fs, cls, top)
            h_bbox = self._quality_maps(fs, qual)
            h_bbox = fuse_levels(minmax_per_image(h_bbox), self.fuse)
            h_class = [h.to(feats[0].dtype) for h in h_class]
            h_bbox = [h.to(feats[0].dtype) for h in h_bbox]

        lam = torch.sigmoid(self.gate).to(feats[0].dtype)  # [L]
        h_mixed, mask = mix_and_mask(h_class, h_bbox, lam, self.mask_filter.tau, self.mask_filter.mode)  # eqs. 4, 6
        mask = [self.mask_filter.with_grad(h, m) for h, m in zip(h_mixed, mask)]  # mask_grad=ste: gate learns by eq. 7
        return HeatmapOutput(
            h_class=h_class, h_bbox=h_bbox, h_mixed=h_mixed, mask=mask, probe=probe,
            class_scores=scores.to(feats[0].dtype), topk_classes=top, gate=lam, strides=self.strides,
            image_size=image_size, position=self.position,
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
                f"closed_form={self.closed_form}, cam_weights={self.cam_weights!r}, score_pool={self.score_pool!r}, "
                f"fuse_levels={self.fuse!r}")
