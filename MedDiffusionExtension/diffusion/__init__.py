"""Shared diffusion core: noise schedules, prediction-type conversions and the DDIM sampler.

Pure torch: nothing here imports diffusers (it is only the reference the tests compare against).
"""

from .ddim import TIMESTEP_SPACINGS, DDIMSampler, ddim_timesteps, single_step_x0
from .prediction import (
    PREDICTION_TYPES,
    check_prediction_type,
    training_target,
    v_from_x0_and_eps,
    x0_and_eps_from_output,
)
from .schedules import SCHEDULE_KINDS, NoiseSchedule, make_betas

__all__ = [
    "DDIMSampler",
    "NoiseSchedule",
    "PREDICTION_TYPES",
    "SCHEDULE_KINDS",
    "TIMESTEP_SPACINGS",
    "check_prediction_type",
    "ddim_timesteps",
    "make_betas",
    "single_step_x0",
    "training_target",
    "v_from_x0_and_eps",
    "x0_and_eps_from_output",
]
