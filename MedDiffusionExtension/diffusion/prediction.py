"""What a denoiser predicts (`epsilon`, `sample` = x0, or `v`) and every conversion between the three.

With a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t) and x_t = a_t x0 + s_t eps, v is defined as a_t eps - s_t x0, so
x0 = a_t x_t - s_t v and eps = s_t x_t + a_t v. This module is the only place these formulas live.
"""

from __future__ import annotations

import torch

from .schedules import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    return prediction_type


def x0_and_eps_from_output(schedule: NoiseSchedule, x_t: torch.Tensor, t, model_output: torch.Tensor,
                           prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) implied by a model output of the given type at timestep(s) `t`."""
    check_prediction_type(prediction_type)
    if model_output.shape != x_t.shape:
        raise ValueError(f"model output shape {tuple(model_output.shape)} differs from x_t shape {tuple(x_t.shape)}")
    signal, sigma = schedule.signal_noise_scales(t, x_t)
    if prediction_type == "epsilon":
        return (x_t - sigma * model_output) / signal, model_output
    if prediction_type == "sample":
        return model_output, (x_t - signal * model_output) / sigma
    return signal * x_t - sigma * model_output, sigma * x_t + signal * model_output


def v_from_x0_and_eps(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0."""
    signal, sigma = schedule.signal_noise_scales(t, x0)
    return signal * eps - sigma * x0


def training_target(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t,
                    prediction_type: str) -> torch.Tensor:
    """What a model of this prediction type should output for x_t = add_noise(x0, noise, t)."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return v_from_x0_and_eps(schedule, x0, noise, t)
