"""Random-weight models with micro architectures, written in the real model format, for fast tests.

They go through the same card/registry/SHA-256 path as trained models; only the numbers they produce are
meaningless. Cards come from the real recipes so that tests exercise the fields pipelines read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from MedDiffusionExtension.models import build_model
from MedDiffusionExtension.weights import save_model
from training.recipes import build_recipe

MICRO_CDM = {
    "image_size": 32, "representation_dim": 16,
    "mrm": {"patch_size": 4, "mask_patch_size": 8, "mask_ratio": 0.6, "width": 32, "depth": 1, "num_heads": 2,
            "independent_masks": True},
    "mdn": {"hidden": 32, "depth": 1, "decoupled_input": True, "source_condition_dim": 0},
    "cunet": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [], "mid_attention": False,
              "num_heads": 1, "dropout": 0.0, "conditioned": True, "fusion": "add", "output_activation": "none"},
}
MICRO_SDSEG = {
    "image_size": 32, "latent_channels": 4,
    "autoencoder": {"channels": 4, "channel_mult": [1, 2], "num_res_blocks": 1, "mid_attention": False},
    "denoiser": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
                 "mid_attention": False, "num_heads": 1, "dropout": 0.0},
}


MICRO_SEGUNET = {"image_size": 32, "unet": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                            "attention_levels": [], "mid_attention": False, "num_heads": 1, "dropout": 0.0}}


MICRO_EDTS = {
    "image_size": 32,
    "regn": {"channels": 8, "channel_mult": [1, 2], "num_blocks": [1, 1], "num_heads": [1, 1], "ffn_expansion": 2.0,
             "refinement_blocks": 1},
    "tsm": {"features": "fixed", "layers": [4, 9, 16, 23], "threshold": 0.05, "normalize": "minmax", "mask": "dynamic",
            "seed": 0, "width": 8, "dispersion": "local", "window": 3},
    "refiner": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [], "mid_attention": False,
                "num_heads": 1, "dropout": 0.0},
    "refiner_residual": True,
}


def _randomize(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    # Zero-initialised output layers would make every output constant; give every tensor small random values.
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    return {k: (torch.randn(v.shape, generator=generator) * 0.2 if v.is_floating_point() and v.ndim > 0 else v)
            for k, v in state.items()}


def write_micro_model(root: Path, method: str, name: str | None = None, seed: int = 0, sampling_steps: int | None = None,
                      organs: list[int] | None = None, mask_encoding: str = "onehot") -> Path:
    """A micro model folder under `root`. organs (BTCV label values) makes a multi-organ SDSeg ("sdseg") or a
    multi-class UNet ("segunet") with those segments, named and coloured from weights/organs.py."""
    # Micro fields of view (32 pixels of 4 / 8 mm) that the small test volumes fill in one or a few windows.
    if method == "cdm":
        recipe = build_recipe("cdm", {"stage": "cunet", "architecture": MICRO_CDM, "name": name or "cdm-micro-test",
                                      "spacing_mm": 4.0,
                                      **({"sampling_steps": sampling_steps} if sampling_steps else {"sampling_steps": 3})})
    elif method == "sdseg":
        multi = {"organs": organs, "mask_encoding": mask_encoding} if organs else {}
        recipe = build_recipe("sdseg", {"stage": "ldm", "architecture": MICRO_SDSEG, "name": name or "sdseg-micro-test",
                                        "spacing_mm": 8.0, **multi})
    elif method == "segunet":
        recipe = build_recipe("sdseg", {"stage": "segunet", "architecture": MICRO_SEGUNET, "spacing_mm": 8.0,
                                        "name": name or "segunet-micro-test", **({"organs": organs} if organs else {})})
    elif method == "edts":
        recipe = build_recipe("edts", {"stage": "refiner", "architecture": MICRO_EDTS, "name": name or "edts-micro-test",
                                       "spacing_mm": 4.0, "sampling_steps": sampling_steps or 3})
    else:
        raise ValueError(method)
    card = recipe.export_card()
    card["training"] = {"data": "none: random weights for tests", "command": "Testing/tiny_models.py"}
    card["metrics"] = {"note": "random weights: no metrics"}
    model = build_model(card["method"], card["architecture"])
    tensors = _randomize(model, seed)
    if method == "edts":  # the TSM is never trained: keep its fixed, seeded VGG16 weights so its masks look real
        tensors.update({k: v for k, v in model.state_dict().items() if k.startswith("tsm.")})
    return save_model(Path(root) / card["name"], tensors, card)
