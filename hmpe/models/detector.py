"""The detector assembled from a config: backbone -> (heatmap) -> encoder -> decoder head.

Every HMPE component is a config switch; with all of them off this is the RT-DETR baseline graph.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from hmpe.models.backbone import HGNetv2
from hmpe.models.decoder import RTDETRDecoder
from hmpe.models.encoder import HybridEncoder
from hmpe.models.heatmap import HeatmapEmbedding
from hmpe.models.loss import SetCriterion
from hmpe.models.matcher import HungarianMatcher
from hmpe.models.postprocess import PostProcessor


class DetectionModel(nn.Module):
    """images [B,3,H,W] in [0,1] -> dict(pred_logits [B,Q,C], pred_boxes [B,Q,4] cxcywh, ...).

    With a ``heatmap`` module (HMPE, sec. 3.1) the projected features feed the probe head; its mask
    multiplies the position encoding at the AIFI level(s) (eqs. 6-7) when ``mask_pe`` is on. In
    training the probe's dense losses come back in ``outputs["aux_losses"]`` and are added to the
    set-prediction losses. With ``heatmap=None`` the graph (and parameter names) are the baseline's.
    """

    def __init__(self, backbone: nn.Module, encoder: HybridEncoder, decoder: RTDETRDecoder,
                 heatmap: HeatmapEmbedding | None = None, mask_pe: bool = True):
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder
        self.heatmap = heatmap  # None registers no parameters: the baseline's state dict is unchanged
        self.mask_pe = mask_pe

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict:
        feats = self.encoder.project(self.backbone(images))  # [B,D,H_l,W_l] per level
        heat = None
        if self.heatmap is not None:
            heat = self.heatmap(feats, targets, image_size=images.shape[-2:])
        memory = self.encoder.encode(feats, pos_masks=heat.mask if heat is not None and self.mask_pe else None)
        out = self.decoder(memory, targets)
        if heat is not None:
            out["heatmap"] = heat
            if self.training and targets is not None:
                out["aux_losses"] = self.heatmap.loss(heat, targets, image_size=images.shape[-2:])
        return out


def build_model(cfg: dict, num_classes: int) -> DetectionModel:
    """Build a DetectionModel from a model config (see hmpe/configs/models/*.yaml)."""
    cfg = copy.deepcopy(cfg)
    hidden = cfg.get("hidden_dim", 256)
    backbone = HGNetv2(**(cfg.get("backbone") or {}))
    enc_cfg = dict(cfg.get("encoder") or {})
    heat_cfg = dict(cfg.get("heatmap") or {})
    heatmap, mask_pe = None, heat_cfg.pop("mask_pe", True)
    if heat_cfg.pop("enabled", bool(cfg.get("heatmap"))):
        heatmap = HeatmapEmbedding(hidden, num_classes, num_levels=len(backbone.out_strides),
                                   strides=tuple(backbone.out_strides), **heat_cfg)
        enc_cfg.setdefault("pe", heatmap.pe)  # one position-encoding form for encoder and heatmap path
    encoder = HybridEncoder(in_channels=list(backbone.out_channels), hidden_dim=hidden,
                            feat_strides=tuple(backbone.out_strides), **enc_cfg)
    dec_cfg = cfg.get("decoder") or {}
    decoder = RTDETRDecoder(num_classes=num_classes, hidden_dim=hidden,
                            feat_strides=tuple(backbone.out_strides), num_levels=len(backbone.out_strides),
                            **dec_cfg)
    return DetectionModel(backbone, encoder, decoder, heatmap, mask_pe)


def build_criterion(cfg: dict, num_classes: int) -> SetCriterion:
    matcher = HungarianMatcher(**(cfg.get("matcher") or {}))
    return SetCriterion(num_classes, matcher, **(cfg.get("loss") or {}))


def build_postprocessor(cfg: dict, num_classes: int) -> PostProcessor:
    top = (cfg.get("postprocess") or {}).get("num_top_queries",
                                               (cfg.get("decoder") or {}).get("num_queries", 300))
    return PostProcessor(num_classes, num_top_queries=top)
