"""Evaluation metrics: image similarity (PSNR, SSIM, MAE, NMAE), segmentation overlap (Dice, IoU, HD95) and
the agreement between repeated samples of a stochastic model.

Everything is numpy + scipy and works on one 2D or 3D array at a time; averaging over volumes is the caller's job.
Image metrics expect intensities scaled to [0, 1] (see `to_unit_range`) and use `data_range=1` unless told
otherwise. Arguments are always `(prediction, reference)`; only NMAE (range of the reference) depends on the order.

The numbers are meant to be interchangeable with the field's reference implementations, which the tests check:
- PSNR and SSIM equal `skimage.metrics.peak_signal_noise_ratio` and `structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=...)`: 11-tap Gaussian window (truncate 3.5), K1 0.01,
  K2 0.03, 'reflect' borders, and the unmasked mean skips a 5-voxel border, exactly as scikit-image does.
- Dice, IoU equal MONAI's `compute_dice` / `compute_iou` with `ignore_empty=False`; HD95 equals MONAI's
  `compute_hausdorff_distance(percentile=95, spacing=...)` whenever both masks are non-empty (boundary voxels are
  a mask minus its 6/4-connected erosion; HD95 is the larger of the two directed 95th percentiles, with linear
  interpolation, of exact Euclidean boundary-to-boundary distances in millimetres).

Empty segmentations (where MONAI returns nan for all three cases of HD95 and nan or 0/1 for Dice depending on
`ignore_empty`): both empty -> Dice 1, IoU 1, HD95 0 (a perfect prediction of "nothing"); exactly one empty ->
Dice 0, IoU 0, HD95 inf (the boundary distance is unbounded; inf, unlike nan, is not silently skipped by nanmean).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
from scipy import ndimage

from .errors import InputError

# SSIM constants of Wang et al. 2004 as used by scikit-image with gaussian_weights=True.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_WINDOW = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # 11 taps
SSIM_K1 = 0.01
SSIM_K2 = 0.03

HD_PERCENTILE = 95.0


# ---------------------------------------------------------------------------------------------- input checks


def _image_pair(prediction, reference) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(prediction, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}; resample first")
    if pred.ndim not in (2, 3):
        raise InputError(f"expected a 2D or 3D image, got {pred.ndim} dimensions; pass one image at a time")
    return pred, ref


def _binary(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != bool:
        if not np.isin(array, (0, 1)).all():
            raise InputError(f"{name} must be binary (bool or 0/1); threshold it first")
        array = array.astype(bool)
    return array


def _mask_for(mask, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    mask = _binary(mask, "mask")
    if mask.shape != shape:
        raise InputError(f"mask shape {mask.shape} differs from image shape {shape}")
    if not mask.any():
        raise InputError("the mask is empty; pass a mask with at least one voxel or no mask")
    return mask


def _check_data_range(data_range: float) -> float:
    if not data_range > 0:
        raise InputError(f"data_range must be positive, got {data_range}")
    return float(data_range)


# -------------------------------------------------------------------------------------------- image metrics


def to_unit_range(x) -> np.ndarray:
    """Map a model-space volume in [-1, 1] to [0, 1] (float32) for the image metrics.

    Values outside [-1, 1] (sampler overshoot) are clipped so that `data_range=1` stays true.
    """
    return np.clip((np.asarray(x, dtype=np.float32) + 1.0) * 0.5, 0.0, 1.0)


def psnr(prediction, reference, *, data_range: float = 1.0, mask=None) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE), the MSE taken over `mask` if given.

    Identical images (MSE 0) give `inf`, as scikit-image does (without its divide-by-zero warning).
    """
    pred, ref = _image_pair(prediction, reference)
    data_range = _check_data_range(data_range)
    mask = _mask_for(mask, pred.shape)
    squared_error = (pred - ref) ** 2
    mse = float(squared_error[mask].mean() if mask is not None else squared_error.mean())
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim_map(prediction, reference, *, data_range: float = 1.0) -> np.ndarray:
    """Local SSIM at every voxel (float64, same shape), Gaussian-weighted as scikit-image's structural_similarity.

    In 3D the Gaussian window is 3D (11x11x11). Every dimension must be at least 11 voxels long.
    """
    pred, ref = _image_pair(prediction, reference)
    data_range = _check_data_range(data_range)
    if min(pred.shape) < SSIM_WINDOW:
        raise InputError(
            f"SSIM needs every image dimension >= {SSIM_WINDOW} voxels, got shape {pred.shape}; "
            "compute it on 2D slices or larger crops"
        )

    def local_mean(image: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(image, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    mean_p, mean_r = local_mean(pred), local_mean(ref)
    # Population (not sample) covariances, as in Wang et al. 2004 and use_sample_covariance=False.
    var_p = local_mean(pred * pred) - mean_p * mean_p
    var_r = local_mean(ref * ref) - mean_r * mean_r
    cov = local_mean(pred * ref) - mean_p * mean_r
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    luminance_num = 2 * mean_p * mean_r + c1
    luminance_den = mean_p**2 + mean_r**2 + c1
    structure_num = 2 * cov + c2
    structure_den = var_p + var_r + c2
    return (luminance_num * structure_num) / (luminance_den * structure_den)


def ssim(prediction, reference, *, data_range: float = 1.0, mask=None) -> float:
    """Mean structural similarity.

    Without a mask: mean of `ssim_map` after dropping a 5-voxel border on every side (scikit-image's value).
    With a mask: mean of the full `ssim_map` over the mask voxels (no border dropped; the map near the border
    uses reflected neighbours), so an all-True mask differs slightly from no mask.
    """
    local = ssim_map(prediction, reference, data_range=data_range)
    mask = _mask_for(mask, local.shape)
    if mask is not None:
        return float(local[mask].mean())
    border = (SSIM_WINDOW - 1) // 2
    interior = tuple(slice(border, size - border) for size in local.shape)
    return float(local[interior].mean())


def mae(prediction, reference, *, mask=None) -> float:
    """Mean absolute error over the image (or over `mask`)."""
    pred, ref = _image_pair(prediction, reference)
    mask = _mask_for(mask, pred.shape)
    error = np.abs(pred - ref)
    return float(error[mask].mean() if mask is not None else error.mean())


def nmae(prediction, reference, *, mask=None) -> float:
    """Normalized mean absolute error: MAE / (max(reference) - min(reference)), both over `mask` if given.

    The survey (Shi et al.) reports NMAE without giving a formula; normalizing by the reference's own intensity
    range is the usual definition and makes the value independent of the intensity scale. A constant reference
    has no range: the result is then nan.
    """
    pred, ref = _image_pair(prediction, reference)
    mask = _mask_for(mask, pred.shape)
    ref_values = ref[mask] if mask is not None else ref
    value_range = float(ref_values.max() - ref_values.min())
    if value_range == 0.0:
        return float("nan")
    return mae(pred, ref, mask=mask) / value_range


def image_metrics(prediction, reference, *, data_range: float = 1.0, mask=None) -> dict[str, float]:
    """All image metrics for one image pair: {'psnr', 'ssim', 'mae', 'nmae'}."""
    return {
        "psnr": psnr(prediction, reference, data_range=data_range, mask=mask),
        "ssim": ssim(prediction, reference, data_range=data_range, mask=mask),
        "mae": mae(prediction, reference, mask=mask),
        "nmae": nmae(prediction, reference, mask=mask),
    }


# ------------------------------------------------------------------------------------- segmentation metrics


def _segmentation_pair(prediction, reference) -> tuple[np.ndarray, np.ndarray]:
    pred = _binary(prediction, "prediction")
    ref = _binary(reference, "reference")
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}; resample first")
    if pred.ndim not in (2, 3):
        raise InputError(f"expected a 2D or 3D segmentation, got {pred.ndim} dimensions; pass one at a time")
    return pred, ref


def dice(prediction, reference) -> float:
    """Dice coefficient 2|P n R| / (|P| + |R|); 1 when both are empty."""
    pred, ref = _segmentation_pair(prediction, reference)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def iou(prediction, reference) -> float:
    """Intersection over union |P n R| / |P u R|; 1 when both are empty."""
    pred, ref = _segmentation_pair(prediction, reference)
    union = int(np.logical_or(pred, ref).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(pred, ref).sum()) / union


def _boundary(mask: np.ndarray) -> np.ndarray:
    # Face-connected erosion with outside-the-array counted as background, like MONAI's get_mask_edges.
    return mask & ~ndimage.binary_erosion(mask)


def _spacing_for(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim or not (values > 0).all():
        raise InputError(f"spacing must be one positive number or {ndim} (one per array axis), got {spacing}")
    return tuple(float(v) for v in values)


def hd95(prediction, reference, spacing: float | Sequence[float] | None = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the boundaries, in the units of `spacing` (mm).

    `spacing` is per array axis, i.e. (k, j, i) order for project volumes; None means 1 per axis.
    Boundary voxels are those with a background face neighbour. For each boundary voxel of one mask the exact
    Euclidean distance to the nearest boundary voxel of the other is taken; the result is the larger of the two
    directed 95th percentiles (MONAI's definition). Both empty -> 0; exactly one empty -> inf.
    """
    pred, ref = _segmentation_pair(prediction, reference)
    sampling = _spacing_for(spacing, pred.ndim)
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return 0.0
    if pred_empty or ref_empty:
        return float("inf")
    # The union's bounding box holds every boundary voxel and all nearest neighbours: cropping is exact and fast.
    box = ndimage.find_objects((pred | ref).astype(np.uint8))[0]
    pred_edge, ref_edge = _boundary(pred[box]), _boundary(ref[box])
    distance_to_ref = ndimage.distance_transform_edt(~ref_edge, sampling=sampling)
    distance_to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=sampling)
    return float(
        max(
            np.percentile(distance_to_ref[pred_edge], HD_PERCENTILE),
            np.percentile(distance_to_pred[ref_edge], HD_PERCENTILE),
        )
    )


def segmentation_metrics(prediction, reference, spacing=None) -> dict[str, float]:
    """All segmentation metrics for one binary pair: {'dice', 'iou', 'hd95'}."""
    return {
        "dice": dice(prediction, reference),
        "iou": iou(prediction, reference),
        "hd95": hd95(prediction, reference, spacing),
    }


def label_metrics(prediction, reference, labels: Sequence[int], spacing=None) -> dict[int, dict[str, float]]:
    """`segmentation_metrics` of each label value of two label maps: {label: {'dice', 'iou', 'hd95'}}, label l
    being the binary pair (prediction == l, reference == l), with the same empty-mask convention (a label absent
    from both maps scores Dice 1, HD95 0; absent from one, Dice 0, HD95 inf).

    Each pair is cropped to the bounding box of its union first, which changes no metric (voxels outside are
    background in both) and keeps a small organ of a large CT cheap.
    """
    pred, ref = np.asarray(prediction), np.asarray(reference)
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}; resample first")
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(ref.dtype, np.integer)):
        raise InputError(f"label maps must hold integer label values, got {pred.dtype} and {ref.dtype}")
    spacing = _spacing_for(spacing, pred.ndim)
    wanted = [int(label) for label in labels]
    if any(label < 1 for label in wanted):
        raise InputError(f"label values must be positive (0 is background), got {wanted}")
    top = max(wanted, default=0)
    # find_objects gives every label's bounding box in one pass; values above the largest wanted are ignored.
    pred_boxes = ndimage.find_objects(np.where((pred > 0) & (pred <= top), pred, 0), max_label=top) if top else []
    ref_boxes = ndimage.find_objects(np.where((ref > 0) & (ref <= top), ref, 0), max_label=top) if top else []
    results = {}
    for label in wanted:
        boxes = [box for box in (pred_boxes[label - 1], ref_boxes[label - 1]) if box is not None]
        if not boxes:
            results[label] = segmentation_metrics(np.zeros((1,) * pred.ndim, bool), np.zeros((1,) * pred.ndim, bool))
            continue
        union = tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes))
                      for axis in range(pred.ndim))
        results[label] = segmentation_metrics(pred[union] == label, ref[union] == label, spacing)
    return results


# ---------------------------------------------------------------------------- agreement of repeated samples


def _pairs(samples, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    samples = [np.asarray(sample) for sample in samples]
    if len(samples) < 2:
        raise InputError(f"need at least 2 {name} to measure their agreement, got {len(samples)}")
    return list(itertools.combinations(samples, 2))


def pairwise_image_agreement(samples, *, data_range: float = 1.0, mask=None) -> dict[str, float]:
    """Mean PSNR and SSIM over all K(K-1)/2 pairs of K samples of the same input: {'psnr', 'ssim'}.

    `samples` is a sequence of same-shape images or an array with the sample index first. Higher means a more
    stable (less stochastic) model; two identical samples make the mean PSNR inf.
    """
    pairs = _pairs(samples, "samples")
    return {
        "psnr": float(np.mean([psnr(a, b, data_range=data_range, mask=mask) for a, b in pairs])),
        "ssim": float(np.mean([ssim(a, b, data_range=data_range, mask=mask) for a, b in pairs])),
    }


def pairwise_dice(segmentations) -> float:
    """Mean Dice over all pairs of K binary segmentations of the same input (1 = every sample identical)."""
    return float(np.mean([dice(a, b) for a, b in _pairs(segmentations, "segmentations")]))
