"""CT segmentation: a label map on the CT's exact grid, slice by slice.

SDSeg, per slice: encode the windowed CT to the condition latent z_c; start from pure noise z_T at t = T-1 (fresh,
seeded noise for every slice); one denoiser pass predicts eps; the x0 formula gives the mask latent; decode to a
probability (or K + 1 class probabilities for a multi-organ model). Steps N > 1 runs DDIM instead; K samples
average K probability maps (an ensemble). With body_only (the default), labels and probabilities outside the
patient's body (volume/body.py: an arm or the table beside the trunk) are set to background; unless
keep_far_islands, so are labelled regions far along the body axis from the organs (volume/islands.py: a bladder in
the pelvis of a long scan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from ..device import resolve_device
from ..errors import InputError
from ..volume import Volume, validate_volume
from ..volume.body import body_mask
from ..volume.islands import far_islands
from ..volume.engine import BatchReduction, EngineInput, RunOptions, SliceBatch, fit_scaling, run_slicewise
from ..weights import LoadedModel
from .common import build_network, make_sampler, model_grid
from .registry import build_slice_model, slice_model


@dataclass
class SegmentationResult:
    labels: Volume  # uint8 label values from the card's segments
    # Mean probability over samples per segment name, only when samples > 1: the foreground for a binary model,
    # each kept organ for a multi-organ one.
    probabilities: dict[str, Volume] = field(default_factory=dict)

    @property
    def probability(self) -> Optional[Volume]:
        """The binary model's foreground probability (None for one sample or a multi-organ model)."""
        return next(iter(self.probabilities.values())) if len(self.probabilities) == 1 else None


def segment(
    *, image: Volume, loaded: LoadedModel, steps: int | None = None, samples: int = 1, threshold: float = 0.5,
    options: RunOptions | None = None, organs: Optional[Sequence[int]] = None, body_only: bool = True,
    keep_far_islands: bool = False,
) -> SegmentationResult:
    """Label `image` with the card's segments; the task layer (tasks.SegmentRequest) has checked the request.

    A binary model (one segment) thresholds its foreground probability. A multi-organ model gives each voxel the
    most probable class (arg-max of the blended class probabilities on the input grid). `organs`: the label values
    to keep (None: all); the others are set to background after the arg-max, never re-normalised away, so that a
    stomach voxel does not become liver because the stomach was not asked for. `body_only`: background outside the
    largest connected body region (no organ on an arm or the table); off: wherever the model says.
    `keep_far_islands`: keep labelled regions far along the body axis from the largest one (background otherwise).
    """
    options = options or RunOptions()
    card = loaded.card
    validate_volume(image, "CT")
    network = build_network(loaded, resolve_device(options.device), options)
    classes = int(getattr(network, "classes", 1))
    if classes != len(card.segments):
        raise InputError(f"model {card.name!r} has {classes} classes but its card names {len(card.segments)} segments; "
                         "re-export the model")
    kept = [s for s in card.segments if organs is None or s.label in set(organs)]
    grid = model_grid(card)
    scaling = fit_scaling(card.normalization, image, grid)
    model = build_slice_model(network, card, steps=steps, samples=samples)
    engine_input = [EngineInput(image, "CT", scaling)]
    outside = _outside_body(image) if body_only else None
    if classes == 1:
        probability = run_slicewise(engine_input, model, 1, grid, options)[0]
        if outside is not None:
            probability[outside] = 0.0
        labels = np.where(probability > threshold, card.segments[0].label, 0).astype(np.uint8)
        far = None if keep_far_islands else far_islands(labels > 0, image)
        if far is not None:
            labels[far] = 0
            probability[far] = 0.0
        probabilities = {card.segments[0].name: image.with_array(probability)} if samples > 1 else {}
        return SegmentationResult(image.with_array(labels), probabilities)

    kept_classes = [card.segments.index(s) + 1 for s in kept]
    with_probabilities = samples > 1
    reduce = BatchReduction(1 + (len(kept_classes) if with_probabilities else 0),
                            lambda p: _argmax_and_kept(p, kept_classes, with_probabilities))
    background = [1.0] + [0.0] * classes  # a slice with no window is all background
    reduced = run_slicewise(engine_input, model, classes + 1, grid, options, background=background, reduce=reduce)
    class_to_label = np.zeros(classes + 1, dtype=np.uint8)
    for index in kept_classes:
        class_to_label[index] = card.segments[index - 1].label
    labels = class_to_label[reduced[0].astype(np.intp)]
    # Islands are judged on every organ the model labelled, not only the kept ones: asking for one organ must not
    # make its true region the far one beside a larger false one.
    labelled = reduced[0] > 0
    if outside is not None:
        labelled &= ~outside
    far = None if keep_far_islands else far_islands(labelled, image)
    for cleared in (outside, far):  # the kept organs' probabilities too
        if cleared is None:
            continue
        labels[cleared] = 0
        for kept_probability in reduced[1:]:
            kept_probability[cleared] = 0.0
    probabilities = {card.segments[index - 1].name: image.with_array(reduced[1 + n])
                     for n, index in enumerate(kept_classes)} if with_probabilities else {}
    return SegmentationResult(image.with_array(labels), probabilities)


def _outside_body(image: Volume) -> Optional[np.ndarray]:
    """True outside the patient's body; None when the CT shows no body at all (then nothing is masked)."""
    inside = body_mask(image)
    return None if inside is None else ~inside


def _argmax_and_kept(probabilities: np.ndarray, kept_classes: list[int], with_probabilities: bool) -> np.ndarray:
    """(B, K + 1, H, W) class probabilities -> (B, 1 [+ kept], H, W): the arg-max class, then the kept classes'
    probabilities when asked for."""
    index = probabilities.argmax(axis=1)[:, None].astype(np.float32)
    if not with_probabilities:
        return index
    return np.concatenate([index, probabilities[:, kept_classes]], axis=1)


@slice_model("segunet")
def _unet_slice_model(network, card, **_):
    """The non-diffusion baseline: one deterministic pass."""
    return lambda batch: network.probabilities(batch.images)


@slice_model("sdseg")
def _sdseg_slice_model(network, card, *, steps, samples: int, **_):
    sampler = make_sampler(card.sampling, steps)
    prediction_type = card.sampling.prediction_type
    last_t = sampler.schedule.num_steps - 1
    single_step = (steps or card.sampling.steps) == 1

    def model(batch: SliceBatch) -> torch.Tensor:
        condition = network.encode_image(batch.images)
        channels = 1 if network.classes == 1 else network.classes + 1
        probability = torch.zeros((batch.images.shape[0], channels, *batch.images.shape[2:]), device=batch.images.device)
        for sample in range(samples):
            batch.check_cancelled()
            z_t = batch.randn(*condition.shape[1:], stream=sample)
            denoise = lambda z, t: network.predict_noise(z, t, condition)  # noqa: E731
            if single_step:
                t = torch.full((z_t.shape[0],), last_t, dtype=torch.long, device=z_t.device)
                latent = sampler.single_step_x0(denoise(z_t, t), last_t, z_t, prediction_type)
            else:
                latent = sampler.sample(denoise, z_t, prediction_type, on_step=batch.check_cancelled)
            probability += network.decode_probabilities(latent).float()
        return probability / samples

    return model
