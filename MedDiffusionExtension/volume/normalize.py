"""Intensity normalization to the models' [-1, 1] range, and its inverse for intensity outputs.

MRI has no absolute scale, so each volume is scaled by robust percentiles of its foreground (background voxels,
often exact zeros after skull stripping, would otherwise drag the low percentile). CT is in Hounsfield units, so a
fixed window is used, identical in training and inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError

# Foreground = voxels brighter than this fraction of the way from the minimum to the 99.9th percentile:
# skull-stripped zeros and air noise fall below it, any tissue lies above.
FOREGROUND_FRACTION = 0.05


@dataclass(frozen=True)
class IntensityScaling:
    """Linear map [low, high] -> [-1, 1]; values beyond are clipped when `clip`, else extrapolated (invertible)."""

    low: float
    high: float
    clip: bool = True

    def forward(self, array: np.ndarray) -> np.ndarray:
        # float32 throughout, in place after the first copy: a 512x512x300 CT must not grow float64 temporaries.
        scaled = np.subtract(array, self.low, dtype=np.float32)
        scaled *= np.float32(2.0 / (self.high - self.low))
        scaled -= np.float32(1.0)
        if self.clip:
            np.clip(scaled, -1.0, 1.0, out=scaled)
        return scaled

    def inverse(self, array: np.ndarray) -> np.ndarray:
        restored = (np.asarray(array, dtype=np.float64) + 1.0) * ((self.high - self.low) / 2.0) + self.low
        return restored.astype(np.float32)

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "clip": self.clip}


def foreground_mask(array: np.ndarray) -> np.ndarray:
    lowest = float(array.min())
    top = float(np.percentile(array, 99.9))
    return array > lowest + FOREGROUND_FRACTION * (top - lowest)


def fit_mri_scaling(array: np.ndarray, lower: float = 0.5, upper: float = 99.5, clip: bool = True) -> IntensityScaling:
    """Percentiles of the foreground voxels map to -1 and 1.

    The foreground's outer rim (one voxel in-plane) is left out: its voxels mix tissue and background in proportions
    that depend on the scanner's matrix and interpolation, and a low percentile taken over them moved by a quarter
    of the intensity range between two grids of one phantom (185 vs 64); without the rim, by 5 %.
    """
    mask = foreground_mask(array)
    inner = ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool)) if mask.ndim == 3 else mask
    if inner.sum() >= 100:
        mask = inner
    if mask.sum() < 100:
        raise InputError("the MRI volume has almost no foreground (fewer than 100 voxels above background); check the input")
    low, high = np.percentile(array[mask], [lower, upper])
    if not high > low:
        raise InputError("the MRI volume's foreground is constant; check that the right file was loaded")
    return IntensityScaling(float(low), float(high), clip)


def ct_window(low: float = -175.0, high: float = 250.0) -> IntensityScaling:
    """The HU window of SDSeg's training code, mapped to [-1, 1] and clipped."""
    return IntensityScaling(low, high, clip=True)


def scaling_from_card(normalization, array: np.ndarray) -> IntensityScaling | None:
    """The scaling a card's normalization (typed, or its JSON form) asks for, fitted to this volume where it is
    per-volume; None for "none" (voxel values pass unchanged)."""
    from ..weights.card import Normalization

    if not isinstance(normalization, Normalization):
        normalization = Normalization.parse(normalization, "normalization")
    if normalization.kind == "mri_percentile":
        return fit_mri_scaling(array, normalization.lower, normalization.upper)
    if normalization.kind == "ct_window":
        return ct_window(*normalization.window)
    return None
