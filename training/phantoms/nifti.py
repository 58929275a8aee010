"""Writing and reading the phantoms' NIfTI files, byte for byte reproducibly.

nibabel (>= 5) writes .nii.gz through a gzip stream whose header carries mtime 0 and no file name, so the same
array and matrix always give the same bytes; the header's qform and sform both hold the scanner matrix (code 1)
and units are millimetres, so Slicer, ITK and nibabel read the same geometry.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np


def to_nifti(array_kji: np.ndarray, ijk_to_ras: np.ndarray, dtype) -> nib.Nifti1Image:
    dtype = np.dtype(dtype)
    data = array_kji.T  # (k, j, i) -> (i, j, k); a Fortran-ordered view, which nibabel writes without copying
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        data = np.clip(np.rint(data), limits.min, limits.max)
    image = nib.Nifti1Image(data.astype(dtype, copy=False), ijk_to_ras)
    image.header.set_data_dtype(dtype)
    image.header.set_qform(ijk_to_ras, code=1)
    image.header.set_sform(ijk_to_ras, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return image


def write_nifti(path, array_kji: np.ndarray, ijk_to_ras: np.ndarray, dtype) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_nifti(array_kji, ijk_to_ras, dtype).to_filename(str(path))
    return path


def read_nifti(path) -> tuple[np.ndarray, np.ndarray]:
    """(array in (k, j, i) order with the file's dtype, ijk-to-RAS matrix)."""
    image = nib.load(str(path))
    return np.ascontiguousarray(np.asanyarray(image.dataobj).T), image.affine


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
