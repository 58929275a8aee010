"""Learning-rate schedules: linear warm-up, then constant, linear or cosine decay to a floor."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, *, schedule: str, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate for optimizer update number `step` (0-based).

    Warm-up ramps (step + 1) / warmup_steps so that the first update already moves the weights; the decay then runs
    from the end of warm-up to `total_steps`, ending at `min_ratio` and staying there.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def schedule_factor(*, schedule: str, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float = 0.0):
    """The multiplier as a function of the update number, for LambdaLR."""
    min_ratio = min_lr / base_lr if base_lr > 0 else 0.0
    return lambda step: lr_factor(
        step, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio
    )


def build_scheduler(optimizer: torch.optim.Optimizer, **schedule) -> LambdaLR:
    """A LambdaLR stepped once per optimizer update (schedule: schedule_factor's arguments); its state (last step)
    goes into checkpoints, its factor does not (a resume may give a longer schedule): replacing lr_lambdas[0] with
    another schedule_factor changes the decay in place."""
    return LambdaLR(optimizer, schedule_factor(**schedule))
