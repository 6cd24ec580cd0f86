"""RT-DETR decoder head: query selection, deformable transformer decoder, denoising.

Data flow of ``RTDETRDecoder.forward(feats, targets)``::

    feats [B,D,H_l,W_l] x L --input_proj--> memory [B,N,D] (levels flattened h-major, concatenated)
    anchors [1,N,4] (logit space) + valid_mask [1,N,1] for the actual level sizes
    query_selector(memory, anchors, valid_mask, extra) -> content [B,K,D], ref_unact [B,K,4],
                                                          enc logits/boxes of the K tokens
    (training) denoising group prepended: [dn (Ndn) | matching (K)] + self-attention mask
    TransformerDecoder: L layers, each refines the boxes in inverse-sigmoid space
    -> per-layer logits [B,K,C] and boxes [B,K,4] (sigmoid, normalised cxcywh)

The pieces live one level down: the query selectors and the encoder output head in
:mod:`hmpe.models.rtdetr.query_selection`, the decoder layers in :mod:`hmpe.models.rtdetr.decoder_layers`, the
denoising group in :mod:`hmpe.models.rtdetr.denoising`; they are re-exported here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor, nn

from hmpe.models.rtdetr.common import MLP, bias_init_with_prob, run_fp32
from hmpe.models.rtdetr.decoder_layers import TransformerDecoder, TransformerDecoderLayer
from hmpe.models.rtdetr.denoising import get_contrastive_denoising_training_group
from hmpe.models.rtdetr.query_selection import EncoderOutputHead, QuerySelector, ScoreQuerySelector, generate_anchors

__all__ = [
    "MLP",
    "TransformerDecoderLayer",
    "TransformerDecoder",
    "EncoderOutputHead",
    "QuerySelector",
    "ScoreQuerySelector",
    "RTDETRDecoder",
    "generate_anchors",
    "bias_init_with_prob",
    "run_fp32",
]


class RTDETRDecoder(nn.Module):
    """RT-DETR decoder head (query selection + deformable decoder + denoising).

    ``forward(feats, targets=None, extra=None, return_all_layers=None) -> dict``:
    - always: ``pred_logits [B,K,C]``, ``pred_boxes [B,K,4]`` (sigmoid, normalised cxcywh) of decoder
      layer ``eval_idx``;
    - training: ``aux_outputs`` (list of ``{pred_logits, pred_boxes}`` for the other layers, in layer
      order; omitted with ``aux_loss=False``), ``enc_outputs`` (``{pred_logits, pred_boxes}`` of the
      K selected encoder tokens),
      ``dn_outputs`` (list, one dict per layer, denoising queries only) and ``dn_meta`` (see
      ``denoising.py``; ``dn_num_group == 0`` and empty outputs when the batch has no object;
      ``dn_outputs = []``, ``dn_meta = None`` when ``num_denoising == 0``). Main and aux outputs
      hold only the K matching queries.
    - eval with ``return_all_layers``: also ``layer_outputs`` (one dict per decoder layer).
    """

    def __init__(
        self,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 300,
        feat_strides: Sequence[int] = (8, 16, 32),
        num_levels: int = 3,
        num_points: int = 4,
        nhead: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
        num_denoising: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        eval_idx: int = -1,
        eval_spatial_size: Sequence[int] | None = None,
        aux_loss: bool = True,
        feat_channels: Sequence[int] | None = None,
        query_selector: QuerySelector | None = None,
        return_all_layers: bool = False,
    ):
        super().__init__()
        if len(feat_strides) != num_levels:
            raise ValueError(f"feat_strides {tuple(feat_strides)} must have num_levels={num_levels} entries")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.feat_strides = list(feat_strides)
        self.num_levels = num_levels
        self.num_layers = num_layers
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.aux_loss = aux_loss
        self.return_all_layers = return_all_layers
        self.eval_spatial_size = list(eval_spatial_size) if eval_spatial_size is not None else None

        # Decoder input projection (1x1 conv + BN per level), as RT-DETR: decouples the decoder's
        # memory from the encoder output statistics even when the widths already match.
        feat_channels = list(feat_channels) if feat_channels is not None else [hidden_dim] * num_levels
        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, hidden_dim, 1, bias=False), norm=nn.BatchNorm2d(hidden_dim)))
            for c in feat_channels
        )

        self.query_selector = query_selector if query_selector is not None else ScoreQuerySelector(
            hidden_dim, num_classes, num_queries
        )

        layer = TransformerDecoderLayer(hidden_dim, nhead, dim_feedforward, dropout, activation, num_levels, num_points)
        self.decoder = TransformerDecoder(hidden_dim, layer, num_layers, eval_idx)
        self._build_heads(num_classes, hidden_dim, num_layers, num_denoising)
        self._cache_eval_anchors()
        self._reset_parameters()

    def _build_heads(self, num_classes: int, hidden_dim: int, num_layers: int, num_denoising: int) -> None:
        """The denoising class embedding, the query position head and the per-layer prediction heads."""
        # padding_idx row = "no class" for padded denoising slots; only built when denoising is on,
        # so that a run without it has no parameter that never gets a gradient (DDP)
        self.denoising_class_embed = (
            nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes) if num_denoising > 0 else None
        )
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, num_layers=3) for _ in range(num_layers))

    def _cache_eval_anchors(self) -> None:
        """Anchors are cached only for the fixed evaluation size; training sizes vary (multi-scale)."""
        self._cached_shapes: list[tuple[int, int]] | None = None
        if self.eval_spatial_size is not None:
            H, W = self.eval_spatial_size
            self._cached_shapes = [(math.ceil(H / s), math.ceil(W / s)) for s in self.feat_strides]
            anchors, valid = generate_anchors(self._cached_shapes)
            self.register_buffer("anchors", anchors, persistent=False)
            self.register_buffer("valid_mask", valid, persistent=False)

    @property
    def enc_head(self) -> EncoderOutputHead:
        return self.query_selector.head

    @property
    def eval_idx(self) -> int:
        return self.decoder.eval_idx

    @eval_idx.setter
    def eval_idx(self, value: int) -> None:
        self.decoder.eval_idx = int(value)

    def _reset_parameters(self) -> None:
        bias = bias_init_with_prob(0.01)
        for cls_head, reg_head in zip(self.dec_score_head, self.dec_bbox_head):
            nn.init.constant_(cls_head.bias, bias)
            nn.init.zeros_(reg_head.layers[-1].weight)
            nn.init.zeros_(reg_head.layers[-1].bias)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj.conv.weight)

    # ------------------------------------------------------------------ pieces
    def _flatten(self, feats: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        if len(feats) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(feats)}")
        memory, shapes = [], []
        for proj, f in zip(self.input_proj, feats):
            f = proj(f)
            # Python ints: the sizes are static for tracing / ONNX export
            shapes.append((int(f.shape[2]), int(f.shape[3])))
            memory.append(f.flatten(2).transpose(1, 2))  # [B, h*w, D], h-major
        return torch.cat(memory, 1), shapes

    def _anchors(self, shapes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
        if not self.training and self._cached_shapes is not None and shapes == self._cached_shapes:
            return self.anchors, self.valid_mask
        cache = getattr(self, "_anchor_cache", None)
        key = (tuple(shapes), str(device))
        if cache is not None and not self.training and key in cache:
            return cache[key]
        out = generate_anchors(shapes, device=device)
        if cache is not None and not self.training and not torch.jit.is_tracing():
            cache[key] = out
        return out

    def enable_constant_cache(self) -> None:
        """Deploy mode (:func:`hmpe.models.rtdetr.deploy.fuse_model`): anchors and valid mask once per input size."""
        self._anchor_cache: dict = {}

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        feats: Sequence[Tensor],
        targets: list[dict] | None = None,
        extra: dict | None = None,
        return_all_layers: bool | None = None,
    ) -> dict:
        memory, shapes = self._flatten(feats)  # [B, N, D]
        anchors, valid_mask = self._anchors(shapes, memory.device)
        content, ref_unact, enc_logits, enc_boxes = self.query_selector(memory, anchors, valid_mask, extra)

        dn_meta, attn_mask = None, None
        use_dn = self.training and self.num_denoising > 0 and targets is not None
        if use_dn:
            content, ref_unact, attn_mask, dn_meta = self._prepend_denoising(targets, content, ref_unact)

        all_layers = self.return_all_layers if return_all_layers is None else return_all_layers
        boxes, logits, ids = self.decoder(
            content,
            ref_unact,
            memory,
            shapes,
            self.dec_bbox_head,
            self.dec_score_head,
            self.query_pos_head,
            attn_mask=attn_mask,
            return_all_layers=all_layers,
        )

        n_dn = int(dn_meta["dn_num_split"][0]) if dn_meta is not None else 0
        layer_outs = [{"pred_logits": lg[:, n_dn:], "pred_boxes": bx[:, n_dn:]} for bx, lg in zip(boxes, logits)]
        eval_pos = ids.index(self.decoder.resolved_eval_idx())
        out = dict(layer_outs[eval_pos])

        if self.training:
            # enc_outputs always: the encoder head is trained only through this loss (the selected
            # content and references are detached), and query selection depends on it
            out["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes}
            if self.aux_loss:
                out["aux_outputs"] = [o for k, o in enumerate(layer_outs) if k != eval_pos]
            out["dn_outputs"] = self._dn_outputs(boxes, logits, n_dn, eval_pos) if use_dn else []
            out["dn_meta"] = dn_meta
        elif all_layers:
            out["layer_outputs"] = layer_outs
        return out

    def _prepend_denoising(self, targets: list[dict], content: Tensor, ref_unact: Tensor
                           ) -> tuple[Tensor, Tensor, Tensor | None, dict]:
        """The denoising group before the K matching queries -> (content, ref_unact, attn_mask, dn_meta)."""
        num_q = content.shape[1]
        dn_content, dn_ref, attn_mask, dn_meta = get_contrastive_denoising_training_group(
            targets,
            self.num_classes,
            num_q,
            self.denoising_class_embed,
            self.num_denoising,
            self.label_noise_ratio,
            self.box_noise_scale,
        )
        if dn_meta is not None:
            content = torch.cat([dn_content.to(content.dtype), content], 1)
            ref_unact = torch.cat([dn_ref.to(ref_unact.dtype), ref_unact], 1)
            return content, ref_unact, attn_mask, dn_meta
        # No object in the whole batch: no group. Touch the embedding with a zero so that DDP
        # (find_unused_parameters=False) still sees a gradient for it on this rank.
        content = content + 0.0 * self.denoising_class_embed.weight.sum()
        dn_meta = {
            "dn_positive_idx": [torch.zeros(0, dtype=torch.long, device=content.device) for _ in targets],
            "dn_num_group": 0,
            "dn_num_split": [0, num_q],
        }
        return content, ref_unact, attn_mask, dn_meta

    def _dn_outputs(self, boxes: list[Tensor], logits: list[Tensor], n_dn: int, eval_pos: int) -> list[dict]:
        """The denoising queries' predictions per layer (only layer ``eval_idx``'s without aux losses)."""
        dn = [{"pred_logits": lg[:, :n_dn], "pred_boxes": bx[:, :n_dn]} for bx, lg in zip(boxes, logits)]
        return dn if self.aux_loss else dn[eval_pos : eval_pos + 1]
