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


def all_gather_objects(obj):
    """Gather a picklable object from every rank -> list (one entry per rank)."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (identity when not distributed)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on at least one (collective: all ranks must call it)."""
    if not is_dist():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def cleanup() -> None:
    """Tear down the process group (end of a torchrun job)."""
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_tensors(tensors, src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (no-op when not distributed)."""
    if not is_dist():
        return
    for t in tensors:
        dist.broadcast(t.data, src=src)
