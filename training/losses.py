"""Differentiable image losses for the recipes, with the project's SSIM convention (MedDiffusionExtension.metrics).

`ssim` is scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=...) in torch: 11-tap Gaussian window (truncate 3.5), K1 0.01, K2 0.03, population covariances, and the
mean over the pixels at least 5 from every border. Those pixels' windows lie inside the image, so convolving without
padding gives exactly scikit-image's value whatever border mode it pads with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from MedDiffusionExtension.metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size,) normalized Gaussian taps, as scipy.ndimage.gaussian_filter uses them."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def _local_mean(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian average over the valid pixels of (B, C, H, W), per channel."""
    channels = x.shape[1]
    rows = taps.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1)
    columns = taps.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1)
    return F.conv2d(F.conv2d(x, rows, groups=channels), columns, groups=channels)


def ssim(prediction: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each image pair: (B, C, H, W) x 2 -> (B,), averaged over channels and interior pixels."""
    if prediction.shape != reference.shape or prediction.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(prediction.shape)} "
                         f"and {tuple(reference.shape)}")
    if min(prediction.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW} pixels per side")
    x, y = prediction.float(), reference.float()
    taps = gaussian_window().to(x)
    mean_x, mean_y = _local_mean(x, taps), _local_mean(y, taps)
    var_x = _local_mean(x * x, taps) - mean_x ** 2
    var_y = _local_mean(y * y, taps) - mean_y ** 2
    cov = _local_mean(x * y, taps) - mean_x * mean_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    local = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))
    return local.mean(dim=(1, 2, 3))


def l1_ssim_loss(prediction: torch.Tensor, reference: torch.Tensor, ssim_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, 1 - SSIM) of model-unit images in [-1, 1]; SSIM is taken on the [0, 1] images (data range 1).

    Returns the two terms; the loss is l1 + ssim_weight * (1 - SSIM). With ssim_weight 0 the SSIM term is still
    returned for the logs, but computed without gradient.
    """
    l1 = F.l1_loss(prediction.float(), reference.float())
    with torch.set_grad_enabled(torch.is_grad_enabled() and bool(ssim_weight)):
        return l1, 1.0 - ssim((prediction + 1) / 2, (reference + 1) / 2).mean()
