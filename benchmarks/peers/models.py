"""Model builders of the peers benchmark: every row built from its config with random weights.

A row is a peer name (``yolo11n``, ``rtdetr-l``: ultralytics; ``dfine-n``: transformers' D-FINE with the
D-FINE-N config) or an hmpe preset / YAML with dotted overrides (``rtdetr-n:decoder.num_layers=3``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from hmpe.engine.deploy.bench import count_params, param_split
from benchmarks._common import SkipRow, load_hmpe_model_config, parse_row_spec, split_top_level

PEER_NAMES = ("yolo11n", "rtdetr-l", "dfine-n")
SMOKE_QUERIES = 16  # tiny smoke inputs have fewer encoder tokens than 300 queries


def have(pkg: str) -> bool:
    return importlib.util.find_spec(pkg) is not None


def require(pkg: str) -> None:
    if not have(pkg):
        raise SkipRow(f"{pkg} is not installed (pip install 'hmpe[peers]')")


def package_version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "?"


def split_models(text: str) -> list[str]:
    """Comma-separated rows; commas inside ``[...]``/``{...}`` or after ``:`` within a row stay."""
    rows = split_top_level(text)
    merged: list[str] = []  # a piece that is key=value continues the override list of the row before
    for r in (r.strip() for r in rows if r.strip()):
        if merged and ":" in merged[-1] and "=" in r.split(":")[0]:
            merged[-1] += "," + r
        else:
            merged.append(r)
    return merged


@dataclass
class Built:
    name: str
    source: str
    model: nn.Module
    forward: Callable | None = None  # forward(model, x); None = model(x)
    levels: str = ""
    notes: list[str] = field(default_factory=list)


def call(b: Built, x):
    """The row's raw forward on ``x``."""
    return b.forward(b.model, x) if b.forward is not None else b.model(x)


def dfine_n_config(num_labels: int, num_queries: int = 300):
    """transformers' DFineConfig sized as D-FINE-N (``dfine_n_coco`` in transformers' conversion script).

    ``num_queries`` below 300 only for smoke runs on tiny inputs (fewer tokens than queries)."""
    from transformers import DFineConfig

    c = DFineConfig()
    b = c.backbone_config  # HGNetV2Config
    b.hidden_sizes = [128, 256, 512, 1024]
    b.layer_type = "basic"
    b.embedding_size = 32
    b.stem_channels = [3, 16, 16]
    b.stage_in_channels = [16, 64, 256, 512]
    b.stage_mid_channels = [16, 32, 64, 128]
    b.stage_out_channels = [64, 256, 512, 1024]
    b.stage_num_blocks = [1, 1, 2, 1]
    b.stage_downsample = [False, True, True, True]
    b.stage_light_block = [False, False, True, True]
    b.stage_kernel_size = [3, 3, 5, 5]
    b.stage_numb_of_layers = [3, 3, 3, 3]
    b.out_indices = [3, 4]  # S4, S5 only: strides 16 and 32
    b.use_learnable_affine_block = True
    c.num_feature_levels = 2
    c.feat_strides = [16, 32]
    c.encoder_in_channels = [512, 1024]
    c.encode_proj_layers = [1]
    c.d_model = 128
    c.encoder_hidden_dim = 128
    c.encoder_ffn_dim = 512
    c.decoder_ffn_dim = 512
    c.decoder_in_channels = [128, 128]
    c.decoder_n_points = [6, 6]
    c.decoder_layers = 3
    c.depth_mult = 0.5
    c.hidden_expansion = 0.34
    c.num_labels = num_labels
    c.num_queries = num_queries
    # from-scratch training as D-FINE's own recipe has it: trainable backbone BatchNorm (transformers'
    # default freezes it, which suits fine-tuning pretrained weights only) and a 0.01 class prior for the
    # score-head biases (transformers' default is 1 / (num_labels + 1))
    c.freeze_backbone_batch_norms = False
    c.initializer_bias_prior_prob = 0.01
    c.id2label = {i: f"class{i}" for i in range(num_labels)}
    c.label2id = {v: k for k, v in c.id2label.items()}
    return c


def hf_forward(model, x):
    return model(pixel_values=x)


def build(spec: str, nc: int, smoke: bool = False) -> Built:
    """One row: a peer name or an hmpe preset / YAML with overrides (``model:key=value,...``)."""
    if spec in PEER_NAMES:
        return _build_peer(spec, nc, smoke)
    from hmpe.models.detector import build_model

    model, over = parse_row_spec(spec)
    cfg = load_hmpe_model_config(model, over)
    m = build_model(cfg, nc)
    strides = ",".join(str(s) for s in m.backbone.out_strides)
    return Built(spec, f"hmpe {package_version('hmpe')} preset/YAML {model}" + (f" + {over}" if over else ""), m,
                 levels=f"strides {strides}")


def _build_peer(spec: str, nc: int, smoke: bool) -> Built:
    if spec == "yolo11n":
        require("ultralytics")
        from ultralytics.nn.tasks import DetectionModel

        return Built(spec, f"ultralytics {package_version('ultralytics')} DetectionModel('yolo11n.yaml')",
                     DetectionModel("yolo11n.yaml", nc=nc, verbose=False), levels="P3,P4,P5 (8/16/32)")
    if spec == "rtdetr-l":
        require("ultralytics")
        from ultralytics.nn.tasks import RTDETRDetectionModel

        return Built(spec, f"ultralytics {package_version('ultralytics')} RTDETRDetectionModel('rtdetr-l.yaml')",
                     RTDETRDetectionModel("rtdetr-l.yaml", nc=nc, verbose=False), levels="S3,S4,S5 (8/16/32)")
    require("transformers")
    from transformers import DFineForObjectDetection

    return Built(spec, f"transformers {package_version('transformers')} DFineForObjectDetection (D-FINE-N config)",
                 DFineForObjectDetection(dfine_n_config(nc, SMOKE_QUERIES if smoke else 300)), hf_forward,
                 levels="S4,S5 (16/32)")


def peer_split(b: Built) -> dict[str, int]:
    """backbone / encoder / decoder (or head) parameters, as far as each library's structure allows."""
    m = b.model
    if b.name in ("yolo11n", "rtdetr-l"):  # ultralytics: a flat layer list, the head is the last layer
        layers = list(m.model)
        head = "decoder (RTDETRDecoder)" if b.name == "rtdetr-l" else "head (Detect)"
        return {"backbone + neck/encoder": sum(count_params(l) for l in layers[:-1]), head: count_params(layers[-1]),
                "total": count_params(m)}
    if b.name == "dfine-n":  # HF: model.backbone, model.encoder_input_proj + model.encoder, the rest decodes
        core = m.model
        bb = count_params(core.backbone)
        enc = count_params(core.encoder) + count_params(core.encoder_input_proj)
        total = count_params(m)
        return {"backbone": bb, "encoder": enc, "decoder (+ query selection, heads)": total - bb - enc,
                "total": total}
    return param_split(m)
