"""Resampling a secondary input onto the reference input's voxel grid (trilinear, in patient space)."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.ndimage import affine_transform

from ..errors import InputError
from .volume import Volume

# (i, j, k, 1) <-> (k, j, i, 1): our arrays are stored k-first, affines are written i-first.
_REVERSE_AXES = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


class GridMismatchWarning(UserWarning):
    """A secondary input was resampled because its grid differs from the reference's."""


def resample_to_grid(moving: Volume, reference: Volume, order: int = 1, fill: float | None = None) -> Volume:
    """`moving` interpolated at the centres of `reference`'s voxels; outside its field of view gets `fill`
    (default: the moving volume's minimum, i.e. its background)."""
    ref_kji_to_moving_kji = _REVERSE_AXES @ np.linalg.inv(moving.ijk_to_ras) @ reference.ijk_to_ras @ _REVERSE_AXES
    fill_value = float(moving.array.min()) if fill is None else fill
    array = affine_transform(
        moving.array.astype(np.float32, copy=False), ref_kji_to_moving_kji[:3, :3], offset=ref_kji_to_moving_kji[:3, 3],
        output_shape=reference.shape, order=order, mode="constant", cval=fill_value,
    )
    return Volume(array.astype(np.float32, copy=False), reference.ijk_to_ras.copy())


# Below this fraction of the reference's field of view covered by a secondary input, the model would run on
# mostly blank slices: refused. Below the second, warned.
MIN_OVERLAP, WARN_OVERLAP = 0.1, 0.9


def overlap_fraction(moving: Volume, reference: Volume, samples_per_axis: int = 16) -> float:
    """The fraction of the reference's voxel centres (sampled on a coarse grid) that lie inside `moving`'s volume."""
    axes = [np.linspace(0, n - 1, min(n, samples_per_axis)) for n in reference.shape[::-1]]  # i, j, k
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    ras = ijk @ reference.ijk_to_ras[:3, :3].T + reference.ijk_to_ras[:3, 3]
    inverse = np.linalg.inv(moving.ijk_to_ras)
    moving_ijk = ras @ inverse[:3, :3].T + inverse[:3, 3]
    # A voxel covers +-half a voxel around its centre.
    upper = np.array(moving.shape[::-1], dtype=np.float64) - 0.5
    inside = np.all((moving_ijk >= -0.5) & (moving_ijk <= upper), axis=1)
    return float(inside.mean())


def check_overlap(moving: Volume, reference: Volume, name: str = "input") -> float:
    """Refuse a secondary input that barely overlaps the reference in patient space; warn when it covers only part."""
    fraction = overlap_fraction(moving, reference)
    if fraction < MIN_OVERLAP:
        raise InputError(f"{name} covers {fraction:.0%} of the reference volume in patient space; they do not show the "
                         "same region (wrong file, or one of them has a wrong origin/orientation in its header)")
    if fraction < WARN_OVERLAP:
        warnings.warn(f"{name} covers only {fraction:.0%} of the reference volume; the rest of the output is computed "
                      "without it", GridMismatchWarning, stacklevel=3)
    return fraction


def align_to_reference(moving: Volume, reference: Volume, name: str = "input") -> Volume:
    """The moving volume itself when grids match; otherwise resampled onto the reference grid, with a warning.

    A moving volume that hardly overlaps the reference is refused (InputError), one that covers only part of it is
    warned about."""
    if moving.same_grid(reference):
        return moving
    check_overlap(moving, reference, name)
    warnings.warn(
        f"{name} is on a different voxel grid than the reference ({moving.shape} vs {reference.shape}); "
        "resampling it onto the reference grid (trilinear)", GridMismatchWarning, stacklevel=2,
    )
    return resample_to_grid(moving, reference)
