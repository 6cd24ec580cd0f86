"""The RT-DETR decoder's layers: self-attention -> deformable cross-attention -> FFN, stacked with
iterative box refinement (:class:`TransformerDecoder`)."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn

from hmpe.models.rtdetr.common import get_activation, run_fp32
from hmpe.models.rtdetr.deformable import MSDeformableAttention
from hmpe.utils.boxes import inverse_sigmoid

__all__ = ["TransformerDecoder", "TransformerDecoderLayer"]


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
        tgt = self.norm1(tgt + self.dropout1(self.query_self_attention(q, k, tgt, attn_mask)))
        q = tgt if query_pos is None else tgt + query_pos
        tgt2 = self.cross_attn(q, reference_points, memory, spatial_shapes, memory_mask)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))

    def query_self_attention(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
        """Self-attention among the queries [B, T, D]; in fp32 under CPU autocast.

        On the CPU the fused attention kernel (forward and backward) is slower in bf16 than in fp32 at these
        head sizes (d_model / n_head = 16 in the nano models), and T is only a few hundred queries, so
        leaving autocast here costs no memory worth counting."""
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self.self_attn(q.float(), k.float(), v.float(), attn_mask=attn_mask, need_weights=False)[0]
        return self.self_attn(q, k, v, attn_mask=attn_mask, need_weights=False)[0]


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

