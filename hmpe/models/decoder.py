"""RT-DETR decoder head: query selection, deformable transformer decoder, denoising.

Data flow of ``RTDETRDecoder.forward(feats, targets)``::

    feats [B,D,H_l,W_l] x L --input_proj--> memory [B,N,D] (levels flattened h-major, concatenated)
    anchors [1,N,4] (logit space) + valid_mask [1,N,1] for the actual level sizes
    query_selector(memory, anchors, valid_mask, extra) -> content [B,K,D], ref_unact [B,K,4],
                                                          enc logits/boxes of the K tokens
    (training) denoising group prepended: [dn (Ndn) | matching (K)] + self-attention mask
    TransformerDecoder: L layers, each refines the boxes in inverse-sigmoid space
    -> per-layer logits [B,K,C] and boxes [B,K,4] (sigmoid, normalised cxcywh)

Where the encoder output head lives: ``EncoderOutputHead`` (``enc_output`` = Linear + LayerNorm,
``enc_score_head``, ``enc_bbox_head``) is owned by the query selector (``QuerySelector.head``, also
reachable as ``RTDETRDecoder.enc_head``). Every selector computes the per-token class logits and
anchor-relative boxes with it, because the encoder loss (``enc_outputs``) needs them at the selected
tokens and the reference boxes come from them. A heatmap-based selector (HIDQ) subclasses
``QuerySelector``, reuses ``self.head`` for boxes / class confidence, reads its heatmap from ``extra``
and is passed to ``RTDETRDecoder(query_selector=...)``; nothing else changes.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor, nn

from hmpe.models.deformable import MSDeformableAttention
from hmpe.models.denoising import get_contrastive_denoising_training_group
from hmpe.utils.boxes import inverse_sigmoid

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


def bias_init_with_prob(prior_prob: float = 0.01) -> float:
    """Bias so that sigmoid(bias) = prior_prob (focal-loss init: few positives at the start)."""
    return float(-math.log((1 - prior_prob) / prior_prob))


def get_activation(name: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(acts)}")
    return acts[name]()


def run_fp32(module: nn.Module, x: Tensor) -> Tensor:
    """Run a prediction head in fp32 even under autocast: box deltas are added in inverse-sigmoid
    space, where fp16/bf16 rounding moves small boxes by whole pixels (the engine's AMP relies on it)."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return module(x.float())
    return module(x)


class MLP(nn.Module):
    """``num_layers`` Linear layers with an activation between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, activation: str = "relu"):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = get_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


def generate_anchors(
    spatial_shapes: Sequence[tuple[int, int]],
    grid_size: float = 0.05,
    eps: float = 0.01,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """RT-DETR anchors for the given level sizes.

    Per level ``l`` of size ``(h, w)``: centres at pixel centres ``((j+0.5)/w, (i+0.5)/h)``, h-major
    (row index outer, matching ``flatten(2)`` of a ``[B,D,h,w]`` map), size ``w = h = grid_size * 2^l``.
    Returns ``anchors [1,N,4]`` in logit space (``inf`` where invalid) and ``valid_mask [1,N,1]``
    bool (all four values inside ``(eps, 1-eps)``; border anchors whose logit would blow up).
    """
    per_level = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=device),
            torch.arange(w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        cx = (xs + 0.5) / w
        cy = (ys + 0.5) / h
        wh = torch.full_like(cx, grid_size * (2.0**lvl))
        per_level.append(torch.stack([cx, cy, wh, wh], -1).reshape(-1, 4))
    anchors = torch.cat(per_level, 0).unsqueeze(0)  # [1, N, 4]
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    anchors = torch.where(valid, anchors, torch.full_like(anchors, float("inf")))
    return anchors, valid


# --------------------------------------------------------------------------- decoder layers
class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention -> deformable cross-attention -> FFN."""

    def __init__(
        self,
        d_model: int = 256,
        n_head: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
        n_levels: int = 3,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = get_activation(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,  # [B, T, D]
        reference_points: Tensor,  # [B, T, 1, 4] sigmoid cxcywh
        memory: Tensor,  # [B, N, D]
        spatial_shapes: Sequence[tuple[int, int]],
        attn_mask: Tensor | None = None,  # [T, T] bool, True = blocked
        memory_mask: Tensor | None = None,  # [B, N]
        query_pos: Tensor | None = None,  # [B, T, D]
    ) -> Tensor:
        q = k = tgt if query_pos is None else tgt + query_pos
        tgt2, _ = self.self_attn(q, k, tgt, attn_mask=attn_mask, need_weights=False)
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        q = tgt if query_pos is None else tgt + query_pos
        tgt2 = self.cross_attn(q, reference_points, memory, spatial_shapes, memory_mask)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))


