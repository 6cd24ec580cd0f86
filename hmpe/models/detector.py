"""The detector assembled from a config: backbone -> (heatmap) -> encoder -> decoder head.

Every HMPE component is a config switch; with all of them off this is the RT-DETR baseline graph.
"""

from __future__ import annotations

import copy
import warnings

from torch import Tensor, nn

from hmpe.models.heatmap import HeatmapEmbedding
from hmpe.models.hidq import HeatmapQuerySelector
from hmpe.models.lsconv import build_strip_block
from hmpe.models.mohfe import MOHFE
from hmpe.models.rtdetr.backbone import HGNetv2
from hmpe.models.rtdetr.decoder import RTDETRDecoder
from hmpe.models.rtdetr.deploy import fuse_model
from hmpe.models.rtdetr.encoder import HybridEncoder
from hmpe.models.rtdetr.loss import SetCriterion
from hmpe.models.rtdetr.matcher import HungarianMatcher
from hmpe.models.rtdetr.postprocess import PostProcessor
from hmpe.utils.keys import check_model_config
from hmpe.utils.model_keys import MODEL, MODEL_SCALARS
from hmpe.utils.renames import upgrade_model_config


class DetectionModel(nn.Module):
    """images [B,3,H,W] in [0,1] -> dict(pred_logits [B,Q,C], pred_boxes [B,Q,4] cxcywh, ...).

    With a ``heatmap`` module (HMPE, sec. 3.1) the projected features feed the probe head; its mask
    multiplies the position encoding at the AIFI level(s) (eqs. 6-7) when ``mask_pe`` is on. In
    training the probe's dense losses come back in ``outputs["aux_losses"]`` and are added to the
    set-prediction losses; ``outputs["heatmap"]`` is the :class:`HeatmapOutput`.
    With a ``mohfe`` module (sec. 3.2.1, eq. 5) the heatmap embeddings ``E_l`` drive AIFI's attention
    (``embeds``) and are added to the other selected levels before CCFM. ``H_mixed`` (and the probe's class
    logits) always reach the decoder as ``extra={"h_mixed", "probe_logits"}``; a HIDQ query selector
    (sec. 3.2.2) uses them, RT-DETR's ignores them.
    With ``heatmap=None`` and ``mohfe=None`` the graph (and parameter names) are the baseline's.

    ``return_all_layers`` (eval): also return ``layer_outputs``, one dict per decoder layer (Det^k).
    """

    def __init__(self, backbone: nn.Module, encoder: HybridEncoder, decoder: RTDETRDecoder,
                 heatmap: HeatmapEmbedding | None = None, mask_pe: bool = True, mohfe: MOHFE | None = None):
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder
        self.heatmap = heatmap  # None registers no parameters: the baseline's state dict is unchanged
        self.mask_pe = mask_pe
        self.mohfe = mohfe  # None: nothing registered, as for the heatmap

    def forward(self, images: Tensor, targets: list[dict] | None = None,
                return_all_layers: bool | None = None) -> dict:
        feats = self.encoder.project(self.backbone(images))  # [B,D,H_l,W_l] per level
        heat = None
        if self.heatmap is not None:
            heat = self.heatmap(feats, image_size=images.shape[-2:])
        embeds = None
        if self.mohfe is not None:
            feats, embeds = self.mohfe(feats, heat)  # eq. 5: E_l into AIFI (Q/K/V) or added before CCFM
        pos_masks = heat.mask if heat is not None and self.mask_pe else None
        memory = self.encoder.encode(feats, pos_masks=pos_masks, embeds=embeds)
        extra = None
        if heat is not None:  # for a heatmap-based query selector (HIDQ); RT-DETR's ignores it
            extra = {"h_mixed": heat.h_mixed, "probe_logits": [p["cls"] for p in heat.probe]}
        out = self.decoder(memory, targets, extra=extra, return_all_layers=return_all_layers)
        if heat is not None:
            out["heatmap"] = heat
            if self.training and targets is not None:
                out["aux_losses"] = self.heatmap.loss(heat, targets, image_size=images.shape[-2:])
        return out


    def fuse(self, channels_last: bool = True) -> "DetectionModel":
        """Deploy mode, in place and idempotent (:func:`hmpe.models.rtdetr.deploy.fuse_model`): BatchNorm folded
        into the convs, RepVGG blocks re-parameterised, inference constants cached, conv weights
        channels-last. Inference only."""
        return fuse_model(self, channels_last)


