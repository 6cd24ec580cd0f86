"""Optimiser, learning-rate schedule (and its sizing to a ``time_limit``) and EMA, in the official RT-DETR solver's
spirit."""

from __future__ import annotations

import copy
import math
import time
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


def schedule_progress(it: int, total_iters: int, warmup_iters: int, anchor: tuple[int, float] | None = None) -> float:
    """The fraction of the lr decay done at iteration ``it``: 0 at the end of warm-up, 1 at ``total_iters``.

    ``anchor = (i0, p0)``: the run was re-sized at iteration ``i0`` (``time_limit``), where the progress was
    ``p0``; from there it runs linearly from ``p0`` to 1 at the new ``total_iters``, so a re-sizing stretches or
    squeezes the rest of the schedule without a jump, and the progress never goes back."""
    i0, p0 = anchor if anchor is not None else (warmup_iters, 0.0)
    return min(1.0, max(0.0, p0 + (1 - p0) * (it - i0) / max(1, total_iters - i0)))


def lr_factor(it: int, total_iters: int, warmup_iters: int, schedule: str = "cosine",
              final_factor: float = 0.05, milestones: Iterable[float] = (0.8,), gamma: float = 0.1,
              anchor: tuple[int, float] | None = None) -> float:
    """Multiplier of the base lr at iteration ``it``: linear warm-up, then cosine or step decay.

    ``milestones`` are fractions of the training length (step schedule). ``anchor``: where a ``time_limit`` run
    was last re-sized (:func:`schedule_progress`; set only after the warm-up).
    """
    if warmup_iters > 0 and it < warmup_iters and anchor is None:
        return (it + 1) / warmup_iters
    if schedule == "constant":
        return 1.0
    progress = schedule_progress(it, total_iters, warmup_iters, anchor)
    if schedule == "cosine":
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return gamma ** sum(progress >= m for m in milestones)
    raise ValueError(f"unknown lr schedule {schedule!r} (cosine, step, constant)")


def iterations_for_budget(budget_s: float, elapsed_s: float, done_iters: int, min_iters: int = 1,
                          pace_s: float | None = None) -> int:
    """How many iterations fit a time budget (``time_limit``) once ``done_iters`` took ``elapsed_s`` seconds:
    those done plus what the rest of the budget holds at ``pace_s`` seconds per iteration (default: the mean
    pace so far, which makes it the whole budget at that pace), at least ``min_iters``. Sizing in iterations
    rather than whole epochs lets the last epoch be partial: with epochs of minutes, a whole-epoch count leaves
    up to one epoch of the budget unused (4 epochs of 7 minutes in a 35-minute budget)."""
    pace = pace_s if pace_s is not None else max(elapsed_s, 1e-6) / max(done_iters, 1)
    return max(int(min_iters), done_iters + int(max(0.0, budget_s - elapsed_s) / max(pace, 1e-9)))


class TimeBudget:
    """The ``time_limit`` state of a run, re-sized after every epoch (the trainer's ``_fit_epochs_to_time``): the
    seconds used, where the pace is measured from, where the lr schedule was last re-sized. :meth:`state` is what
    a checkpoint keeps (``time_budget``), so a resumed run sizes itself as the uninterrupted one would at the
    same clock readings.

    * Pace: seconds per iteration since the end of the first epoch (training, validation, checkpoints: what the
      rest of the run spends too); right after the first epoch, that epoch's own. A slow first epoch (a busy
      machine, start-up costs) sizes the run only until the next epoch measures again. The total is the
      iterations done plus what the rest of the budget holds at that pace (:func:`iterations_for_budget`).
    * Schedule: a re-sizing past the warm-up anchors the lr schedule where it is (:func:`schedule_progress`): its
      progress runs on from the current value to 1 at the new total, so the lr does not jump and a step
      schedule never steps back; inside the warm-up only the end of the decay moves.
    """

    def __init__(self, minutes: float, state: dict | None = None):
        s = state or {}
        self.budget_s = float(minutes) * 60
        self.used_before_s = float(s.get("elapsed_s", 0.0))  # by earlier processes of a resumed run
        self.pace_ref: tuple[float, int] | None = tuple(s["pace_ref"]) if s.get("pace_ref") else None
        self.lr_anchor: tuple[int, float] | None = tuple(s["lr_anchor"]) if s.get("lr_anchor") else None
        self.clock_start = time.perf_counter()

    def start(self) -> None:
        """Start this process's clock (the budget counts the epochs, not the setup before them)."""
        self.clock_start = time.perf_counter()

    def elapsed(self) -> float:
        return self.used_before_s + time.perf_counter() - self.clock_start

    def state(self) -> dict:
        return {"elapsed_s": self.elapsed(), "pace_ref": list(self.pace_ref) if self.pace_ref else None,
                "lr_anchor": list(self.lr_anchor) if self.lr_anchor else None}

    def iterations(self, done_iters: int) -> tuple[int, float, float]:
        """After an epoch ending at ``done_iters``: (the iterations that fit the budget, seconds used, pace)."""
        elapsed = self.elapsed()
        ref_s, ref_it = self.pace_ref or (0.0, 0)
        pace = (elapsed - ref_s) / max(1, done_iters - ref_it)
        self.pace_ref = self.pace_ref or (elapsed, done_iters)
        return (iterations_for_budget(self.budget_s, elapsed, done_iters, min_iters=max(done_iters, 1), pace_s=pace),
                elapsed, pace)

    def anchor_schedule(self, it: int, total_iters: int, warmup_iters: int) -> None:
        """The run is re-sized at iteration ``it`` away from ``total_iters``: keep the schedule's progress there."""
        if it >= warmup_iters:
            self.lr_anchor = (it, schedule_progress(it, total_iters, warmup_iters, self.lr_anchor))


class ModelEMA:
    """Exponential moving average of weights with a warm-up ramp on the decay.

    decay_t = decay * (1 - exp(-t / warmup)): early averages follow the fast-changing weights closely,
    so an EMA of a short from-scratch run is not dominated by the random initialisation. ``decay`` and
    ``warmup`` have no defaults here: the training keys ``ema_decay`` / ``ema_warmup`` state them.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: int):
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
