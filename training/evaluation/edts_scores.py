"""What the EDTS-Trans evaluation measures on a synthetic T2: PSNR and SSIM per slice, a sharpness ratio standing in
for LPIPS (whose pretrained weights are not available here), and the intensity statistics of the paper's Table I.

Volumes are canonical axial arrays (k, j, i) on the metric scale [0, 1] (each volume normalized by its own 0.5/99.5
foreground percentiles, as the model sees it); `brain` is the T1's foreground and `counted` the slices averaged.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from MedDiffusionExtension import metrics

# High-pass = image minus its Gaussian blur of this many pixels (in-plane, on the input's own grid).
HIGH_PASS_SIGMA = 1.0
# Table I is on the 8-bit scale the paper's numbers are on (its T2 mean 28.22, variance 2818.61).
TABLE_I_SCALE = 255.0


def high_frequency_energy(volume: np.ndarray, brain: np.ndarray, counted: np.ndarray) -> float:
    """Mean squared high-pass (in-plane, sigma HIGH_PASS_SIGMA pixels) inside the brain of the counted slices."""
    high_pass = volume - ndimage.gaussian_filter(volume, sigma=(0.0, HIGH_PASS_SIGMA, HIGH_PASS_SIGMA))
    inside = brain & counted[:, None, None]
    return float((high_pass[inside] ** 2).mean())


def sharpness_ratio(prediction: np.ndarray, reference: np.ndarray, brain: np.ndarray, counted: np.ndarray) -> float:
    """High-frequency energy of the prediction over the reference's: 1 = as much fine detail as the reference, below 1
    smoother (what regression tends to give), above 1 more high-frequency content (detail or noise)."""
    return high_frequency_energy(prediction, brain, counted) / high_frequency_energy(reference, brain, counted)


def image_scores(prediction: np.ndarray, reference: np.ndarray, brain: np.ndarray, counted: np.ndarray) -> dict:
    """2D PSNR, SSIM, MAE averaged over the counted slices (whole slices, data range 1), and the sharpness ratio."""
    per_slice = [metrics.image_metrics(prediction[k], reference[k]) for k in np.flatnonzero(counted)]
    return {"psnr": float(np.mean([m["psnr"] for m in per_slice])),
            "ssim": float(np.mean([m["ssim"] for m in per_slice])),
            "mae": float(np.mean([m["mae"] for m in per_slice])),
            "sharpness": sharpness_ratio(prediction, reference, brain, counted)}


def intensity_statistics(volume: np.ndarray, brain: np.ndarray) -> dict:
    """Mean and variance of the brain's voxels on TABLE_I_SCALE."""
    values = volume[brain].astype(np.float64) * TABLE_I_SCALE
    return {"mean": float(values.mean()), "variance": float(values.var())}
