"""Resampling a secondary input onto the reference input's voxel grid (trilinear, in patient space)."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.ndimage import affine_transform

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


def align_to_reference(moving: Volume, reference: Volume, name: str = "input") -> Volume:
    """The moving volume itself when grids match; otherwise resampled onto the reference grid, with a warning."""
    if moving.same_grid(reference):
        return moving
    warnings.warn(
        f"{name} is on a different voxel grid than the reference ({moving.shape} vs {reference.shape}); "
        "resampling it onto the reference grid (trilinear)", GridMismatchWarning, stacklevel=2,
    )
    return resample_to_grid(moving, reference)
