"""HMPE heatmap embedding (paper sec. 3.1, eqs. 1-4 and 6-7; docs/method.md).

Pipeline per image, on the projected features ``X_l [B, D, H_l, W_l]`` (strides 8, 16, 32)::

    ProbeHead (shared over levels): X_l -> F_l [B,K,H_l,W_l] -> cls s [B,C,..], reg b [B,4,..], quality q [B,1,..]
    H_class (eqs. 1-3, top-3 classes, per-pixel max), H_bbox (same eqs., y = sum sigmoid(q) or L_reg)
    -> min-max per image (jointly over levels) -> finer levels max-pooled into coarser ones
    -> H_mixed = lambda_l H_class + (1 - lambda_l) H_bbox      (eq. 4, lambda_l = sigmoid(p_l))
    -> Mask = 1[H_mixed > tau]                                 (eq. 6)
    -> PE' = Mask * PE                                         (eq. 7, the hybrid encoder's PE)

One concern per module: :mod:`~hmpe.models.heatmap.probe` (the probe head),
:mod:`~hmpe.models.heatmap.targets` (dense target assignment), :mod:`~hmpe.models.heatmap.losses` (the
probe losses), :mod:`~hmpe.models.heatmap.gradcam` (Grad-CAM++, eqs. 1-3, and the interpretations of
the paper's formulas), :mod:`~hmpe.models.heatmap.maps` (normalisation, level fusion, the mask filter),
:mod:`~hmpe.models.heatmap.embedding` (the module and its output) and
:mod:`~hmpe.models.heatmap.mask_stats` (eqs. 4 and 6 recomputed from cached maps, what a mask keeps and
drops). The position encoding and its mask (eq. 7) are :mod:`hmpe.models.rtdetr.position`'s, shared with
the encoder.
"""

from hmpe.models.heatmap.embedding import HeatmapEmbedding, HeatmapOutput
from hmpe.models.heatmap.gradcam import (
    ALPHAS,
    gradcampp_autograd,
    gradcampp_sigmoid_linear,
    sigmoid_derivatives,
)
from hmpe.models.heatmap.losses import probe_loss
from hmpe.models.heatmap.maps import MaskFilter, fuse_levels, minmax_per_image, resize_map
from hmpe.models.heatmap.probe import ProbeHead
from hmpe.models.heatmap.targets import assign_dense_targets, default_scale_ranges
from hmpe.models.rtdetr.position import masked_position_encoding

__all__ = [
    "ALPHAS",
    "HeatmapEmbedding",
    "HeatmapOutput",
    "MaskFilter",
    "ProbeHead",
    "assign_dense_targets",
    "default_scale_ranges",
    "fuse_levels",
    "gradcampp_autograd",
    "gradcampp_sigmoid_linear",
    "masked_position_encoding",
    "minmax_per_image",
    "probe_loss",
    "resize_map",
    "sigmoid_derivatives",
]
