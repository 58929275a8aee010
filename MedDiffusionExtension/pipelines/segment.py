"""CT segmentation: a label map on the CT's exact grid, slice by slice.

SDSeg, per slice: encode the windowed CT to the condition latent z_c; start from pure noise z_T at t = T-1 (fresh,
seeded noise for every slice); one denoiser pass predicts eps; the x0 formula gives the mask latent; decode to a
probability. Steps N > 1 runs DDIM instead; K samples average K probability maps (an ensemble).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..device import resolve_device
from ..volume import Volume, validate_volume
from ..volume.engine import EngineInput, RunOptions, SliceBatch, fit_scaling, run_slicewise
from ..weights import LoadedModel
from .common import build_network, make_sampler, model_grid
from .registry import build_slice_model, slice_model


@dataclass
class SegmentationResult:
    labels: Volume  # uint8 label values from the card's segments
    probability: Optional[Volume]  # mean foreground probability over samples (only when samples > 1)


def segment(
    *, image: Volume, loaded: LoadedModel, steps: int | None = None, samples: int = 1, threshold: float = 0.5,
    options: RunOptions | None = None,
) -> SegmentationResult:
    """Label `image` with the card's segment; the task layer (tasks.SegmentRequest) has checked the request."""
    options = options or RunOptions()
    card = loaded.card
    validate_volume(image, "CT")
    network = build_network(loaded, resolve_device(options.device))
    grid = model_grid(card)
    scaling = fit_scaling(card.normalization, image, grid)
    model = build_slice_model(network, card, steps=steps, samples=samples)
    probability = run_slicewise([EngineInput(image, "CT", scaling)], model, 1, grid, options)[0]
    # A binary model has one foreground class: the card's first (and only) segment gives its label value.
    labels = np.where(probability > threshold, card.segments[0].label, 0).astype(np.uint8)
    return SegmentationResult(image.with_array(labels), image.with_array(probability) if samples > 1 else None)


@slice_model("segunet")
def _unet_slice_model(network, card, **_):
    """The non-diffusion baseline: one deterministic pass."""
    return lambda batch: torch.sigmoid(network(batch.images).float())


@slice_model("sdseg")
def _sdseg_slice_model(network, card, *, steps, samples: int, **_):
    sampler = make_sampler(card.sampling, steps)
    prediction_type = card.sampling.prediction_type
    last_t = sampler.schedule.num_steps - 1
    single_step = (steps or card.sampling.steps) == 1

    def model(batch: SliceBatch) -> torch.Tensor:
        condition = network.encode_image(batch.images)
        probability = torch.zeros((batch.images.shape[0], 1, *batch.images.shape[2:]), device=batch.images.device)
        for sample in range(samples):
            batch.check_cancelled()
            z_t = batch.randn(*condition.shape[1:], stream=sample)
            denoise = lambda z, t: network.predict_noise(z, t, condition)  # noqa: E731
            if single_step:
                t = torch.full((z_t.shape[0],), last_t, dtype=torch.long, device=z_t.device)
                latent = sampler.single_step_x0(denoise(z_t, t), last_t, z_t, prediction_type)
            else:
                latent = sampler.sample(denoise, z_t, prediction_type, on_step=batch.check_cancelled)
            probability += network.decode_mask(latent).float()
        return probability / samples

    return model