class TransformerDecoder(nn.Module):
    """Stack of decoder layers with iterative box refinement.

    Layer ``i`` predicts a delta in inverse-sigmoid space on top of the *detached* reference of the
    previous layer; the refined box becomes the next reference (detached again in training, so each
    layer learns its own correction). In training, the box *reported* for layer ``i > 0`` adds the
    delta to the previous layer's undetached box ("look forward twice", DINO / RT-DETR) so that the
    previous layer also gets a gradient from layer ``i``'s loss; the values are identical.

    In eval mode the loop stops after ``eval_idx`` (later layers are not run, a real speed-up for
    Det^k) unless ``return_all_layers`` is set.
    """

    def __init__(self, hidden_dim: int, decoder_layer: nn.Module, num_layers: int, eval_idx: int = -1):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.layers = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(num_layers))
        self.eval_idx = eval_idx

    def resolved_eval_idx(self) -> int:
        idx = self.eval_idx if self.eval_idx >= 0 else self.num_layers + self.eval_idx
        if not 0 <= idx < self.num_layers:
            raise ValueError(f"eval_idx {self.eval_idx} out of range for {self.num_layers} layers")
        return idx

    def forward(
        self,
        tgt: Tensor,  # [B, T, D]
        ref_unact: Tensor,  # [B, T, 4] inverse-sigmoid cxcywh
        memory: Tensor,  # [B, N, D]
        spatial_shapes: Sequence[tuple[int, int]],
        bbox_head: nn.ModuleList,
        score_head: nn.ModuleList,
        query_pos_head: nn.Module,
        attn_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        return_all_layers: bool = False,
    ) -> tuple[list[Tensor], list[Tensor], list[int]]:
        """Returns ``(boxes, logits, layer_ids)``: lists of ``[B,T,4]`` / ``[B,T,C]`` for the layers
        in ``layer_ids`` (all layers in training or with ``return_all_layers``, else ``[eval_idx]``)."""
        eval_idx = self.resolved_eval_idx()
        all_layers = self.training or return_all_layers
        out = tgt
        ref_detach = ref_unact.sigmoid().detach()  # [B, T, 4]
        ref_grad = ref_detach  # previous layer's box with its graph (look forward twice)
        boxes, logits, ids = [], [], []
        for i, layer in enumerate(self.layers):
            query_pos = query_pos_head(ref_detach)
            out = layer(out, ref_detach.unsqueeze(2), memory, spatial_shapes, attn_mask, memory_mask, query_pos)
            delta = run_fp32(bbox_head[i], out)
            new_ref = torch.sigmoid(delta + inverse_sigmoid(ref_detach))
            if all_layers or i == eval_idx:
                if self.training and i > 0:
                    boxes.append(torch.sigmoid(delta + inverse_sigmoid(ref_grad)))
                else:
                    boxes.append(new_ref)
                logits.append(run_fp32(score_head[i], out))
                ids.append(i)
            if not all_layers and i == eval_idx:
                break
            ref_grad = new_ref
            ref_detach = new_ref.detach()
        return boxes, logits, ids


