"""The Volume: one contract for image data whether it came from a Slicer node, NIfTI, NRRD or DICOM.

array is float32 (or an integer label type) in (k, j, i) order, as Slicer's arrayFromVolume and SimpleITK give it;
ijk_to_ras maps voxel index (i, j, k, 1) to patient RAS millimetres, as Slicer's GetIJKToRASMatrix does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

# A volume needs enough axial slices and in-plane pixels to be a scan, not a 2D image or a thumbnail.
MIN_SLICES = 3
MIN_INPLANE = 16
GRID_ATOL_MM = 1e-3


@dataclass(frozen=True, eq=False)
class Volume:
    array: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self):
        matrix = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise InputError(f"IJK-to-RAS must be a 4x4 matrix, got shape {matrix.shape}")
        if np.asarray(self.array).ndim != 3:
            raise InputError(f"a volume must be 3D (k, j, i), got {np.asarray(self.array).ndim}D")
        object.__setattr__(self, "ijk_to_ras", matrix)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along (i, j, k)."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    def with_array(self, array: np.ndarray) -> "Volume":
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array, self.ijk_to_ras.copy())

    def same_grid(self, other: "Volume", atol: float = GRID_ATOL_MM) -> bool:
        return self.shape == other.shape and np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=atol, rtol=0)


def validate_volume(volume: Volume, label: str = "input") -> None:
    """Refuse volumes no model can sensibly run on, with a message that says what to do."""
    array = volume.array
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{label} has non-numeric voxels ({array.dtype}); convert it to a scalar volume")
    if min(array.shape) < 1:
        raise InputError(f"{label} is empty (shape {array.shape})")
    if np.linalg.matrix_rank(volume.ijk_to_ras[:3, :3]) < 3 or not np.all(np.isfinite(volume.ijk_to_ras)):
        raise InputError(f"{label} has a degenerate IJK-to-RAS matrix (zero spacing or collinear axes); fix its header")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{label} has {bad} NaN/Inf voxels; fill or mask them before running")
    if array.max() == array.min():
        raise InputError(f"{label} is constant (every voxel = {array.flat[0]}); check that the right file was loaded")