def build_model(cfg: dict, num_classes: int) -> DetectionModel:
    """Build a DetectionModel from a model config (see hmpe/configs/models/*.yaml); unknown keys raise
    :class:`hmpe.utils.keys.ConfigKeyError` naming the nearest known one.

    ``backbone.pretrained`` (a weights file) is not read here: the trainer loads it into a fresh run
    (:func:`hmpe.models.rtdetr.pretrained.load_pretrained_backbone`); a model rebuilt from a checkpoint takes its
    weights from the checkpoint, so the file need not exist any more.
    """
    cfg = upgrade_model_config(cfg)  # renamed keys of a stored config (checkpoint, shipped weights): silently
    check_model_config(cfg, f"model config {cfg.get('name', '')!r}".replace(" ''", ""))
    cfg = copy.deepcopy(cfg)
    hidden = cfg.get("hidden_dim", key_default(None, "hidden_dim"))
    bb_cfg = dict(cfg.get("backbone") or {})
    bb_cfg.pop("pretrained", None)
    backbone = HGNetv2(**bb_cfg, strip_factory=build_strip_block)
    enc_cfg = dict(cfg.get("encoder") or {})
    heat_cfg = dict(cfg.get("heatmap") or {})
    if heat_cfg.get("bbox_heat") == "loss":
        # older configs and checkpoints: their inference already used the quality map, which is now the only one
        warnings.warn("heatmap.bbox_heat: loss was dropped (a loss-based H_bbox needs targets, so inference used "
                      "the quality map); reading it as bbox_heat: quality", stacklevel=2)
        heat_cfg["bbox_heat"] = "quality"
    heatmap, mask_pe = None, heat_cfg.pop("mask_pe", key_default("heatmap", "mask_pe"))
    if heat_cfg.pop("enabled", bool(cfg.get("heatmap"))):
        heatmap = HeatmapEmbedding(hidden, num_classes, num_levels=len(backbone.out_strides),
                                   strides=tuple(backbone.out_strides), **heat_cfg)
        # one position encoding: the heatmap's settings are the encoder's defaults, the encoder's PE its PE'
        enc_cfg.setdefault("pe", heatmap.position.mode)
        enc_cfg.setdefault("pe_temperature", heatmap.position.temperature)
    encoder = HybridEncoder(in_channels=list(backbone.out_channels), hidden_dim=hidden,
                            feat_strides=tuple(backbone.out_strides), **enc_cfg)
    if heatmap is not None:
        heatmap.position = encoder.position
    mohfe_cfg, hidq_cfg = _switch(cfg, "mohfe"), _switch(cfg, "hidq")
    if heatmap is None and (mohfe_cfg is not None or hidq_cfg is not None):
        raise ValueError("mohfe / hidq use the heatmap embedding's maps: enable `heatmap` in the model config "
                         "(or switch them off with mohfe.enabled=false / hidq.enabled=false)")
    mohfe = None
    if mohfe_cfg is not None:  # MOHFE (eq. 5): heatmap embeddings into AIFI and the other levels
        attention = list(encoder.use_encoder_idx) if encoder.num_encoder_layers > 0 else []
        mohfe = MOHFE(hidden, num_levels=len(backbone.out_strides), attention_levels=attention, **mohfe_cfg)
    dec_cfg = dict(cfg.get("decoder") or {})
    if hidq_cfg is not None:  # HIDQ (eqs. 8-9): heatmap-induced queries replace RT-DETR's selection
        num_queries = dec_cfg.get("num_queries", key_default("decoder", "num_queries"))
        dec_cfg["query_selector"] = HeatmapQuerySelector(hidden, num_classes, num_queries, **hidq_cfg)
    decoder = RTDETRDecoder(num_classes=num_classes, hidden_dim=hidden,
                            feat_strides=tuple(backbone.out_strides), num_levels=len(backbone.out_strides),
                            **dec_cfg)
    return DetectionModel(backbone, encoder, decoder, heatmap, mask_pe, mohfe)


def key_default(section: str | None, key: str):
    """The default of model key ``section.key`` (``section`` None: a top-level key such as ``hidden_dim``) in the
    key table, :data:`hmpe.utils.model_keys.MODEL`, where the constructors' keyword defaults agree with it."""
    return next(k.default for k in (MODEL[section] if section else MODEL_SCALARS) if k.name == key)


def _switch(cfg: dict, key: str) -> dict | None:
    """A component switch from the model config: None / false / ``{enabled: false}`` -> None (off);
    true -> {} (on, defaults); a dict -> its other keys (on unless ``enabled: false``)."""
    value = cfg.get(key)
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"model config `{key}` must be a mapping, true/false or null, got {value!r}")
    value = dict(value)
    return value if value.pop("enabled", True) else None


def build_criterion(cfg: dict, num_classes: int) -> SetCriterion:
    cfg = upgrade_model_config(cfg)
    matcher = HungarianMatcher(**(cfg.get("matcher") or {}))
    return SetCriterion(num_classes, matcher, **(cfg.get("loss") or {}))


def build_postprocessor(cfg: dict, num_classes: int) -> PostProcessor:
    num_queries = (cfg.get("decoder") or {}).get("num_queries", key_default("decoder", "num_queries"))
    top = (cfg.get("postprocess") or {}).get("num_top_queries", num_queries)
    return PostProcessor(num_classes, num_top_queries=top)