# --------------------------------------------------------------------------- query selection
class EncoderOutputHead(nn.Module):
    """Per-token head on the encoder memory: class logits and anchor-relative boxes (logit space)."""

    def __init__(self, hidden_dim: int, num_classes: int):
        super().__init__()
        self.enc_output = nn.Sequential(
            OrderedDict([("proj", nn.Linear(hidden_dim, hidden_dim)), ("norm", nn.LayerNorm(hidden_dim))])
        )
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.enc_output.proj.weight)
        nn.init.constant_(self.enc_score_head.bias, bias_init_with_prob(0.01))
        nn.init.zeros_(self.enc_bbox_head.layers[-1].weight)
        nn.init.zeros_(self.enc_bbox_head.layers[-1].bias)

    def project(self, memory: Tensor, valid_mask: Tensor) -> Tensor:
        """memory [B,N,D], valid_mask [1,N,1] -> output_memory [B,N,D]."""
        # zero the border tokens whose anchors are invalid (their anchor logit is inf)
        return self.enc_output(memory * valid_mask.to(memory.dtype))

    def classify(self, output_memory: Tensor) -> Tensor:
        """output_memory [B,N,D] -> class logits [B,N,C] (fp32)."""
        return run_fp32(self.enc_score_head, output_memory)

    def regress(self, output_memory: Tensor, anchors: Tensor) -> Tensor:
        """output_memory [B,K,D], anchors [B or 1,K,4] (logit space) -> coord_unact [B,K,4] (fp32).

        Per token, so the selectors call it on the K selected tokens only: the 3-layer box MLP is the
        head's largest cost (0.54 of the head's 1.0 GFLOPs in hmpe-n at 640 px when run on all N tokens).
        """
        return run_fp32(self.enc_bbox_head, output_memory) + anchors

    def forward(self, memory: Tensor, anchors: Tensor, valid_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The dense head: memory [B,N,D], anchors [1,N,4], valid_mask [1,N,1] -> (output_memory [B,N,D],
        logits [B,N,C], coord_unact [B,N,4])."""
        output_memory = self.project(memory, valid_mask)
        return output_memory, self.classify(output_memory), self.regress(output_memory, anchors)


def _gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x [B,N,E], index [B,K] -> [B,K,E]."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class QuerySelector(nn.Module):
    """Base of the query selectors: owns the encoder output head.

    ``forward(memory [B,N,D], anchors [1,N,4], valid_mask [1,N,1], extra: dict | None)
    -> (content [B,K,D], ref_unact [B,K,4] detached, topk_logits [B,K,C], topk_boxes [B,K,4])``
    with ``K = min(num_queries, N)``; ``topk_logits``/``topk_boxes`` (sigmoid) keep their graph
    for the encoder loss.
    """

    def __init__(self, hidden_dim: int, num_classes: int, num_queries: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.head = EncoderOutputHead(hidden_dim, num_classes)

    def num_selected(self, num_tokens: int) -> int:
        return min(self.num_queries, num_tokens)

    def boxes_at(self, selected: Tensor, anchors: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Boxes of the selected tokens only: selected [B,K,D] (projected memory), anchors [1,N,4],
        index [B,K] -> (ref_unact [B,K,4] detached, topk_boxes [B,K,4] sigmoid, with graph)."""
        ref_unact = self.head.regress(selected, _gather_tokens(anchors.expand(index.shape[0], -1, -1), index))
        return ref_unact.detach(), ref_unact.sigmoid()

    def select(self, output_memory: Tensor, logits: Tensor, anchors: Tensor, index: Tensor):
        """Gather the selected tokens [B,K] and regress their boxes; shared by every selector so outputs
        stay consistent. output_memory [B,N,D], logits [B,N,C], anchors [1,N,4]."""
        selected = _gather_tokens(output_memory, index)  # [B,K,D]
        ref_unact, topk_boxes = self.boxes_at(selected, anchors, index)
        # content and reference are detached as in RT-DETR: the encoder is trained through the
        # encoder loss and the cross-attention values, not through the query initialisation
        return selected.detach(), ref_unact, _gather_tokens(logits, index), topk_boxes


class ScoreQuerySelector(QuerySelector):
    """RT-DETR's selection: top-K tokens by their maximum class logit (invalid anchors excluded)."""

    def forward(
        self, memory: Tensor, anchors: Tensor, valid_mask: Tensor, extra: dict | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        output_memory = self.head.project(memory, valid_mask)
        logits = self.head.classify(output_memory)  # [B,N,C]
        score = logits.max(-1).values  # [B, N]
        # RT-DETR relies on zeroed memory to keep border tokens out of the top-K; masking the score
        # makes it certain (an inf anchor would give a degenerate (1,1,1,1) reference box).
        score = score.masked_fill(~valid_mask[..., 0], float("-inf"))
        index = torch.topk(score, self.num_selected(memory.shape[1]), dim=1).indices  # [B, K]
        return self.select(output_memory, logits, anchors, index)


# --------------------------------------------------------------------------- the head
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
            nn.Sequential(
                OrderedDict(
                    [("conv", nn.Conv2d(c, hidden_dim, 1, bias=False)), ("norm", nn.BatchNorm2d(hidden_dim))]
                )
            )
            for c in feat_channels
        )

        self.query_selector = query_selector if query_selector is not None else ScoreQuerySelector(
            hidden_dim, num_classes, num_queries
        )

        layer = TransformerDecoderLayer(hidden_dim, nhead, dim_feedforward, dropout, activation, num_levels, num_points)
        self.decoder = TransformerDecoder(hidden_dim, layer, num_layers, eval_idx)

        # padding_idx row = "no class" for padded denoising slots; only built when denoising is on,
        # so that a run without it has no parameter that never gets a gradient (DDP)
        self.denoising_class_embed = (
            nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes) if num_denoising > 0 else None
        )
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, num_layers=3) for _ in range(num_layers))

        # Anchors are cached only for the fixed evaluation size; training sizes vary (multi-scale).
        self._cached_shapes: list[tuple[int, int]] | None = None
        if self.eval_spatial_size is not None:
            H, W = self.eval_spatial_size
            self._cached_shapes = [(math.ceil(H / s), math.ceil(W / s)) for s in self.feat_strides]
            anchors, valid = generate_anchors(self._cached_shapes)
            self.register_buffer("anchors", anchors, persistent=False)
            self.register_buffer("valid_mask", valid, persistent=False)
        self._reset_parameters()

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
        """Deploy mode (:func:`hmpe.models.deploy.fuse_model`): anchors and valid mask once per input size."""
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
        num_q = content.shape[1]

        dn_meta, attn_mask = None, None
        use_dn = self.training and self.num_denoising > 0 and targets is not None
        if use_dn:
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
            else:
                # No object in the whole batch: no group. Touch the embedding with a zero so that DDP
                # (find_unused_parameters=False) still sees a gradient for it on this rank.
                content = content + 0.0 * self.denoising_class_embed.weight.sum()
                dn_meta = {
                    "dn_positive_idx": [torch.zeros(0, dtype=torch.long, device=memory.device) for _ in targets],
                    "dn_num_group": 0,
                    "dn_num_split": [0, num_q],
                }

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
            if use_dn:
                out["dn_outputs"] = [{"pred_logits": lg[:, :n_dn], "pred_boxes": bx[:, :n_dn]} for bx, lg in zip(boxes, logits)]
                if not self.aux_loss:
                    out["dn_outputs"] = out["dn_outputs"][eval_pos : eval_pos + 1]
            else:
                out["dn_outputs"] = []
            out["dn_meta"] = dn_meta
        elif all_layers:
            out["layer_outputs"] = layer_outs
        return out
