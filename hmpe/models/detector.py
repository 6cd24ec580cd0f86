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
from hmpe.models.loss import SetCriterion
from hmpe.models.matcher import HungarianMatcher
from hmpe.models.postprocess import PostProcessor


class DetectionModel(nn.Module):
    """images [B,3,H,W] in [0,1] -> dict(pred_logits [B,Q,C], pred_boxes [B,Q,4] cxcywh, ...)."""

    def __init__(self, backbone: nn.Module, encoder: HybridEncoder, decoder: RTDETRDecoder,
                 heatmap: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder
        if heatmap is not None:
            self.heatmap = heatmap

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict:
        feats = self.backbone(images)
        feats = self.encoder(feats)
        return self.decoder(feats, targets)


def build_model(cfg: dict, num_classes: int) -> DetectionModel:
    """Build a DetectionModel from a model config (see hmpe/configs/models/*.yaml)."""
    cfg = copy.deepcopy(cfg)
    hidden = cfg.get("hidden_dim", 256)
    backbone = HGNetv2(**(cfg.get("backbone") or {}))
    enc_cfg = cfg.get("encoder") or {}
    encoder = HybridEncoder(in_channels=list(backbone.out_channels), hidden_dim=hidden,
                            feat_strides=tuple(backbone.out_strides), **enc_cfg)
    dec_cfg = cfg.get("decoder") or {}
    decoder = RTDETRDecoder(num_classes=num_classes, hidden_dim=hidden,
                            feat_strides=tuple(backbone.out_strides), num_levels=len(backbone.out_strides),
                            **dec_cfg)
    return DetectionModel(backbone, encoder, decoder)


def build_criterion(cfg: dict, num_classes: int) -> SetCriterion:
    matcher = HungarianMatcher(**(cfg.get("matcher") or {}))
    return SetCriterion(num_classes, matcher, **(cfg.get("loss") or {}))


def build_postprocessor(cfg: dict, num_classes: int) -> PostProcessor:
    top = (cfg.get("postprocess") or {}).get("num_top_queries",
                                               (cfg.get("decoder") or {}).get("num_queries", 300))
    return PostProcessor(num_classes, num_top_queries=top)
