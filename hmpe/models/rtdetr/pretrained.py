"""ImageNet-pretrained HGNetv2 weights from a local file (``backbone.pretrained=PATH``).

Three public layouts load into :class:`hmpe.models.rtdetr.backbone.HGNetv2` (B0-B6):

* timm's ``hgnetv2_b0`` ... ``hgnetv2_b6`` (``pytorch_model.bin`` / ``model.safetensors``): hmpe's own key
  names, plus a ``head.*`` ImageNet classifier that a detector does not use;
* D-FINE's / DEIM's ``PPHGNetV2_B0_stage1.pth`` ... ``B6``: the same key names as timm;
* the official RT-DETRv2 PyTorch ``PPHGNetV2_{L,X,H}_ssld_pretrained_from_paddle.pth`` (B4/B5/B6):
  ``stem.stem2a.conv.1.*`` for ``stem.stem2a.conv.*`` (its 2x2 stem convs sit behind a ZeroPad2d in an
  nn.Sequential) and ``aggregation_squeeze_conv`` / ``aggregation_excitation_conv`` for
  ``aggregation.0`` / ``aggregation.1``; renamed here, the tensors are the same.

Wrappers (``ema`` with its ``module``, ``model``, ``state_dict``, a DDP ``module.`` prefix) are unwrapped; a
detector checkpoint's ``backbone.*`` part is taken when the file has no bare backbone keys. The load is by
name and shape: every tensor of the file that has a counterpart is copied; hmpe parameters without one stay
at their initialisation (strip-conv blocks; ``lab`` blocks when the file has none - they start as the
identity, so the pretrained function is unchanged). A file whose backbone tensors do not fit the model (a
shape mismatch, a backbone key the model lacks, ``lab`` tensors for a model built without them) is an error
naming the first such key: its weights would not compute what they were trained to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hmpe.models.rtdetr.backbone import PUBLIC_USE_LAB

__all__ = ["PretrainedLoadReport", "load_pretrained_backbone", "read_state_dict", "to_hmpe_layout"]

_WRAPPERS = ("ema", "model", "state_dict", "module")  # ema first: the averaged weights are the ones to use
_RTDETRV2_RENAMES = (
    (".aggregation_squeeze_conv.", ".aggregation.0."),
    (".aggregation_excitation_conv.", ".aggregation.1."),
    ("stem.stem2a.conv.1.", "stem.stem2a.conv."),
    ("stem.stem2b.conv.1.", "stem.stem2b.conv."),
)
_BACKBONE_ROOTS = ("stem.", "stages.")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A ``.pth``/``.pt``/``.bin`` (torch, no pickle beyond tensors) or ``.safetensors`` file -> bare state dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone.pretrained={path}: no such file (weights are never downloaded; "
                                f"give the path of a local timm / D-FINE / RT-DETRv2 HGNetv2 file)")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"backbone.pretrained={path}: cannot be read as a state dict "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not _is_state_dict(obj):
        raise ValueError(f"backbone.pretrained={path}: holds no state dict (looked inside {', '.join(_WRAPPERS)})")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    for prefix in ("module.", "backbone."):  # DDP-saved file; a detector checkpoint's backbone part
        if not any(k.startswith(_BACKBONE_ROOTS) for k in state) and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def to_hmpe_layout(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Rename the RT-DETRv2 layout to timm's (= hmpe's); returns (state, layout name)."""
    if not any("aggregation_squeeze_conv" in k or k.startswith("stem.stem2a.conv.1.") for k in state):
        return state, "timm/D-FINE"
    out = {}
    for k, v in state.items():
        for old, new in _RTDETRV2_RENAMES:
            k = k.replace(old, new) if (old.startswith(".") or k.startswith(old)) else k
        out[k] = v
    return out, "RT-DETRv2"


@dataclass
class PretrainedLoadReport:
    """What one ``backbone.pretrained`` load did; ``str()`` is the one-line report the trainer prints."""

    path: str
    variant: str
    layout: str
    loaded: int
    left_at_init: dict[str, list[str]] = field(default_factory=dict)  # reason -> hmpe keys
    unused: dict[str, list[str]] = field(default_factory=dict)  # reason -> file keys

    @staticmethod
    def _groups(groups: dict[str, list[str]]) -> str:
        n = sum(len(v) for v in groups.values())
        if not n:
            return "0"
        return f"{n} (" + "; ".join(f"{reason}: {len(keys)}" for reason, keys in groups.items() if keys) + ")"

    def __str__(self) -> str:
        return (f"backbone.pretrained {self.path} ({self.layout} layout) -> HGNetv2-{self.variant}: "
                f"{self.loaded} tensors loaded; hmpe tensors left at init: {self._groups(self.left_at_init)}; "
                f"unused file keys: {self._groups(self.unused)}")


