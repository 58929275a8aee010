"""MRI translation: source contrasts -> target contrasts, slice by slice, on the first input's exact grid.

CDM, per slice: the MDN samples a target representation by DDIM from noise, then the C-UNet maps (T1, T2) to the
targets conditioned on it. With K samples, K representations are drawn and the mean and per-voxel standard
deviation of the K syntheses are returned (the std is the model's uncertainty). EDTS-Trans (T1 -> T2) lives in
pipelines/edts.py; the plain UNet baselines (T1 + T2 -> T1c + T2f, or T1 -> T2) are one pass. Outputs leave the
model in [-1, 1] and are written in the card's display units (card.output_range); a refiner's mask stays in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..device import resolve_device
from ..volume import Volume, validate_volume
from ..volume.engine import EngineInput, RunOptions, SliceBatch, fit_scaling, run_slicewise
from ..weights import LoadedModel
from . import edts  # noqa: F401 - registers the "edts" slice model
from .common import build_network, make_sampler, model_grid
from .registry import build_slice_model, slice_model


def translate(
    *, inputs: Sequence[Volume], loaded: LoadedModel, targets: list[str], steps: int | None = None, samples: int = 1,
    options: RunOptions | None = None, save_mask: bool = False, **method_options,
) -> dict[str, Volume]:
    """Synthesize `targets` from `inputs` (in the card's input order; the first is the reference grid).

    Returns {target: Volume}, plus {target + '_std': Volume} when samples > 1 and {target + '_mask': Volume} (a
    refiner's mask M, 0..1) with save_mask. `method_options` go to the method's slice model (CDM:
    per_volume_representation; EDTS: refine_strength, refine_every_slice). The task layer
    (tasks.TranslateRequest) has already checked the request against the card.
    """
    options = options or RunOptions()
    card = loaded.card
    for volume, name in zip(inputs, card.input_names):
        validate_volume(volume, name.upper())
    network = build_network(loaded, resolve_device(options.device), options)
    channels = [card.output_names.index(t) for t in targets]
    grid = model_grid(card)
    engine_inputs = [EngineInput(v, n.upper(), fit_scaling(card.normalization, v, grid))
                     for v, n in zip(inputs, card.input_names)]
    model = build_slice_model(network, card, steps=steps, samples=samples, channels=channels, save_mask=save_mask,
                              **method_options)
    count, spread = len(targets), samples > 1
    out_channels = count * (1 + spread + save_mask)
    # Where no window was needed (nothing but background), a synthesis is background (-1), its spread and mask 0.
    background = [-1.0] * count + [0.0] * (out_channels - count)
    result = run_slicewise(engine_inputs, model, out_channels, grid, options, background)
    reference, scale = inputs[0], card.output_range
    volumes = {target: reference.with_array(scale.from_model(result[i])) for i, target in enumerate(targets)}
    for i, target in enumerate(targets if spread else []):
        volumes[f"{target}_std"] = reference.with_array(scale.from_model(result[count + i], is_spread=True))
    for i, target in enumerate(targets if save_mask else []):
        volumes[f"{target}_mask"] = reference.with_array(result[count * (1 + spread) + i])
    return volumes


@slice_model("cunet")
def _unet_slice_model(network, card, *, channels, **_):
    """A plain UNet baseline (CDM's ablation M1, or T1 -> T2 for EDTS-Trans): deterministic, one pass."""
    return lambda batch: network(batch.images)[:, channels].float()


@slice_model("cdm")
def _cdm_slice_model(network, card, *, steps, samples: int, channels: list[int], per_volume_representation: bool = False,
                      **_):
    sampler = make_sampler(card.sampling, steps)
    prediction_type = card.sampling.prediction_type
    representation_dim = network.mdn.representation_dim

    def model(batch: SliceBatch) -> torch.Tensor:
        syntheses = []
        # A source-conditioned MDN samples the representation given the frozen MRM encoding of (T1, T2).
        source = network.mrm.represent(batch.images) if network.mdn.source_mlp is not None else None
        denoise = lambda r, t: network.mdn(r, t, source)  # noqa: E731
        for sample in range(samples):
            batch.check_cancelled()
            noise = batch.randn(representation_dim, stream=sample, same_for_all_slices=per_volume_representation)
            representation = sampler.sample(denoise, noise, prediction_type, on_step=batch.check_cancelled)
            syntheses.append(network.cunet(batch.images, representation)[:, channels].float())
        stacked = torch.stack(syntheses)
        mean = stacked.mean(0)
        if samples == 1:
            return mean
        return torch.cat([mean, stacked.std(0, unbiased=False)], dim=1)

    return model
