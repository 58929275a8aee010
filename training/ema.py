"""Exponential moving average of the weights (torch's AveragedModel): ema = d * ema + (1 - d) * weights.

d warms up as min(decay, (1 + n) / (10 + n)) after n updates. Without the warm-up a short run keeps a large share of
its first weights (0.999 ** 500 = 61 % after 500 steps: for a zero-initialised output layer, a model that predicts
almost nothing); with it the average forgets the start within a few hundred steps whatever the decay.
The first update copies the weights; buffers (normalization statistics) are averaged too, so the EMA module is a
complete model that export can save instead of the raw weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

_PREFIX = "module."


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """None when decay is 0 (EMA off)."""
    if decay <= 0:
        return None
    if decay >= 1:
        raise ValueError(f"ema decay must be in [0, 1), got {decay}")
    ema = AveragedModel(model, multi_avg_fn=_warmed_up_ema(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


def warmed_up_decay(decay: float, updates_so_far: int) -> float:
    return min(decay, (1 + updates_so_far) / (10 + updates_so_far))


def _warmed_up_ema(decay: float):
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        d = warmed_up_decay(decay, int(num_averaged))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:
            for average, value in zip(averaged, current):
                average.copy_(average * d + value * (1 - d))

    return update


def ema_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The averaged model's own state dict out of an AveragedModel state dict (drops the counter and the prefix)."""
    return {key[len(_PREFIX):]: value for key, value in ema_state.items() if key.startswith(_PREFIX)}
