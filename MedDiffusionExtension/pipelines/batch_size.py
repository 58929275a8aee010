"""Slices per batch for `--batch-size auto`: the model card's number for the device type where it gives one, else a
rule measured on this project's 2-core CPU (docs/benchmarks.md, "Batch size").

On a CPU, batching only amortizes the per-call overhead of small networks: the tiny models (3.9 M and 13.1 M
parameters) ran 5-9 % faster per slice at batch 2-4 than at batch 1 and slower again at 16, while one slice of a
paper-scale network already fills the caches (the paper C-UNet, 43.7 M parameters: batch 2 took 1.17x batch 1's
time per slice). So: CPU_SMALL_BATCH for networks up to CPU_SMALL_NETWORK parameters, one slice for larger ones.
The parameter count is read from the loaded weights (free); counting FLOPs on the meta device would be more
precise but costs about 2 s of torch imports per run. GPUs and MPS keep the batch of earlier releases (not
measured here; halved automatically when memory runs out); a card that measured better says so in
inference.batch_size.
"""

from __future__ import annotations

from typing import Optional

import torch

CPU_SMALL_BATCH = 4
CPU_SMALL_NETWORK = 32_000_000  # parameters; the tiny models have 3.9 M and 13.1 M, the paper ones 78.5 M and 307 M
ACCELERATOR_BATCH = 8
UNKNOWN_MODEL_CPU_BATCH = 1  # no weights to size the network by: the batch that never loses much, and least memory


def parameter_count(tensors) -> int:
    return sum(tensor.numel() for tensor in tensors.values())


def choose_batch_size(card, device: torch.device, parameters: Optional[int] = None) -> int:
    """Slices per batch for `card`'s model (None: unknown) with `parameters` weights (None: unknown) on `device`."""
    stated = card.inference.batch_size_for(device.type) if card is not None else None
    if stated is not None:
        return stated
    if device.type != "cpu":
        return ACCELERATOR_BATCH
    if parameters is None:
        return UNKNOWN_MODEL_CPU_BATCH
    return CPU_SMALL_BATCH if parameters <= CPU_SMALL_NETWORK else 1
