"""Volumes and the volume engine: IO, axial reorientation, resampling, normalization, slice batching."""

from .io import read_volume, write_volume, write_volumes
from .normalize import IntensityScaling, ct_window, fit_mri_scaling, scaling_from_card
from .orientation import AxialReorientation
from .resample import GridMismatchWarning, align_to_reference, resample_to_grid
from .volume import Volume, validate_volume

__all__ = [
    "Volume", "validate_volume", "read_volume", "write_volume", "write_volumes", "IntensityScaling", "ct_window",
    "fit_mri_scaling", "scaling_from_card", "AxialReorientation", "GridMismatchWarning", "align_to_reference",
    "resample_to_grid",
]
