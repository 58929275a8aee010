"""DDIM sampling: the inference timesteps and the reverse step rule, kept apart from the models.

Models only map (x_t, t) to an output; `DDIMSampler` owns the schedule, the timestep spacing and the update
x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)).

Timestep spacing, T training steps, S inference steps (the names and values of diffusers' DDIMScheduler):
- "leading":  arange(S) * (T // S), reversed, + steps_offset. S = 1 gives t = 0 (+offset). S = 30 gives exactly
  30 steps; CompVis' "uniform" (range(0, T, T // S) + 1) gives 31 for S = 30. With steps_offset=1 and S dividing T
  this is CompVis' DDIM.
- "linspace": round(linspace(0, T - 1, S)), reversed. S = 1 gives t = 0.
- "trailing": round(T - arange(S) * T / S) - 1. S = 1 gives t = T - 1 (999), the only spacing that starts from
  the pure-noise end of the chain.
The step after t goes to the next timestep in this list (after the last one: abar = 1 if set_alpha_to_one else
abar_0). diffusers instead always steps to t - T // S; both agree for "leading" and for "trailing" when S divides T.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .prediction import check_prediction_type, x0_and_eps_from_output
from .schedules import NoiseSchedule

TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")


def ddim_timesteps(num_train_steps: int, num_inference_steps: int, spacing: str = "leading",
                   steps_offset: int = 0) -> torch.Tensor:
    """The S inference timesteps, descending, as a LongTensor (see the module docstring for each spacing)."""
    T, S = num_train_steps, num_inference_steps
    if isinstance(S, bool) or not isinstance(S, int) or not 1 <= S <= T:
        raise ValueError(f"num_inference_steps must be an integer in [1, {T}], got {S!r}")
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(TIMESTEP_SPACINGS)}")
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
        raise ValueError(f"steps_offset must be a non-negative integer, got {steps_offset!r}")
    if steps_offset and spacing != "leading":
        raise ValueError(f"steps_offset only applies to 'leading' spacing, not {spacing!r}; set it to 0")

    if spacing == "leading":
        timesteps = np.arange(S)[::-1] * (T // S) + steps_offset
    elif spacing == "linspace":
        timesteps = np.linspace(0, T - 1, S).round()[::-1]
    else:
        # Written as T - i*T/S rather than arange(T, 0, -T/S): a float step can give arange one element too many.
        timesteps = np.round(T - np.arange(S) * (T / S)) - 1
    timesteps = torch.from_numpy(np.ascontiguousarray(timesteps).astype(np.int64))
    if int(timesteps.max()) > T - 1:
        raise ValueError(f"steps_offset={steps_offset} puts the first timestep at {int(timesteps.max())}, "
                         f"beyond the last training timestep {T - 1}; lower steps_offset or num_inference_steps")
    return timesteps


def single_step_x0(schedule: NoiseSchedule, model_output: torch.Tensor, t, x_t: torch.Tensor,
                   prediction_type: str, clip_sample: float | None = None) -> torch.Tensor:
    """SDSeg's one-step reverse process: x0_hat from one model call, e.g. on pure noise at t = T - 1.

    At t = 999 of SDSeg's schedule abar ~ 6.7e-4, so an epsilon error is multiplied by ~38 in x0_hat.
    """
    x0_hat, _ = x0_and_eps_from_output(schedule, x_t, t, model_output, prediction_type)
    return x0_hat if clip_sample is None else x0_hat.clamp(-clip_sample, clip_sample)


class DDIMSampler:
    """Deterministic (eta = 0) or stochastic DDIM over `num_inference_steps` of a `NoiseSchedule`.

    clip_sample: None (default, needed for representation vectors that exceed +-1) or c > 0 to clamp x0_hat to
    [-c, c] before it is used; eps_hat is not re-derived from the clamped x0 (as diffusers' default).
    """

    def __init__(self, schedule: NoiseSchedule, num_inference_steps: int, eta: float = 0.0,
                 timestep_spacing: str = "leading", steps_offset: int = 0, set_alpha_to_one: bool = False,
                 clip_sample: float | None = None):
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1] (0 = deterministic DDIM), got {eta!r}")
        if clip_sample is not None and (isinstance(clip_sample, bool) or not isinstance(clip_sample, (int, float))
                                        or not clip_sample > 0):
            raise ValueError(f"clip_sample must be None or a positive number, got {clip_sample!r}")
        self.schedule = schedule
        self.eta = float(eta)
        self.clip_sample = None if clip_sample is None else float(clip_sample)
        self.timesteps = ddim_timesteps(schedule.num_steps, num_inference_steps, timestep_spacing, steps_offset)
        self.num_inference_steps = num_inference_steps
        self.timestep_spacing = timestep_spacing

        abar = schedule.alphas_cumprod
        final_alpha_bar = 1.0 if set_alpha_to_one else float(abar[0])
        steps = self.timesteps.tolist()
        previous = [float(abar[t]) for t in steps[1:]] + [final_alpha_bar]
        self._step_index = {t: i for i, t in enumerate(steps)}
        self._alpha_bar = [float(abar[t]) for t in steps]
        self._alpha_bar_prev = previous

    def __repr__(self) -> str:
        return (f"DDIMSampler({self.schedule!r}, num_inference_steps={self.num_inference_steps}, eta={self.eta}, "
                f"timestep_spacing={self.timestep_spacing!r}, clip_sample={self.clip_sample})")

    def step(self, model_output: torch.Tensor, t, x_t: torch.Tensor, prediction_type: str,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """x at the next (smaller) timestep; `noise` ~ N(0, I) shaped like x_t is required when eta > 0."""
        index = self._index_of(t)
        t = int(self.timesteps[index])
        if self.eta > 0:
            if noise is None:
                raise ValueError("eta > 0 needs explicit noise: pass noise= shaped like x_t")
            if noise.shape != x_t.shape:
                raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_t shape {tuple(x_t.shape)}")
        x0_hat, eps_hat = x0_and_eps_from_output(self.schedule, x_t, t, model_output, prediction_type)
        if self.clip_sample is not None:
            x0_hat = x0_hat.clamp(-self.clip_sample, self.clip_sample)

        abar_t, abar_prev = self._alpha_bar[index], self._alpha_bar_prev[index]
        sigma = self.eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
        # Rounding can push the direction variance a hair below zero when abar_prev = 1.
        direction = math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0))
        x_prev = math.sqrt(abar_prev) * x0_hat + direction * eps_hat
        if sigma > 0:
            x_prev = x_prev + sigma * noise
        return x_prev

    def sample(self, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_T: torch.Tensor,
               prediction_type: str, noise_fn: Callable[[int], torch.Tensor] | None = None,
               on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Run the whole chain from x_T (pure noise) and return x at the end; only the current x is kept.

        model_fn(x_t, t_batch) gets t as a LongTensor of shape (B,) on x_T's device. noise_fn(t) returns the
        step noise (needed when eta > 0). on_step(done, total) runs after each step (progress; may raise to cancel).
        Runs under torch.no_grad().
        """
        check_prediction_type(prediction_type)
        if self.eta > 0 and noise_fn is None:
            raise ValueError("eta > 0 needs noise_fn(t) returning noise shaped like x_T")
        x = x_T
        total = len(self.timesteps)
        with torch.no_grad():
            for done, t in enumerate(self.timesteps.tolist(), start=1):
                t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
                model_output = model_fn(x, t_batch)
                x = self.step(model_output, t, x, prediction_type, noise_fn(t) if self.eta > 0 else None)
                if on_step is not None:
                    on_step(done, total)
        return x

    def single_step_x0(self, model_output: torch.Tensor, t, x_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
        """`single_step_x0` with this sampler's schedule and clip_sample (t need not be one of its timesteps)."""
        return single_step_x0(self.schedule, model_output, t, x_t, prediction_type, self.clip_sample)

    def _index_of(self, t) -> int:
        if isinstance(t, torch.Tensor):
            values = t.detach().reshape(-1).unique()
            if values.numel() != 1 or values.dtype.is_floating_point:
                raise ValueError("step() takes one integer timestep for the whole batch")
            t = int(values[0])
        index = self._step_index.get(int(t)) if not isinstance(t, (bool, float)) else None
        if index is None:
            raise ValueError(f"timestep {t!r} is not one of this sampler's timesteps {self.timesteps.tolist()}")
        return index
