"""Heads with and without skull, built from the MNI152 2009 brain (nilearn's copy is already skull-stripped).

`mni_head` puts layers around the template's brain mask, each of a thickness that varies smoothly over the head:
subarachnoid CSF, skull (dark tables around a brighter diploe), scalp (fat, then muscle), and soft tissue filling the
lower head (face and neck, no skull), then a bias field and Rician noise in the background. T1-like and T2-like
intensities. With stripped=True only the brain remains, with zero background, as in BraTS. Meant to test detectors,
not to look like a particular scanner.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from MedDiffusionExtension.volume import Volume
from training.phantoms.mni_template import load_template

CONTRASTS = {
    "t1": dict(csf=0.2, gm=0.55, wm=0.8, skull=0.04, diploe=0.45, fat=0.95, muscle=0.35),
    "t2": dict(csf=1.0, gm=0.55, wm=0.4, skull=0.04, diploe=0.35, fat=0.6, muscle=0.3),
}


def _blocks(array: np.ndarray, step: int) -> np.ndarray:
    shape = [(n // step) * step for n in array.shape]
    array = array[: shape[0], : shape[1], : shape[2]]
    return array.reshape(shape[0] // step, step, shape[1] // step, step, shape[2] // step, step).mean(axis=(1, 3, 5))


def _smooth_field(shape, rng, low: float, high: float, sigma_voxels: float) -> np.ndarray:
    """Smooth noise between low and high, drawn on a grid 4x coarser and interpolated (cheap for large sigmas)."""
    coarse = tuple(max(2, n // 4) for n in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), max(sigma_voxels / 4, 0.5), mode="wrap")
    field = ndimage.zoom(field, [n / c for n, c in zip(shape, coarse)], order=1, grid_mode=True, mode="grid-wrap")
    field = field[: shape[0], : shape[1], : shape[2]]
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    return (low + (high - low) * field).astype(np.float32)


def mni_head(contrast: str = "t1", stripped: bool = False, voxel_mm: int = 2, seed: int = 0,
             noise: float = 0.02) -> Volume:
    """A head (or the stripped brain) on the MNI grid reduced to `voxel_mm` isotropic voxels, scaled to 0..~1000."""
    rng = np.random.default_rng(seed)
    values = CONTRASTS[contrast]
    template = load_template()
    brain, grey, white = (_blocks(m, voxel_mm) for m in template.maps)  # (i, j, k), fractions
    csf = np.clip(brain - grey - white, 0.0, 1.0)
    image = values["csf"] * csf + values["gm"] * grey + values["wm"] * white
    inside = brain > 0.5
    if not stripped:
        distance = ndimage.distance_transform_edt(~inside) * voxel_mm  # mm outside the brain
        sigma = 30.0 / voxel_mm
        csf_out = _smooth_field(brain.shape, rng, 1.0, 3.0, sigma)
        skull_end = csf_out + _smooth_field(brain.shape, rng, 4.0, 8.0, sigma)
        scalp = _smooth_field(brain.shape, rng, 4.0, 9.0, sigma)
        head_end = skull_end + scalp
        shell = np.zeros_like(image)
        shell[distance <= csf_out] = values["csf"]
        skull = (distance > csf_out) & (distance <= skull_end)
        shell[skull] = values["skull"]
        diploe = skull & (np.abs(distance - (csf_out + skull_end) / 2) < 0.2 * (skull_end - csf_out))
        shell[diploe] = values["diploe"]
        fat = (distance > skull_end) & (distance <= skull_end + 0.6 * scalp)
        shell[fat] = values["fat"]
        shell[(distance > skull_end + 0.6 * scalp) & (distance <= head_end)] = values["muscle"]
        head = distance <= head_end
        # Face and neck: below the lower third of the brain, the head's outline is filled with soft tissue.
        k_brain = np.flatnonzero(inside.any(axis=(0, 1)))
        level = int(k_brain[0] + 0.3 * (k_brain[-1] - k_brain[0]))
        lower = np.zeros_like(head)
        lower[:, :, :level] = head[:, :, level:level + 1]
        lower &= ~inside & (distance > csf_out)
        shell[lower] = np.where(_smooth_field(brain.shape, rng, 0, 1, 4.0 / voxel_mm)[lower] > 0.6, values["fat"],
                                values["muscle"])
        head |= lower
        image = np.where(inside, image, shell * head)
        image = ndimage.gaussian_filter(image, 0.6 * 2 / voxel_mm)
    image *= _smooth_field(brain.shape, rng, 0.85, 1.15, 60.0 / voxel_mm)
    if noise:
        noisy = np.hypot(image + noise * rng.standard_normal(image.shape), noise * rng.standard_normal(image.shape))
        image = np.where(inside, noisy, 0.0) if stripped else noisy
    elif stripped:
        image = np.where(inside, image, 0.0)
    affine = template.vox_to_ras.copy()
    affine[:3, 3] += affine[:3, :3] @ np.full(3, (voxel_mm - 1) / 2)
    affine[:3, :3] *= voxel_mm
    return Volume(np.ascontiguousarray((1000.0 * image).T, dtype=np.float32), affine)


def reduced(volume: Volume, steps_kji) -> Volume:
    """Block means over steps (k, j, i) voxels: coarser or anisotropic voxels."""
    steps = [int(s) for s in steps_kji]
    array = volume.array
    shape = [(n // f) * f for n, f in zip(array.shape, steps)]
    array = array[: shape[0], : shape[1], : shape[2]]
    array = array.reshape(shape[0] // steps[0], steps[0], shape[1] // steps[1], steps[1], shape[2] // steps[2],
                          steps[2]).mean(axis=(1, 3, 5))
    matrix = volume.ijk_to_ras.copy()
    ijk_steps = np.array(steps[::-1], dtype=np.float64)
    matrix[:3, 3] += matrix[:3, :3] @ ((ijk_steps - 1) / 2)
    matrix[:3, :3] = matrix[:3, :3] * ijk_steps
    return Volume(array.astype(np.float32), matrix)


def cropped(volume: Volume, fractions_kji) -> Volume:
    """The part of the volume between fractions (low, high) of each (k, j, i) extent, geometry kept."""
    slices = [slice(int(lo * n), int(np.ceil(hi * n))) for (lo, hi), n in zip(fractions_kji, volume.shape)]
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] += matrix[:3, :3] @ np.array([s.start for s in slices[::-1]], dtype=np.float64)
    return Volume(np.ascontiguousarray(volume.array[tuple(slices)]), matrix)
