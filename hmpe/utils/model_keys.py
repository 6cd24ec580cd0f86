"""The model-config half of the key table (:mod:`hmpe.utils.keys`): every key of every model section, as the
builders in :mod:`hmpe.models.detector` take them, with its default, meaning and type; a default here is also the
constructor's keyword default (``tests/test_defaults_agree.py``), and the sections list exactly the constructor
arguments the builder passes (``tests/test_config_keys.py``). The checks that read it: :mod:`hmpe.utils.keys`.
"""

from __future__ import annotations

from hmpe.utils.keytypes import Bool, Choice, Int, Key, Kind, ListOf, Num, Text

# Section -> keys, as passed to the builders in hmpe.models.detector (backbone -> HGNetv2, encoder ->
# HybridEncoder, heatmap -> HeatmapEmbedding, mohfe -> MOHFE, hidq -> HeatmapQuerySelector, decoder ->
# RTDETRDecoder, matcher -> HungarianMatcher, loss -> SetCriterion, postprocess -> PostProcessor).
# What a default of None means: the key's help.
_SWITCH = Key("enabled", True, "component switch (false: off, the baseline's graph)", Bool())
MODEL: dict[str, tuple[Key, ...]] = {
    "backbone": (
        Key("name", "B0", "HGNetv2 size: B0 | B1 | ...", Choice("B0", "B1", "B2", "B3", "B4", "B5", "B6")),
        Key("width", 1.0, "channel factor of every stem and stage conv (not 1: no ImageNet weights)", Num("(0, 4]")),
        Key("return_idx", [1, 2, 3], "stages returned (strides 8, 16, 32)", ListOf(Int("[0, 3]"))),
        Key("use_lab", False, "learnable affine blocks", Bool()),
        Key("freeze_at", -1, "freeze the stem and stages up to this index (-1 = none)", Int(">= -1")),
        Key("freeze_norm", False, "freeze BatchNorm statistics and affine", Bool()),
        Key("strip_conv", None, "LSConv / DSConv: {kind: lsconv|dsconv, stages: [3,4], kernel_size: 9}"),
        Key("pretrained", None, "ImageNet HGNetv2 weights file (timm / D-FINE / RT-DETRv2 layout), read at the "
                                "start of a fresh training run (hmpe.models.rtdetr.pretrained)",
            Kind("file", null=True)),
    ),
    "encoder": (
        Key("nhead", 8, "AIFI attention heads", Int(">= 1")),
        Key("dim_feedforward", 1024, "AIFI feed-forward width", Int(">= 1")),
        Key("dropout", 0.0, "AIFI dropout", Num("[0, 1)")),
        Key("enc_act", "gelu", "AIFI activation", Text("an activation")),
        Key("use_encoder_idx", [2], "levels with AIFI attention", ListOf(Int(">= 0"))),
        Key("num_encoder_layers", 1, "AIFI layers", Int(">= 0")),
        Key("pe_temperature", None, "position-encoding temperature (default: heatmap.temperature, else 10000)",
            Num("> 0", null=True)),
        Key("expansion", 1.0, "CCFM width factor", Num("> 0")),
        Key("depth_mult", 1.0, "CCFM depth factor", Num("> 0")),
        Key("act", "silu", "CCFM activation", Text("an activation")),
        Key("pe", None, "position encoding: rtdetr | paper (default: heatmap.pe, else rtdetr)",
            Choice("rtdetr", "paper", null=True)),
    ),
    "heatmap": (
        _SWITCH,
        Key("mask_pe", True, "multiply the AIFI position encoding by the mask (eq. 7)", Bool()),
        Key("tau", 0.05, "mask threshold (eq. 6); tau_mode=quantile: the fraction of cells masked per image",
            Num(">= 0")),
        Key("tau_mode", "absolute", "absolute (H_mixed > tau; 0 = eq. 6's ReLU zeros) | quantile (per image)",
            Choice("absolute", "quantile")),
        Key("bbox_heat", "quality", "H_bbox target: quality (the only form; 'loss' of older configs reads as quality)",
            Choice("quality", "loss")),
        Key("pe", "rtdetr", "position-encoding form; also the default of encoder.pe (and the form drawn in figures)",
            Choice("rtdetr", "paper")),
        Key("topk_classes", 3, "classes whose maps make H_class", Int(">= 1")),
        Key("closed_form", True, "closed-form Grad-CAM++ (false: the autograd reference)", Bool()),
        Key("probe_convs", 2, "probe tower convolutions", Int(">= 0")),
        Key("probe_hidden", None, "probe tower width (default hidden_dim)", Int(">= 1", null=True)),
        Key("fuse_levels", "down", "down | max | none", Choice("down", "max", "none")),
        Key("temperature", 10000.0, "position-encoding temperature; also the default of encoder.pe_temperature",
            Num("> 0")),
        Key("radius", 1.5, "probe target centre radius (strides)", Num("> 0")),
        Key("scale_ranges", None, "probe target size range per level"),
        Key("huber_beta", 1.0, "probe regression Huber beta (strides)", Num("> 0")),
        Key("cam_weights", "gradcam++", "Grad-CAM++ weights alpha of eq. 1: gradcam++ (classic) | design (eq. 1 "
                                        "literally)", Choice("gradcam++", "design")),
        Key("score_pool", "sum", "score y of eqs. 1-3: sum over cells (paper) | mean (class-specific at any size)",
            Choice("sum", "mean")),
        Key("loss_weights", None, "probe loss weights {cls, reg, quality}"),
        Key("mask_grad", "none", "none (the mask has no gradient) | ste (straight-through in training: the gate "
                                 "of eq. 4 learns from the masked PE of eq. 7)", Choice("none", "ste")),
        Key("mask_grad_temperature", 0.05, "mask_grad=ste: width of the sigmoid around the threshold (map units)",
            Num("> 0")),
    ),
    "mohfe": (_SWITCH, Key("levels", None, "levels that receive heatmap embeddings, e.g. [0,1,2]",
                           ListOf(Int(">= 0"), null=True))),
    "hidq": (
        _SWITCH,
        Key("score", "heat", "token score: heat | heat*cls", Choice("heat", "heat*cls")),
        Key("tie_break", 1e-4, "weight of the class score that breaks heat ties", Num(">= 0")),
        Key("detach_memory", True, "detach the selected memory", Bool()),
    ),
    "decoder": (
        Key("num_queries", 300, "object queries", Int(">= 1")),
        Key("num_points", 4, "deformable sampling points", Int(">= 1")),
        Key("nhead", 8, "attention heads", Int(">= 1")),
        Key("num_layers", 6, "decoder layers", Int(">= 1")),
        Key("dim_feedforward", 1024, "feed-forward width", Int(">= 1")),
        Key("dropout", 0.0, "dropout", Num("[0, 1)")),
        Key("activation", "relu", "feed-forward activation", Text("an activation")),
        Key("num_denoising", 100, "denoising queries (0 = off)", Int(">= 0")),
        Key("label_noise_ratio", 0.5, "denoising label noise", Num("[0, 1]")),
        Key("box_noise_scale", 1.0, "denoising box noise", Num(">= 0")),
        Key("eval_idx", -1, "decoder layer used at inference", Int()),
        Key("eval_spatial_size", None, "fixed anchors for this input size (export)"),
        Key("aux_loss", True, "losses on every decoder layer", Bool()),
        Key("feat_channels", None, "input channels per level (default hidden_dim)"),
        Key("return_all_layers", False, "eval: also return every layer's detections", Bool()),
    ),
    "matcher": (
        Key("cost_class", 2.0, "class cost", Num(">= 0")), Key("cost_bbox", 5.0, "L1 box cost", Num(">= 0")),
        Key("cost_giou", 2.0, "GIoU cost", Num(">= 0")), Key("use_focal", True, "focal class cost", Bool()),
        Key("focal_alpha", 0.25, "focal cost alpha", Num("[0, 1]")),
        Key("focal_gamma", 2.0, "focal cost gamma", Num(">= 0")),
    ),
    "loss": (
        Key("weight_dict", None, "loss weights {loss_vfl (or loss_mal), loss_bbox, loss_giou}"),
        Key("vfl_alpha", 0.75, "varifocal alpha", Num("[0, 1]")), Key("vfl_gamma", 2.0, "varifocal gamma", Num(">= 0")),
        Key("cls_loss", "vfl", "classification loss: vfl (RT-DETR varifocal) | mal (DEIM matchability-aware)",
            Choice("vfl", "mal")),
        Key("mal_gamma", 1.5, "mal: exponent of the IoU target and of the negatives' score weight", Num(">= 0")),
    ),
    "postprocess": (Key("num_top_queries", None, "detections kept per image (default decoder.num_queries)",
                        Int(">= 1", null=True)),),
}
MODEL_SCALARS = (Key("hidden_dim", 256, "model width", Int(">= 1")),)
# top-level keys that route a command-line override into the model config (`name` stays the run folder's)
MODEL_SECTIONS = (*MODEL, *(k.name for k in MODEL_SCALARS))
MODEL_TOP = (*MODEL_SECTIONS, "name")  # a model config may also carry its display name
# a model YAML file may also name a parent to build on: hmpe.utils.config.load_model_config merges the parent
# under the file and removes the key, so a config that reaches a builder never has it
BASE_KEY = "base"
