"""Deploy mode: fold what is constant at inference into the weights, once.

:func:`fuse_model` (``DetectionModel.fuse()``) turns an eval-mode detector into an inference-only one
with the same outputs (to float rounding):

* every RepVGG block of the encoder becomes one 3x3 conv (its two BatchNorms folded in);
* strip blocks (LSConv / DSConv / StripBlock) fold the BatchNorm after each path into the path's strip
  convolutions, and LSConv's per-channel path weights ``softmax(fuse_logits)`` into the same scale
  (``w * relu(z) = relu(w * z)`` for ``w > 0``), see :meth:`hmpe.models.lsconv.LSConv.fold_for_inference`;
* every remaining ``Conv2d`` directly followed by a ``BatchNorm2d`` / ``FrozenBatchNorm2d`` among one
  module's children (``ConvBNAct``, ``ConvNormLayer``, the input projections, LSConv's offset
  predictors and residual projections, whatever backbone blocks use that layout) becomes one conv with
  a bias, the norm an ``Identity``;
* modules with inference constants keep them once computed (``enable_constant_cache``): the
  encoder's sin-cos position encodings, the decoder's anchors and valid mask, per input size;
* ``channels_last`` (default): the conv weights in channels-last memory format, so oneDNN runs the
  convolutions on NHWC activations without reordering each one (inputs may stay NCHW: the first
  conv's output follows the weights' format). Values are the same; the layout is an implementation
  detail that a traced / exported graph does not see.

The pairing rule is structural (child order), not tied to a backbone's class names; it relies on a
conv being registered right before the norm that follows it in ``forward``, which holds for every block
in this package and for the HGNetv2 / RT-DETR layouts. The probe head uses GroupNorm (statistics per
image), which does not fold. A fused model is for inference only: do not train it or load a state dict
into it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from hmpe.models.rtdetr.encoder import RepVggBlock

__all__ = ["bn_affine", "conv_with_affine", "fuse_conv_bn_pairs", "fuse_model", "is_fused"]

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` [C] with ``bn(x) == x * scale + shift`` per channel (eval statistics)."""
    eps = float(bn.eps)
    scale = bn.weight / (bn.running_var + eps).sqrt()
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def conv_with_affine(conv: nn.Conv2d, scale: Tensor, shift: Tensor | None = None) -> nn.Conv2d:
    """A new conv equal to ``conv(x) * scale + shift`` (per output channel); bias only when needed."""
    bias = conv.bias is not None or shift is not None
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=bias, padding_mode=conv.padding_mode)
    new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    if bias:
        b = conv.bias * scale if conv.bias is not None else torch.zeros_like(scale)
        new.bias.copy_(b + (shift if shift is not None else 0))
    return new


@torch.no_grad()
def fuse_conv_bn_pairs(model: nn.Module) -> int:
    """Fold each ``Conv2d`` directly followed (among its parent's children) by a matching 2D BatchNorm.

    Returns the number of pairs folded; the norm is replaced by ``nn.Identity``."""
    n = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (name, conv), (norm_name, norm) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(norm, _NORMS)
                    and norm.num_features == conv.out_channels):
                scale, shift = bn_affine(norm)
                setattr(parent, name, conv_with_affine(conv, scale, shift))
                setattr(parent, norm_name, nn.Identity())
                n += 1
    return n


def is_fused(model: nn.Module) -> bool:
    return bool(getattr(model, "_hmpe_fused", False))


@torch.no_grad()
def fuse_model(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """Deploy mode in place (see the module docstring); idempotent. Returns ``model`` in eval mode."""
    model.eval()
    if is_fused(model):
        return model
    for m in list(model.modules()):
        if isinstance(m, RepVggBlock) and m.conv is None:
            m.reparameterize()  # before the generic pass: it reads the branches' own BatchNorms
    for m in list(model.modules()):
        fold = getattr(m, "fold_for_inference", None)
        if callable(fold):
            fold()
    fuse_conv_bn_pairs(model)
    for m in model.modules():
        cache = getattr(m, "enable_constant_cache", None)
        if callable(cache):
            cache()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model._hmpe_fused = True
    return model
