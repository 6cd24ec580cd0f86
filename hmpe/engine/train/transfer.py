"""Start a training run from pretrained weights: an ImageNet backbone file or any hmpe checkpoint.

``backbone.pretrained=FILE`` loads HGNetv2 weights (:mod:`hmpe.models.rtdetr.pretrained`). ``weights=CKPT`` (a
``.pt`` written by ``hmpe train`` or a ``save_pretrained`` folder) fine-tunes a whole detector: every tensor
whose name and shape match is kept; when the new dataset's classes differ from the checkpoint's (other
names, other order or another count), the class-dependent tensors - those whose shape follows the number of
classes: decoder / encoder class heads, the denoising label embedding, the heatmap probe's class head,
HIDQ's class scorer - are re-initialised, because row c of a trained class head means the checkpoint's
class c, not the new one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hmpe.engine.checkpoint import inference_state, load_checkpoint
from hmpe.models.detector import build_model
from hmpe.models.rtdetr.pretrained import load_pretrained_backbone

__all__ = ["TransferReport", "class_dependent_keys", "load_start_weights", "transfer_weights"]


def class_dependent_keys(model_cfg: dict, num_classes: int, own: dict[str, Tensor]) -> set[str]:
    """Tensor names of ``own`` (a model built for ``num_classes``) whose shape depends on the class count.

    Found by building the same config for one class more and comparing shapes, so no list of heads has to
    be kept in step with the model code. The extra build runs on a forked RNG: the run's seed is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        other = build_model(model_cfg, num_classes + 1).state_dict()
    return {k for k, v in own.items() if k in other and tuple(other[k].shape) != tuple(v.shape)}


def _modules(keys) -> str:
    """``decoder.dec_score_head.3.weight`` ... -> ``decoder.dec_score_head`` (parameter and index dropped)."""
    names = dict.fromkeys(re.sub(r"(\.\d+)+(?=\.|$)", "", k.rsplit(".", 1)[0]) for k in sorted(keys))
    return ", ".join(names) if names else "-"


@dataclass
class TransferReport:
    """What ``weights=CKPT`` kept; ``str()`` is what the trainer prints."""

    path: str
    kept: int
    total: int
    old_names: list[str]
    new_names: list[str]
    reinit: list[str] = field(default_factory=list)  # class-dependent, re-initialised on purpose
    other_init: list[str] = field(default_factory=list)  # not class-dependent, no fitting tensor in the file
    unused: list[str] = field(default_factory=list)  # file tensors with no counterpart

    def __str__(self) -> str:
        classes = ("same classes" if self.old_names == self.new_names else
                   f"{len(self.old_names)} -> {len(self.new_names)} classes, {self.new_names[:5]}"
                   f"{'...' if len(self.new_names) > 5 else ''}")
        line = (f"weights {self.path}: kept {self.kept}/{self.total} tensors ({classes}); "
                f"re-initialised {len(self.reinit)} class-dependent: {_modules(self.reinit)}")
        if self.other_init:
            line += f"; {len(self.other_init)} others left at init (not in the file): {_modules(self.other_init)}"
        if self.unused:
            line += f"; {len(self.unused)} file tensors unused: {_modules(self.unused)}"
        return line


def transfer_weights(model: nn.Module, ckpt: dict, names: list[str], model_cfg: dict,
                     path: str = "weights") -> TransferReport:
    """Load ``ckpt``'s weights (EMA when present) into ``model`` (built for ``names``); see the module doc."""
    state = inference_state(ckpt)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    old_names = list(ckpt.get("names") or [])
    cls_keys = set() if old_names == list(names) else class_dependent_keys(model_cfg, len(names), own)
    fits = {k: v for k, v in state.items()
            if k in own and k not in cls_keys and tuple(v.shape) == tuple(own[k].shape)}
    with torch.no_grad():
        model.load_state_dict(fits, strict=False)
    return TransferReport(
        str(path), len(fits), len(own), old_names, list(names), reinit=sorted(cls_keys),
        other_init=[k for k in own if k not in fits and k not in cls_keys],
        unused=[k for k in state if k not in own and not k.endswith("num_batches_tracked")]
        + [k for k in state if k in own and k not in cls_keys and k not in fits])


def load_start_weights(model: nn.Module, model_cfg: dict, cfg: dict, names: list[str],
                       log: Callable[[str], None] | None) -> bool:
    """A fresh run: load ``backbone.pretrained`` then ``weights`` into ``model`` and ``log`` one report line
    each. ``log=None`` (a resumed run, whose weights come from its checkpoint) loads nothing. Returns whether
    the run starts from pretrained weights (the backbone then trains at ``lr_backbone``, 0.1 x lr by default).
    """
    bb_file = (model_cfg.get("backbone") or {}).get("pretrained")
    if log is not None and bb_file:
        log(str(load_pretrained_backbone(model.backbone, bb_file)))
    if log is not None and cfg.get("weights"):
        log(str(transfer_weights(model, load_checkpoint(cfg["weights"]), names, model_cfg, cfg["weights"])))
    return bool(bb_file or cfg.get("weights"))
