"""EDTS-Trans inference, per batch of T1 slices, in model units [-1, 1]:

T2_bar = RegN(T1); M = TSM(T2_bar); T2_tilde = the refiner's DDIM sample conditioned on (T2_bar, M);
T2_out = M * T2_tilde + (1 - M) * T2_bar. With K samples the output is the mean of the K fused syntheses, with
their per-pixel standard deviation; M itself can be returned as one more channel (where the refiner acted).

Beyond the paper, whose stated limit is inference time, the refiner only works where M asks for it:
- Items (axial slices, or the windows of a slice wider than the model's field of view) where fewer than
  MIN_TEXTURED_FRACTION of the pixels are textured (M at or above the TSM's threshold t) get T2_bar exactly, without
  sampling; only the other items of a batch go through the refiner, batched together. Elsewhere M < t, so there the
  refiner would move the output by less than t of its difference to T2_bar. Noise is drawn per slice index, so a
  refined item gets exactly the output it gets when every item is refined (`refine_every_slice`).
- `refine_strength` s < 1 starts the refiner from T2_bar noised to a timestep near s * T (x_t = add_noise(T2_bar,
  noise, t), SDEdit's start) and runs only the last round(s * S) of its S DDIM steps. s = 1 starts from pure noise
  and runs all S steps: the paper's sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..diffusion import DDIMSampler
from ..models.edts import EDTS
from ..volume.engine import SliceBatch
from .common import make_sampler
from .registry import slice_model

# An item is refined when at least this fraction of its pixels is textured. The TSM normalizes each image's
# dispersion to its own range, so any slice with content marks its most textured part: on the reference T2 of two
# 0.2.0 brain phantoms (standing in for T2_bar before the model was trained) the tiny card's TSM marked 0.6 % (the
# first and last slices of the head) to 19 % of each 128 x 128 window, and 5 of 130 and 3 of 68 windows fell below 1 %.
MIN_TEXTURED_FRACTION = 0.01
# Noise streams: stream k is sample k's starting noise; step noise (eta > 0 only) takes streams from here on.
STEP_NOISE_STREAMS = 10_000


def refined_timesteps(sampler: DDIMSampler, strength: float) -> list[int]:
    """The tail of the sampler's timesteps a refinement of `strength` runs: the last round(strength * S), at least 1."""
    timesteps = sampler.timesteps.tolist()
    return timesteps[len(timesteps) - max(1, round(strength * len(timesteps))):]


@dataclass
class EDTSInference:
    """The three parts of an EDTS network run on one batch. full_mask / mask_threshold are the paper's ablations
    ("without M": M = 1, the refiner's output alone; "Th-0.4": M binarized at a fixed threshold)."""

    network: EDTS
    sampler: DDIMSampler
    prediction_type: str
    strength: float = 1.0
    full_mask: bool = False
    mask_threshold: Optional[float] = None

    def __post_init__(self):
        if not 0.0 < self.strength <= 1.0:  # users' values are checked by the task layer (TranslateRequest)
            raise ValueError(f"refine strength must be in (0, 1], got {self.strength!r}")
        self.timesteps = refined_timesteps(self.sampler, self.strength)

    @classmethod
    def for_card(cls, network: EDTS, card, steps: Optional[int] = None, **options) -> "EDTSInference":
        return cls(network, make_sampler(card.sampling, steps), card.sampling.prediction_type, **options)

    def regress_and_mask(self, t1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T2_bar, M), both (B, 1, S, S) float32."""
        t2_bar = self.network.regress(t1).float()
        if self.full_mask:
            return t2_bar, EDTS.full_mask(t2_bar)
        return t2_bar, self.network.structure_mask(t2_bar, self.mask_threshold).float()

    def needs_refiner(self, mask: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the items with at least MIN_TEXTURED_FRACTION of their pixels textured (M >= the TSM's t)."""
        textured = (mask >= self.network.tsm.threshold).flatten(1).float().mean(1)
        return textured >= MIN_TEXTURED_FRACTION

    def refine(self, batch: SliceBatch, rows: torch.Tensor, t2_bar: torch.Tensor, mask: torch.Tensor,
               sample: int) -> torch.Tensor:
        """T2_tilde (len(rows), 1, S, S) of the batch items `rows`, whose T2_bar and M are given (rows only)."""
        noise = batch.randn(*t2_bar.shape[1:], stream=sample)[rows].to(t2_bar.dtype)
        sampler, first = self.sampler, self.timesteps[0]
        x = noise if len(self.timesteps) == len(sampler.timesteps) else sampler.schedule.add_noise(t2_bar, noise, first)
        for done, t in enumerate(self.timesteps, start=1):
            output = self.network.predict(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), t2_bar,
                                          mask)
            step_noise = None
            if sampler.eta > 0:
                step_noise = batch.randn(*t2_bar.shape[1:], stream=STEP_NOISE_STREAMS * (sample + 1) + done)[rows]
            x = sampler.step(output, t, x, self.prediction_type, step_noise)
            batch.check_cancelled()
        return x.float()


@slice_model("edts")
def _edts_slice_model(network, card, *, steps, samples: int, save_mask: bool = False, refine_strength: float = 1.0,
                      refine_every_slice: bool = False, full_mask: bool = False,
                      mask_threshold: Optional[float] = None, **_):
    """Channels: the mean synthesis, its std over samples (samples > 1), M (save_mask)."""
    inference = EDTSInference.for_card(network, card, steps, strength=refine_strength, full_mask=full_mask,
                                       mask_threshold=mask_threshold)

    def model(batch: SliceBatch) -> torch.Tensor:
        t2_bar, mask = inference.regress_and_mask(batch.images)
        refined = torch.ones_like(mask[:, 0, 0, 0], dtype=torch.bool) if refine_every_slice else \
            inference.needs_refiner(mask)
        rows = refined.nonzero().flatten()
        mean, spread = t2_bar.clone(), torch.zeros_like(t2_bar)  # skipped items: T2_bar exactly, no spread
        if len(rows):
            bar, weight = t2_bar[rows], mask[rows]
            fused = []
            for sample in range(samples):
                batch.check_cancelled()
                fused.append(EDTS.fuse(inference.refine(batch, rows, bar, weight, sample), bar, weight))
            stacked = torch.stack(fused)
            mean[rows] = stacked.mean(0)
            spread[rows] = stacked.std(0, unbiased=False)
        channels = [mean] + ([spread] if samples > 1 else []) + ([mask] if save_mask else [])
        return torch.cat(channels, dim=1)

    return model
