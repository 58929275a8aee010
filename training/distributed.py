"""Process-group plumbing for torchrun launches: who am I, which device, and the few collectives the trainer needs.

A plain `python -m training train` runs as one process with no process group at all; under `torchrun` (RANK,
WORLD_SIZE and LOCAL_RANK set, world size > 1) every helper here becomes a real collective.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from MedDiffusionExtension import device as devices
from MedDiffusionExtension.errors import InputError

# Longer than any wait the trainer itself causes (ranks prepare slice caches in parallel and meet within about one
# case's preparation; rank 0 writes a checkpoint while the others wait), short enough that a hung rank is noticed.
DEFAULT_TIMEOUT_MINUTES = 30.0


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # True when init_distributed created the process group (and so shutdown ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


# torch 2.3 added device_id; the project allows torch from 2.1 on.
_ACCEPTS_DEVICE_ID = "device_id" in inspect.signature(dist.init_process_group).parameters


def init_distributed(device_name: str = "auto", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistContext:
    """Read the torchrun environment, pick this process's device and join the process group when there are peers.

    A process group that already exists (made by a caller that runs several trainers in one launch) is used as is.
    """
    rank, world_size, local_rank = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    device = devices.resolve_device(device_name, local_rank=local_rank if world_size > 1 else None)
    if device.type == "cuda":
        if world_size > 1 and device.index != local_rank:
            raise InputError(f"under torchrun each process uses cuda:LOCAL_RANK; drop --device {device_name} or use cuda")
        # An explicit index: DDP's device_ids, set_device and the RNG state all need one.
        device = torch.device("cuda", devices.cuda_index(device))
        devices.CUDA.set_device(device.index)
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        if device.type == "mps":
            raise InputError("multi-process training needs CUDA or CPU processes; use --device cuda or cpu")
        options: dict[str, Any] = {"timeout": timedelta(minutes=timeout_minutes)}
        if device.type == "cuda" and _ACCEPTS_DEVICE_ID:
            options["device_id"] = device  # binds the NCCL communicator to this rank's GPU at once
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **options)
        owns_group = True
    return DistContext(rank, world_size, local_rank, device, owns_group)


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
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
    """`values` (float64, on the host) averaged over the ranks, returned on the host."""
    if not ctx.distributed:
        return values
    # MPS has no float64 (and no multi-process training); CUDA and CPU reduce in float64.
    on_device = values.to(torch.float32).to(ctx.device) if ctx.device.type == "mps" else values.to(ctx.device).clone()
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.cpu().to(torch.float64) / ctx.world_size


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when it is true on one, so that all ranks leave the training loop at the same step."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
