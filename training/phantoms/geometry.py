"""Voxel grids of the phantoms: shape (NIfTI order), the ijk-to-RAS matrix, and patient coordinates of voxels.

Shapes are given as (ni, nj, nk) like NIfTI headers and the issue's "240x240x155"; arrays are stored (k, j, i)
like the project's Volume. Grids are axis-aligned (a signed permutation times the spacing), which keeps patient
coordinates separable: each of R, A, S depends on one array axis and is handed out as a broadcastable 1-D array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedDiffusionExtension.errors import InputError


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]  # (ni, nj, nk)
    ijk_to_ras: np.ndarray

    @property
    def array_shape(self) -> tuple[int, int, int]:
        return (self.shape[2], self.shape[1], self.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))

    def _axis_of(self, world_axis: int) -> int:
        row = self.ijk_to_ras[world_axis, :3]
        voxel_axis = int(np.argmax(np.abs(row)))
        if np.count_nonzero(np.abs(row) > 1e-9 * np.abs(row).max()) != 1:
            raise ValueError("phantom grids must be axis-aligned (no oblique ijk-to-RAS matrix)")
        return voxel_axis

    def world_axes(self, region: tuple[slice, slice, slice] | None = None):
        """R, A, S millimetres of the voxel centres as three float32 arrays broadcasting to the (k, j, i) shape
        (of the region, slices in (k, j, i) order, when given)."""
        axes = []
        for world_axis in range(3):
            voxel_axis = self._axis_of(world_axis)
            index = np.arange(self.shape[voxel_axis], dtype=np.float64)
            if region is not None:
                index = index[region[2 - voxel_axis]]
            values = self.ijk_to_ras[world_axis, voxel_axis] * index + self.ijk_to_ras[world_axis, 3]
            shape = [1, 1, 1]
            shape[2 - voxel_axis] = values.size
            axes.append(values.astype(np.float32).reshape(shape))
        return tuple(axes)

    def region(self, low_ras, high_ras) -> tuple[slice, slice, slice] | None:
        """(k, j, i) slices of the voxels whose centres lie in the RAS box [low, high], or None if none do."""
        corners = np.array(np.meshgrid(*zip(low_ras, high_ras), indexing="ij")).reshape(3, -1)
        ijk = np.linalg.solve(self.ijk_to_ras[:3, :3], corners - self.ijk_to_ras[:3, 3:4])
        slices = []
        for axis in (2, 1, 0):
            first = max(int(np.ceil(ijk[axis].min() - 1e-6)), 0)
            last = min(int(np.floor(ijk[axis].max() + 1e-6)), self.shape[axis] - 1)
            if last < first:
                return None
            slices.append(slice(first, last + 1))
        return tuple(slices)


def lps_grid(shape, spacing, centre_ras) -> Grid:
    """The grid ITK and DICOM call identity-direction (NIfTI axcodes L, P, S), centred on centre_ras.

    i runs to the patient's left, j to posterior, k to superior: the project's canonical axial orientation.
    """
    shape = parse_shape(shape)
    spacing = np.asarray(spacing, dtype=float)
    matrix = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    half_extent = matrix[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    matrix[:3, 3] = np.asarray(centre_ras, dtype=float) - half_extent
    return Grid(shape, matrix)


def parse_shape(shape) -> tuple[int, int, int]:
    """(ni, nj, nk) from a sequence of three positive integers or a string like '64x64x40'."""
    given = shape
    if isinstance(shape, str):
        shape = shape.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape {given!r} is not three integers; write it like 64x64x40") from None
    if len(values) != 3 or min(values) < 4:
        raise InputError(f"shape {given!r} needs three sizes of at least 4 voxels, like 64x64x40")
    return values