def _reason_left(key: str, strip: tuple[str, ...]) -> str:
    if strip and key.startswith(strip):
        return "strip conv " + next(p for p in strip if key.startswith(p)).rstrip(".")
    return "lab (file has none)" if ".lab." in key else "not in file"


def _reason_unused(key: str, built: int, strip: tuple[str, ...]) -> str | None:
    """Why a file key has no counterpart; None when that means the file does not fit the model."""
    if key.startswith("head."):
        return "ImageNet classifier head.*"
    if strip and key.startswith(strip):
        return "replaced by the strip conv"
    if key.startswith("stages.") and key.split(".")[1].isdigit() and int(key.split(".")[1]) >= built:
        return "stages past return_idx (not built)"
    return None if key.startswith(_BACKBONE_ROOTS) else "not a backbone key"


def _misfit(backbone: nn.Module, path, key: str, got: tuple, want: tuple | None) -> ValueError:
    name = backbone.name
    where = f"shape {want} in HGNetv2-{name}" if want is not None else f"no such tensor in HGNetv2-{name}"
    hint = ""
    if ".lab." in key and want is None:
        hint = " - the file was trained with learnable affine blocks: set backbone.use_lab=true"
    elif want is not None or key.startswith(_BACKBONE_ROOTS):
        lab = "" if PUBLIC_USE_LAB[name] == backbone.use_lab else f" (with backbone.use_lab={PUBLIC_USE_LAB[name]})"
        hint = (f" - the file is for another HGNetv2 variant or option; backbone.name={name} takes timm's "
                f"hgnetv2_{name.lower()} files{lab}")
    return ValueError(f"backbone.pretrained={path}: {key} has shape {got} in the file but {where}{hint}")


def load_pretrained_backbone(backbone: nn.Module, path: str | os.PathLike) -> PretrainedLoadReport:
    """Copy a pretrained file's tensors into ``backbone`` (an HGNetv2) by name and shape; see the module doc."""
    if getattr(backbone, "width", 1.0) != 1.0:
        raise ValueError(f"backbone.pretrained={path}: ImageNet HGNetv2 weights have the widths of "
                         f"HGNetv2-{backbone.name}; backbone.width={backbone.width} makes other layers. Train it from "
                         f"scratch (drop backbone.pretrained) or set backbone.width: 1.0")
    state, layout = to_hmpe_layout(read_state_dict(path))
    own = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    strip = tuple(backbone.strip_prefixes)
    fits: dict[str, Tensor] = {}
    unused: dict[str, list[str]] = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue  # a BatchNorm step counter, not a weight (FrozenBatchNorm2d has none)
        if k in own and not (strip and k.startswith(strip)):
            if tuple(v.shape) != tuple(own[k].shape):
                raise _misfit(backbone, path, k, tuple(v.shape), tuple(own[k].shape))
            fits[k] = v
            continue
        reason = _reason_unused(k, len(backbone.stages), strip)
        if reason is None:
            raise _misfit(backbone, path, k, tuple(v.shape), None)
        unused.setdefault(reason, []).append(k)
    if not fits:
        raise ValueError(f"backbone.pretrained={path}: no tensor of the file matches HGNetv2-{backbone.name} "
                         f"(first keys: {', '.join(list(state)[:3])}); expected a timm / D-FINE / RT-DETRv2 "
                         f"HGNetv2 state dict")
    left: dict[str, list[str]] = {}
    for k in own:
        if k not in fits:
            left.setdefault(_reason_left(k, strip), []).append(k)
    if "not in file" in left:  # a backbone tensor the file should have had: not that model's file
        k = left["not in file"][0]
        raise ValueError(f"backbone.pretrained={path}: {k} (shape {tuple(own[k].shape)} in "
                         f"HGNetv2-{backbone.name}) is not in the file - the file is for another variant")
    with torch.no_grad():
        backbone.load_state_dict(fits, strict=False)
    return PretrainedLoadReport(str(path), backbone.name, layout, len(fits), left, unused)
