"""Axial reorientation: permute and flip voxel axes so array[k] is an axial slice, whatever the storage order.

Models see slices in one canonical layout: i -> patient Left, j -> Posterior, k -> Superior (ITK/DICOM "LPS"
identity direction, nibabel axcodes L,P,S). Only axis permutations and flips are used (the closest axes for an
oblique scan), so the inverse restores the original voxels and geometry exactly: no interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from .volume import Volume

CANONICAL_AXCODES = ("L", "P", "S")


@dataclass(frozen=True)
class AxialReorientation:
    """How to go from a volume's stored voxel order to the canonical axial one and back."""

    to_axial: np.ndarray  # nibabel orientation transform on (i, j, k) arrays
    from_axial: np.ndarray
    original_shape: tuple[int, int, int]  # (k, j, i)
    original_ijk_to_ras: np.ndarray

    @classmethod
    def for_volume(cls, volume: Volume) -> "AxialReorientation":
        stored = io_orientation(volume.ijk_to_ras)
        canonical = axcodes2ornt(CANONICAL_AXCODES)
        return cls(ornt_transform(stored, canonical), ornt_transform(canonical, stored), volume.shape, volume.ijk_to_ras)

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.to_axial, [[0, 1], [1, 1], [2, 1]]))

    def apply(self, array_kji: np.ndarray) -> np.ndarray:
        """Stored (k, j, i) array -> canonical axial (k, j, i) array (a view where possible)."""
        return apply_orientation(array_kji.T, self.to_axial).T

    def invert(self, axial_kji: np.ndarray) -> np.ndarray:
        """Canonical axial array -> the stored voxel order; exact inverse of apply()."""
        return apply_orientation(axial_kji.T, self.from_axial).T

    def axial_ijk_to_ras(self) -> np.ndarray:
        """IJK-to-RAS of the reoriented array (for resampling or saving it)."""
        shape_ijk = self.original_shape[::-1]
        return self.original_ijk_to_ras @ inv_ornt_aff(self.to_axial, shape_ijk)

    def axial_volume(self, array_kji: np.ndarray) -> Volume:
        return Volume(np.ascontiguousarray(self.apply(array_kji)), self.axial_ijk_to_ras())
