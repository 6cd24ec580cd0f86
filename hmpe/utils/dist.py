"""torch.distributed helpers: everything degrades to single-process behaviour when not launched."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(device_type: str) -> int:
    """Initialise the process group from torchrun's environment; returns the local rank."""
    if not launched_by_torchrun() or is_dist():
        return int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend=backend)
    return int(os.environ["LOCAL_RANK"])


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        t = t.clone()
        dist.all_reduce(t)
        t /= get_world_size()
    return t


def all_gather_objects(obj):
    """Gather a picklable object from every rank -> list (one entry per rank)."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
