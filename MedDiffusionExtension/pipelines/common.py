"""What every pipeline does with a loaded model: build the network, put it on the device, make its sampler."""

from __future__ import annotations

import torch

from ..diffusion import DDIMSampler, NoiseSchedule
from ..errors import InputError
from ..models import build_model
from ..weights import LoadedModel
from ..volume.slices import ModelGrid
from ..weights.card import ModelCard, Sampling


def build_network(loaded: LoadedModel, device: torch.device) -> torch.nn.Module:
    card = loaded.card
    network = build_model(card.method, card.architecture)
    missing, unexpected = network.load_state_dict(loaded.tensors, strict=False)
    # Parts only training uses may be absent from an inference-only export; they keep their initialisation.
    missing = [key for key in missing if not key.startswith(getattr(network, "TRAINING_ONLY", ()))]
    if missing or unexpected:
        raise InputError(f"weights of model {card.name!r} do not fit its architecture "
                         f"({len(missing)} missing, {len(unexpected)} unexpected tensors); re-export the model")
    return network.eval().to(device)


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
