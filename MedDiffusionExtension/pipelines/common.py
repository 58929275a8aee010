"""What every pipeline does with a loaded model: build the network, put it on the device, make its sampler."""

from __future__ import annotations

import torch

from ..diffusion import DDIMSampler, NoiseSchedule
from ..errors import InputError
from ..models import build_model
from ..weights import LoadedModel


def build_network(loaded: LoadedModel, device: torch.device) -> torch.nn.Module:
    card = loaded.card
    network = build_model(card.method, card.data["architecture"])
    missing, unexpected = network.load_state_dict(loaded.tensors, strict=False)
    if missing or unexpected:
        raise InputError(f"weights of model {card.name!r} do not fit its architecture "
                         f"({len(missing)} missing, {len(unexpected)} unexpected tensors); re-export the model")
    return network.eval().to(device)


def noise_schedule(sampling: dict) -> NoiseSchedule:
    schedule = sampling["schedule"]
    return NoiseSchedule(schedule["kind"], schedule.get("num_steps", 1000), schedule.get("beta_start"), schedule.get("beta_end"))


def make_sampler(sampling: dict, steps: int | None) -> DDIMSampler:
    schedule = noise_schedule(sampling)
    steps = steps or sampling["steps"]
    if steps > schedule.num_steps:
        raise InputError(f"--steps {steps} exceeds the model's {schedule.num_steps} training timesteps")
    return DDIMSampler(schedule, steps, eta=sampling.get("eta", 0.0), timestep_spacing=sampling.get("timestep_spacing", "leading"),
                       steps_offset=sampling.get("steps_offset", 0), clip_sample=sampling.get("clip_sample"),
                       set_alpha_to_one=sampling.get("set_alpha_to_one", False))
