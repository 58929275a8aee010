"""Models with random weights at the two scales the project defines (models.CDM_CONFIGS / SDSEG_CONFIGS: "tiny",
the bundled CPU models' size, and "paper", the papers' size), wrapped as loaded models with a card so that they run
through the real pipelines; and the pixel-space diffusion baselines built on the same backbones. Speed does not
depend on the weights' values; the bf16-vs-fp32 differences measured with them are those of random networks."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..models import CDM_CONFIGS, SDSEG_CONFIGS, UNet, build_model
from ..weights import LoadedModel
from ..weights.card import parse_card

SCALES = ("tiny", "paper")
CONFIGS = {"cdm": CDM_CONFIGS, "sdseg": SDSEG_CONFIGS}
BRAIN_FIELD_MM = 240.0  # BraTS: 240 x 240 at 1 mm; the CDM's slice covers it at any matrix size
CT_SPACING_MM = 1.6  # the bundled CT model's: 256 pixels cover 41 cm, one window per 512 x 512 slice at 0.8 mm

_SAMPLING = {
    "cdm": {"schedule": {"kind": "linear", "beta_start": 0.0015, "beta_end": 0.0195, "num_steps": 1000},
            "prediction_type": "sample", "steps": 30, "eta": 0.0, "timestep_spacing": "leading", "set_alpha_to_one": True},
    "sdseg": {"schedule": {"kind": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0155, "num_steps": 1000},
              "prediction_type": "epsilon", "steps": 1, "eta": 0.0, "timestep_spacing": "trailing",
              "set_alpha_to_one": True},
}


def card_data(method: str, scale: str) -> dict:
    architecture = copy.deepcopy(CONFIGS[method][scale])
    size = architecture["image_size"]
    common = {"name": f"{method}-{scale}-random", "version": "bench", "method": method, "architecture": architecture,
              "sampling": _SAMPLING[method], "training": {"note": "random weights, for speed measurements only"},
              "metrics": {}, "license": "n/a", "citation": "n/a", "sha256": "n/a"}
    if method == "cdm":
        return dict(common, task="translation", inputs=[{"name": "t1"}, {"name": "t2"}],
                    outputs=[{"name": "t1c"}, {"name": "t2f"}],
                    normalization={"kind": "mri_percentile", "lower": 0.5, "upper": 99.5},
                    geometry={"in_plane_spacing_mm": BRAIN_FIELD_MM / size})
    return dict(common, task="segmentation", inputs=[{"name": "image"}], outputs=[{"name": "label"}],
                normalization={"kind": "ct_window", "window": [-175.0, 250.0]},
                geometry={"in_plane_spacing_mm": CT_SPACING_MM})


def random_model(method: str, scale: str, seed: int = 0) -> LoadedModel:
    """A loaded model of `method` at `scale` with seeded random weights. Layers the networks initialise at zero
    (residual branches, outputs, SDSeg's z_c input) get small random values too: otherwise a random network's
    output is nearly constant and precision errors would not show."""
    torch.manual_seed(seed)
    network = build_model(method, CONFIGS[method][scale])
    with torch.no_grad():
        for parameter in network.parameters():
            zeros = parameter == 0
            if parameter.dim() > 1 and zeros.any():
                parameter.copy_(torch.where(zeros, torch.randn_like(parameter) * 0.02, parameter))
    card = parse_card(card_data(method, scale), Path(f"<{method}-{scale}-random>"))
    return LoadedModel(card, dict(network.state_dict()))


def pixel_diffusion_unet(cdm_architecture: dict) -> torch.nn.Module:
    """A pixel-space conditional diffusion UNet with the C-UNet's backbone: x_t (T1c, T2f) with the sources (T1,
    T2) in, the timestep embedded, no representation: what CDM replaces (one pass per sampling step)."""
    arch = {k: v for k, v in cdm_architecture["cunet"].items() if k not in ("conditioned", "fusion", "output_activation")}
    return UNet(4, 2, time_embedding=True, **arch).eval()


def medsegdiff_like_unet(sdseg_architecture: dict) -> torch.nn.Module:
    """A MedSegDiff-like pixel-space segmentation diffusion UNet: x_t (mask) with the CT in, the timestep embedded,
    the SDSeg denoiser's widths and attention resolutions at pixel resolution."""
    arch = dict(sdseg_architecture["denoiser"])
    resolutions = arch.pop("attention_resolutions")
    size = sdseg_architecture["image_size"]
    levels = [level for level in range(len(arch["channel_mult"])) if size // 2 ** level in resolutions]
    return UNet(2, 1, attention_levels=levels, time_embedding=True, **arch).eval()
