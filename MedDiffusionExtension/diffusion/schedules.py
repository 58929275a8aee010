"""Noise schedules of the forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

Owns the beta tables (`linear`, `scaled_linear`, `cosine`) and `NoiseSchedule`, which keeps betas and abar in
float64 and hands out per-timestep coefficients already cast to the dtype/device of the tensor they multiply.
"""

from __future__ import annotations

import math

import torch

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine")

# Defaults follow the papers that named each schedule: DDPM for `linear`, LDM/Stable Diffusion for
# `scaled_linear`. Methods with their own values (SDSeg 0.0015..0.0155, RCG 0.0015..0.0195) pass them explicitly.
DEFAULT_BETA_RANGE = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}

COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


def cosine_alpha_bar(fraction: torch.Tensor) -> torch.Tensor:
    """Nichol & Dhariwal's unnormalised abar(t/T) = cos^2(((t/T) + s) / (1 + s) * pi/2), s = 0.008."""
    return torch.cos((fraction + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2


def make_betas(kind: str, num_steps: int = 1000, beta_start: float | None = None,
               beta_end: float | None = None) -> torch.Tensor:
    """Betas of one schedule kind as a float64 tensor of shape (num_steps,)."""
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown noise schedule {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")

    if kind == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ValueError("the cosine schedule has no beta_start/beta_end; leave them unset")
        fractions = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        alpha_bar = cosine_alpha_bar(fractions)
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=COSINE_MAX_BETA)

    default_start, default_end = DEFAULT_BETA_RANGE[kind]
    beta_start = default_start if beta_start is None else float(beta_start)
    beta_end = default_end if beta_end is None else float(beta_end)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"betas must satisfy 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2


class NoiseSchedule:
    """The forward process over `num_steps` discrete timesteps 0..T-1.

    `betas` and `alphas_cumprod` stay float64 on the CPU; every tensor handed out is cast to the dtype and device
    of the tensor it will multiply (square roots are taken before the cast).
    """

    def __init__(self, kind: str = "scaled_linear", num_steps: int = 1000, beta_start: float | None = None,
                 beta_end: float | None = None):
        self.kind = kind
        self._set_betas(make_betas(kind, num_steps, beta_start, beta_end))

    @classmethod
    def from_betas(cls, betas) -> NoiseSchedule:
        """A schedule from an explicit beta table (e.g. to reproduce another library's float32 rounding)."""
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1D sequence, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        schedule = cls.__new__(cls)
        schedule.kind = "custom"
        schedule._set_betas(betas)
        return schedule

    def _set_betas(self, betas: torch.Tensor) -> None:
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)

    @property
    def num_steps(self) -> int:
        return self.betas.numel()

    def __repr__(self) -> str:
        return f"NoiseSchedule(kind={self.kind!r}, num_steps={self.num_steps})"

    def check_timesteps(self, t, batch_size: int | None = None) -> torch.Tensor:
        """`t` (int, 0-d or (B,) integer tensor) as a CPU LongTensor, checked against 0..T-1 and the batch size."""
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.ndim > 1:
            raise ValueError(f"timesteps must be a scalar or have shape (B,), got shape {tuple(t.shape)}")
        t = t.detach().to("cpu", torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_steps):
            raise ValueError(f"timesteps must lie in [0, {self.num_steps - 1}], got {t.tolist()}")
        if batch_size is not None and t.ndim == 1 and t.numel() != batch_size:
            raise ValueError(f"got {t.numel()} timesteps for a batch of {batch_size}")
        return t

    def alpha_bar(self, t, like: torch.Tensor | None = None) -> torch.Tensor:
        """abar_t, shaped to broadcast against `like` (B, ...) and cast to its dtype/device; float64 without `like`."""
        return self._gather(self.alphas_cumprod, t, like)

    def signal_noise_scales(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) shaped and cast for `like`."""
        abar = self.alphas_cumprod
        return self._gather(abar.sqrt(), t, like), self._gather((1 - abar).sqrt(), t, like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for x0 (B, ...) and t of shape (B,) or a scalar."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        signal, sigma = self.signal_noise_scales(t, x0)
        return signal * x0 + sigma * noise

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None) -> torch.Tensor:
        """Training timesteps t ~ U{0, ..., T-1}, shape (batch_size,)."""
        t = torch.randint(0, self.num_steps, (batch_size,), generator=generator)
        return t.to(device) if device is not None else t

    def _gather(self, table: torch.Tensor, t, like: torch.Tensor | None) -> torch.Tensor:
        # Indexing happens on the CPU in float64; the cast precedes the device move because some devices
        # (MPS) hold no float64.
        t = self.check_timesteps(t, None if like is None or like.ndim == 0 else like.shape[0])
        values = table[t]
        if like is None:
            return values
        if t.ndim == 1:
            values = values.reshape(-1, *([1] * (like.ndim - 1)))
        return values.to(dtype=like.dtype).to(like.device)
