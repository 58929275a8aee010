"""What every pipeline does with a loaded model: build the network for inference on the device, make its sampler."""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..device import uses_channels_last
from ..diffusion import DDIMSampler, NoiseSchedule
from ..errors import InputError
from ..models import build_model
from ..progress import report
from ..weights import LoadedModel
from ..volume.engine import RunOptions
from ..volume.slices import ModelGrid
from ..weights.card import ModelCard, Sampling


def build_network(loaded: LoadedModel, device: torch.device, options: Optional[RunOptions] = None) -> torch.nn.Module:
    """The inference copy of a loaded model on `device`: training-only parts left out, in evaluation mode, in the
    device's fastest lossless layout (channels_last on CPUs and CUDA), and compiled when `options.compile`."""
    card = loaded.card
    network = build_model(card.method, card.architecture)
    missing, unexpected = network.load_state_dict(loaded.tensors, strict=False)
    # Parts only training uses may be absent from an inference-only export; they are dropped below.
    training_only = tuple(getattr(network, "TRAINING_ONLY", ()))
    missing = [key for key in missing if not key.startswith(training_only)]
    if missing or unexpected:
        raise InputError(f"weights of model {card.name!r} do not fit its architecture "
                         f"({len(missing)} missing, {len(unexpected)} unexpected tensors); re-export the model")
    for prefix in training_only:
        _drop_submodule(network, prefix.rstrip("."))
    network = network.eval().to(device)
    if uses_channels_last(device):
        network = network.to(memory_format=torch.channels_last)
    if options is not None and options.compile:
        compile_networks(network, options.progress)
    return network


def _drop_submodule(network: torch.nn.Module, path: str) -> None:
    """Free a part inference never calls (e.g. SDSeg's mask encoder: 34 M parameters at the paper's scale)."""
    parent_path, _, name = path.rpartition(".")
    parent = network.get_submodule(parent_path) if parent_path else network
    if isinstance(getattr(parent, name, None), torch.nn.Module):
        setattr(parent, name, None)


def compiled_part_types() -> tuple[type, ...]:
    """The network types that are compiled as wholes: each is one call of a slice model (the MDN per step, the
    C-UNet, the MRM's transformer; SDSeg's vision encoder, denoiser and mask decoder; the baselines' UNets)."""
    from ..models import MDN, UNet, VisionEncoder
    from ..models.sdseg import Decoder

    return (MDN, UNet, VisionEncoder, Decoder, torch.nn.TransformerEncoder)


def compile_networks(network: torch.nn.Module, progress=None) -> list[str]:
    """torch.compile the forward of every outermost compiled_part_types module of `network` in place. Compilation
    happens on a part's first call, whose duration (compile + one run) is reported through `progress`. Returns the
    compiled names."""
    kinds, compiled = compiled_part_types(), []
    for name, module in network.named_modules():
        if isinstance(module, kinds) and not any(done == "" or name.startswith(f"{done}.") for done in compiled):
            # An instance attribute outranks the class's forward; the timing stays outside the compiled code.
            module.forward = _timed_first_call(torch.compile(module.forward), name or type(module).__name__, progress)
            compiled.append(name)
    if not compiled:  # a network of another kind: compiled as a whole
        network.forward = _timed_first_call(torch.compile(network.forward), type(network).__name__, progress)
        compiled.append("")
    return compiled


def _timed_first_call(function, name: str, progress):
    first = [True]

    def call(*args, **kwargs):
        if not first[0]:
            return function(*args, **kwargs)
        start = time.perf_counter()
        result = function(*args, **kwargs)
        first[0] = False
        report(progress, 0.0, f"compiled {name} in {time.perf_counter() - start:.1f} s (first call, compile included)")
        return result

    return call


def make_sampler(sampling: Sampling, steps: int | None) -> DDIMSampler:
    schedule = sampling.schedule
    noise = NoiseSchedule(schedule.kind, schedule.num_steps, schedule.beta_start, schedule.beta_end)
    steps = steps or sampling.steps
    if steps > noise.num_steps:
        raise InputError(f"--steps {steps} exceeds the model's {noise.num_steps} training timesteps")
    return DDIMSampler(noise, steps, eta=sampling.eta, timestep_spacing=sampling.timestep_spacing,
                       steps_offset=sampling.steps_offset, clip_sample=sampling.clip_sample,
                       set_alpha_to_one=sampling.set_alpha_to_one)


def model_grid(card: ModelCard) -> ModelGrid:
    """The card's field of view: its slice size and the in-plane spacing it was trained at."""
    geometry = card.geometry
    return ModelGrid(card.image_size, geometry.in_plane_spacing_mm, geometry.window_overlap)
