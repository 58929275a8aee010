"""Exponential moving average of the weights (torch's AveragedModel): ema = decay * ema + (1 - decay) * weights.

The first update copies the weights; buffers (normalization statistics) are averaged too, so the EMA module is a
complete model that export can save instead of the raw weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

_PREFIX = "module."


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """None when decay is 0 (EMA off)."""
    if decay <= 0:
        return None
    if decay >= 1:
        raise ValueError(f"ema decay must be in [0, 1), got {decay}")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


def ema_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The averaged model's own state dict out of an AveragedModel state dict (drops the counter and the prefix)."""
    return {key[len(_PREFIX):]: value for key, value in ema_state.items() if key.startswith(_PREFIX)}
