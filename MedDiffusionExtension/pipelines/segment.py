"""CT segmentation with SDSeg: single-step latent diffusion, slice by slice, in the CT's exact geometry.

Per slice: encode the windowed CT to the condition latent z_c; start from pure noise z_T at t = T-1 (fresh, seeded
noise for every slice); one denoiser pass predicts eps; the x0 formula gives the mask latent; decode to a probability.
--steps N > 1 runs DDIM instead; --samples K averages K probability maps (an ensemble) and keeps the mean map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..device import resolve_device
from ..errors import InputError
from ..volume import Volume, scaling_from_card, validate_volume
from ..volume.engine import EngineInput, RunOptions, SliceBatch, run_slicewise
from ..weights import LoadedModel
from .common import build_network, make_sampler


@dataclass
class SegmentationResult:
    labels: Volume  # uint8 label values from the card's segments
    probability: Optional[Volume]  # mean foreground probability over samples (only when samples > 1)


def segment(
    image: Volume, loaded: LoadedModel, steps: int | None = None, samples: int = 1, threshold: float = 0.5,
    options: RunOptions | None = None,
) -> SegmentationResult:
    options = options or RunOptions()
    card = loaded.card
    if card.method not in ("sdseg", "segunet"):
        raise InputError(f"model {card.name!r} is a {card.method} model; segment needs an SDSeg (or plain UNet) model")
    if not 0.0 < threshold < 1.0:
        raise InputError(f"--threshold must be between 0 and 1, got {threshold}")
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    validate_volume(image, "CT")
    device = resolve_device(options.device)
    network = build_network(loaded, device)
    scaling = scaling_from_card(card.data["normalization"], image.array)
    if card.method == "segunet":  # the non-diffusion baseline: one deterministic pass
        samples = 1
        slice_model = lambda batch: torch.sigmoid(network(batch.images).float())  # noqa: E731
    else:
        slice_model = _sdseg_slice_model(network, card.data["sampling"], steps, samples)

    probability = run_slicewise([EngineInput(image, "CT", scaling)], slice_model, 1, card.data["architecture"].get("image_size"), options)[0]
    label_value = int(card.data.get("segments", [{"label": 1}])[0]["label"])
    labels = np.where(probability > threshold, label_value, 0).astype(np.uint8)
    return SegmentationResult(image.with_array(labels), image.with_array(probability) if samples > 1 else None)


def _sdseg_slice_model(network, sampling: dict, steps, samples: int):
    sampler = make_sampler(sampling, steps)
    prediction_type = sampling["prediction_type"]
    last_t = sampler.schedule.num_steps - 1
    single_step = (steps or sampling["steps"]) == 1

    def slice_model(batch: SliceBatch) -> torch.Tensor:
        condition = network.encode_image(batch.images)
        probability = torch.zeros((batch.images.shape[0], 1, *batch.images.shape[2:]), device=batch.images.device)
        for sample in range(samples):
            z_t = batch.randn(*condition.shape[1:], stream=sample)
            denoise = lambda z, t: network.predict_noise(z, t, condition)  # noqa: E731
            if single_step:
                t = torch.full((z_t.shape[0],), last_t, dtype=torch.long, device=z_t.device)
                latent = sampler.single_step_x0(denoise(z_t, t), last_t, z_t, prediction_type)
            else:
                latent = sampler.sample(denoise, z_t, prediction_type)
            probability += network.decode_mask(latent).float()
        return probability / samples

    return slice_model
