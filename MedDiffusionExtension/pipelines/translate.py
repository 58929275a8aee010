"""MRI translation with CDM: T1 + T2 -> T1c and T2-FLAIR, slice by slice, in the T1's exact geometry.

Per slice: the MDN samples a target representation by DDIM from noise, then the C-UNet maps (T1, T2) to the targets
conditioned on it. With K samples, K representations are drawn and the mean and per-voxel standard deviation of the
K syntheses are returned (the std is the model's uncertainty). Synthetic MR has no physical unit: the model range
[-1, 1] is mapped linearly to [0, 1000] (background 0), the std to the same units.
"""

from __future__ import annotations

import torch

from ..device import resolve_device
from ..errors import InputError
from ..volume import Volume, scaling_from_card, validate_volume
from ..volume.engine import EngineInput, RunOptions, SliceBatch, run_slicewise
from ..weights import LoadedModel
from .common import build_network, make_sampler

OUTPUT_SCALE = 500.0  # [-1, 1] -> [0, 1000]


def _to_display_units(model_values, is_std: bool = False):
    return model_values * OUTPUT_SCALE if is_std else (model_values.clip(-1.0, 1.0) + 1.0) * OUTPUT_SCALE


def translate(
    t1: Volume, t2: Volume, loaded: LoadedModel, targets: list[str] | None = None, steps: int | None = None,
    samples: int = 1, options: RunOptions | None = None, per_volume_representation: bool = False,
) -> dict[str, Volume]:
    """Synthesize `targets`; returns {target: Volume} plus {target + '_std': Volume} when samples > 1."""
    options = options or RunOptions()
    card = loaded.card
    if card.method not in ("cdm", "cunet"):
        raise InputError(f"model {card.name!r} is a {card.method} model; translate needs a CDM (or plain C-UNet) model")
    available = card.output_names
    targets = targets or available
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise InputError(f"model {card.name!r} cannot synthesize {', '.join(unknown)}; it makes {', '.join(available)}")
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    validate_volume(t1, "T1")
    validate_volume(t2, "T2")
    device = resolve_device(options.device)
    network = build_network(loaded, device)
    channels = [available.index(t) for t in targets]
    normalization = card.data["normalization"]
    inputs = [
        EngineInput(t1, "T1", scaling_from_card(normalization, t1.array)),
        EngineInput(t2, "T2", scaling_from_card(normalization, t2.array)),
    ]
    if card.method == "cunet":  # the plain UNet baseline (CDM ablation M1): deterministic, one pass
        samples = 1
        slice_model = lambda batch: network(batch.images)[:, channels].float()  # noqa: E731
    else:
        slice_model = _cdm_slice_model(network, card.data["sampling"], steps, samples, channels, per_volume_representation)

    out_channels = len(targets) * (2 if samples > 1 else 1)
    result = run_slicewise(inputs, slice_model, out_channels, card.data["architecture"].get("image_size"), options)
    volumes = {target: t1.with_array(_to_display_units(result[i])) for i, target in enumerate(targets)}
    if samples > 1:
        for i, target in enumerate(targets):
            volumes[f"{target}_std"] = t1.with_array(_to_display_units(result[len(targets) + i], is_std=True))
    return volumes


def _cdm_slice_model(network, sampling: dict, steps, samples: int, channels: list[int], per_volume_representation: bool):
    sampler = make_sampler(sampling, steps)
    prediction_type = sampling["prediction_type"]
    representation_dim = network.mdn.representation_dim

    def slice_model(batch: SliceBatch) -> torch.Tensor:
        syntheses = []
        # A source-conditioned MDN samples the representation given the frozen MRM encoding of (T1, T2).
        source = network.mrm.represent(batch.images) if network.mdn.source_mlp is not None else None
        denoise = lambda r, t: network.mdn(r, t, source)  # noqa: E731
        for sample in range(samples):
            noise = batch.randn(representation_dim, stream=sample, same_for_all_slices=per_volume_representation)
            representation = sampler.sample(denoise, noise, prediction_type)
            syntheses.append(network.cunet(batch.images, representation)[:, channels].float())
        stacked = torch.stack(syntheses)
        mean = stacked.mean(0)
        if samples == 1:
            return mean
        return torch.cat([mean, stacked.std(0, unbiased=False)], dim=1)

    return slice_model
