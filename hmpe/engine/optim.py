"""Optimiser, learning-rate schedule and EMA, in the official RT-DETR solver's spirit."""

from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
from torch import nn


def build_param_groups(model: nn.Module, lr: float, lr_backbone: float, weight_decay: float) -> list[dict]:
    """AdamW groups: backbone at its own lr; no weight decay on norms, biases and 1-d parameters.

    Decaying norm scales and biases only shrinks them towards zero with no regularising benefit,
    which is why every DETR code base exempts them.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_backbone = name.startswith("backbone.")
        no_decay = p.ndim <= 1 or name.endswith(".bias")
        groups.setdefault((is_backbone, no_decay), []).append(p)
    out = []
    for (is_backbone, no_decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": lr_backbone if is_backbone else lr,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": f"{'backbone' if is_backbone else 'head'}{'_no_decay' if no_decay else ''}",
            }
        )
    return out


def lr_factor(it: int, total_iters: int, warmup_iters: int, schedule: str = "cosine",
              final_factor: float = 0.05, milestones: Iterable[float] = (0.8,), gamma: float = 0.1) -> float:
    """Multiplier of the base lr at iteration ``it``: linear warm-up, then cosine or step decay.

    ``milestones`` are fractions of the training length (step schedule).
    """
    if warmup_iters > 0 and it < warmup_iters:
        return (it + 1) / warmup_iters
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (it - warmup_iters) / max(1, total_iters - warmup_iters))
    if schedule == "cosine":
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return gamma ** sum(progress >= m for m in milestones)
    raise ValueError(f"unknown lr schedule {schedule!r} (cosine, step, constant)")


def iterations_for_budget(budget_s: float, elapsed_s: float, done_iters: int, min_iters: int = 1) -> int:
    """How many iterations fit a time budget (``time_limit``) once ``done_iters`` took ``elapsed_s`` seconds:
    the whole budget at the measured pace, at least ``min_iters``. Sizing in iterations rather than whole epochs
    lets the last epoch be partial: with epochs of minutes, a whole-epoch count leaves up to one epoch of the
    budget unused (4 epochs of 7 minutes in a 35-minute budget)."""
    pace = max(elapsed_s, 1e-6) / max(done_iters, 1)
    return max(int(min_iters), int(budget_s / pace))


class ModelEMA:
    """Exponential moving average of weights with a warm-up ramp on the decay.

    decay_t = decay * (1 - exp(-t / warmup)): early averages follow the fast-changing weights closely,
    so an EMA of a short from-scratch run is not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: int = 2000):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / max(1, self.warmup)))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        ema_f, model_f, ema_other, model_other = self._pairs(model)
        torch._foreach_mul_(ema_f, d)  # the same element-wise ops as v.mul_(d).add_(m, alpha=1-d), batched
        torch._foreach_add_(ema_f, model_f, alpha=1 - d)
        for v, m in zip(ema_other, model_other):
            v.copy_(m)

    def _pairs(self, model: nn.Module) -> tuple[list, list, list, list]:
        """The EMA's and the model's state tensors, floating point apart, matched by name; cached per model
        (the tensors are the live parameters and buffers, updated in place by the optimiser and the forward)."""
        key = (id(model), id(self.module))  # a copy of either (deepcopy, reload) builds its own lists
        if getattr(self, "_cache_key", None) != key:
            msd, esd = model.state_dict(), self.module.state_dict()
            floats = [k for k, v in esd.items() if v.dtype.is_floating_point]
            others = [k for k, v in esd.items() if not v.dtype.is_floating_point]
            self._cache = ([esd[k] for k in floats], [msd[k].detach() for k in floats],
                           [esd[k] for k in others], [msd[k].detach() for k in others])
            self._cache_key = key
        return self._cache

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates,
                "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self._cache_key = None  # load_state_dict copies in place, but a cache must never outlive a reload
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
        self.decay = state.get("decay", self.decay)
        self.warmup = state.get("warmup", self.warmup)
