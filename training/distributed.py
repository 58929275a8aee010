"""Process-group plumbing for torchrun launches: who am I, which device, and the few collectives the trainer needs.

A plain `python -m training train` runs as one process with no process group at all; under `torchrun` (RANK,
WORLD_SIZE and LOCAL_RANK set, world size > 1) every helper here becomes a real collective.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from MedDiffusionExtension.device import resolve_device
from MedDiffusionExtension.errors import InputError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init_distributed(device_name: str = "auto") -> DistContext:
    """Read the torchrun environment, pick this process's device and join the process group when there are peers."""
    rank, world_size, local_rank = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    if device.type == "cuda" and world_size > 1:
        if device.index is not None and device.index != local_rank:
            raise InputError(f"under torchrun each process uses cuda:LOCAL_RANK; drop --device {device_name} or use cuda")
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s); lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        # An explicit index: DDP's device_ids, set_device and the RNG state all need one.
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "mps":
            raise InputError("multi-process training needs CUDA or CPU processes; use --device cuda or cpu")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (the checkpoint needs each rank's RNG state)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_main(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (values measured on one rank's data must agree everywhere)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    if not ctx.distributed:
        return values
    values = values.to(ctx.device, torch.float64 if ctx.device.type != "mps" else torch.float32).clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / ctx.world_size


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when it is true on one, so that all ranks leave the training loop at the same step."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
