"""What a pixel-space conditional diffusion model with a given UNet backbone costs per denoising pass.

Latent and single-step diffusion are compared for speed with the pixel-space alternative that shares their
backbone: a timestep UNet on (x_t || condition images) that would run N steps × S samples per slice (MedSegDiff's
setting for segmentation, a 30-step sampler for translation). Only one pass is measured, on random weights (speed
does not depend on them); the caller multiplies and must label the total as extrapolated from a measured pass.
`python -m training bench` (the CDM pixel baseline) and `evaluate segmentation` (the MedSegDiff-like row) share it.
"""

from __future__ import annotations

import inspect
import time

import torch

from MedDiffusionExtension.models.blocks import UNet

# Set by the timestep UNet itself, never taken from the backbone's architecture.
_OWN_ARGUMENTS = {"self", "in_channels", "out_channels", "time_embedding", "zero_init_output", "level_condition"}


def backbone(architecture: dict) -> dict:
    """The UNet constructor arguments of a backbone's architecture (a SegUNet's "unet", a C-UNet's "cunet"):
    keys the UNet does not take (a C-UNet's fusion, output activation, ...) are left out."""
    accepted = set(inspect.signature(UNet.__init__).parameters) - _OWN_ARGUMENTS
    return {key: value for key, value in architecture.items() if key in accepted}


def _synchronized_seconds(function, *args) -> float:
    """Wall time of `function(*args)`; on CUDA the clock is read after the queued kernels have finished."""
    on_cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if on_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    function(*args)
    if on_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def denoising_pass_seconds(architecture: dict, in_channels: int, out_channels: int, size: int, batch: int,
                           device: str | torch.device, repeats: int = 1, timestep: int = 500, seed: int = 0) -> float:
    """Seconds of one denoising pass of a random-weight timestep UNet (the backbone of `architecture`) over a batch
    of `batch` size x size slices with `in_channels` input channels (x_t and the conditions): the mean of
    `repeats` passes after one warm-up pass, in inference mode."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # reproducible random weights, without touching the caller's random state
        network = UNet(in_channels, out_channels, time_embedding=True, **backbone(architecture)).eval().to(device)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, in_channels, size, size, generator=generator).to(device)
    t = torch.full((batch,), timestep, dtype=torch.long, device=device)
    with torch.inference_mode():
        network(x, t)  # warm-up: first-call allocations and kernel selection are not a pass's cost
        return sum(_synchronized_seconds(network, x, t) for _ in range(repeats)) / repeats
