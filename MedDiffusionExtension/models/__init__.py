"""The networks of MedDiffusion (no sampling here: schedules and samplers live in `diffusion/`).

`build_model(method, config)` turns a model card's architecture config into a module:
"cdm" -> CDM (MRM + MDN + C-UNet), "cunet" -> a C-UNet alone (with "conditioned": false the plain-UNet
baseline M1), "sdseg" -> SDSeg (autoencoder + vision encoder + denoiser), "segunet" -> the pixel-space baseline,
"edts" -> EDTS-Trans (RegN + texture/structure mask + diffusion refiner).
"""

from torch import nn

from .blocks import ResBlock, SelfAttention, UNet, timestep_embedding
from .cdm import CDM, CDM_CONFIGS, CUNET_CONFIGS, MDN, MRM, ConditionEmbedding, CUNet
from .edts import EDTS, EDTS_CONFIGS, RegN, TextureStructureMask
from .sdseg import (SDSEG_CONFIGS, SEGUNET_CONFIGS, AutoencoderKL, DiagonalGaussian, SDSeg, SegUNet,
                    VisionEncoder)

_BUILDERS = {"cdm": CDM.from_config, "cunet": CUNet.from_config, "sdseg": SDSeg.from_config,
             "segunet": SegUNet.from_config, "edts": EDTS.from_config}


def build_model(method: str, config: dict) -> nn.Module:
    if method not in _BUILDERS:
        raise ValueError(f"unknown model method {method!r}; expected one of {sorted(_BUILDERS)}")
    return _BUILDERS[method](config)


__all__ = [
    "build_model", "CDM", "CDM_CONFIGS", "MRM", "MDN", "CUNet", "CUNET_CONFIGS", "ConditionEmbedding",
    "EDTS", "EDTS_CONFIGS", "RegN", "TextureStructureMask",
    "SDSeg", "SDSEG_CONFIGS", "AutoencoderKL", "DiagonalGaussian", "VisionEncoder", "SegUNet", "SEGUNET_CONFIGS",
    "UNet", "ResBlock", "SelfAttention", "timestep_embedding",
]
