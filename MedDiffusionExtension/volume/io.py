"""Reading and writing volumes: NIfTI (nibabel), NRRD/MetaImage (SimpleITK), DICOM series (SimpleITK).

NIfTI affines are RAS already; ITK geometry is LPS, so x and y flip sign both ways. Writes are atomic: a file appears
complete under its final name or not at all, and a group of outputs is only renamed into place once all exist.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .volume import MIN_INPLANE, MIN_SLICES, Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM series folder"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _squeeze_to_3d(array: np.ndarray, path: Path) -> np.ndarray:
    """Drop trailing singleton dimensions (a 4D volume with one component); refuse 2D and true 4D+."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim < 3:
        raise InputError(f"{path} is a {array.ndim}D image; a 3D volume is needed")
    if array.ndim > 3:
        raise InputError(f"{path} is {array.ndim}D with shape {array.shape}; extract one 3D volume (one time point/component) first")
    return array


def _read_nifti(path: Path) -> Volume:
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: the file is truncated or not a valid NIfTI ({type(exc).__name__}); re-export or re-download it") from None
    except nib.filebasedimages.ImageFileError:
        raise InputError(f"cannot read {path}: not a NIfTI file; expected {SUPPORTED}") from None
    data = _squeeze_to_3d(data, path)
    array_kji = np.ascontiguousarray(data.T)
    return Volume(_as_voxel_type(array_kji), image.affine.astype(np.float64))


def _ijk_to_ras_from_itk(image: sitk.Image) -> np.ndarray:
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ matrix


def _read_itk(path: Path, image: sitk.Image | None = None) -> Volume:
    if image is None:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1][:120] if str(exc).strip() else "unreadable"
            raise InputError(f"cannot read {path} ({reason}); expected {SUPPORTED}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed")
    if image.GetDimension() == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise InputError(f"{path} is 4D with {size[3]} time points; extract one 3D volume first")
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}D image; a 3D volume is needed")
    array_kji = sitk.GetArrayFromImage(image)
    return Volume(_as_voxel_type(array_kji), _ijk_to_ras_from_itk(image))


def _read_dicom_series(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder} holds no DICOM series; point to a folder of .dcm files of one scan")
    # The series with the most files is the scan; localizers and derived series are small.
    files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError:
        raise InputError(f"cannot read the DICOM series in {folder}; some files may be missing or corrupt") from None
    return _read_itk(folder, image)


def _as_voxel_type(array: np.ndarray) -> np.ndarray:
    # Integer voxels (CT in HU, labels) stay integers until a pipeline decides; everything else becomes float32.
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return array
    return array.astype(np.float32, copy=False)


def read_volume(path: str | Path) -> Volume:
    """Read a 3D scalar volume; anything else raises InputError with a one-line reason."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    if path.is_dir():
        volume = _read_dicom_series(path)
    elif _suffix(path) in NIFTI_SUFFIXES:
        volume = _read_nifti(path)
    elif _suffix(path) in ITK_SUFFIXES or _suffix(path) == ".dcm":
        volume = _read_itk(path)
    else:
        raise InputError(f"{path.name} has an unsupported extension; expected {SUPPORTED}")
    if min(volume.shape) < MIN_SLICES or sorted(volume.shape)[1] < MIN_INPLANE:
        raise InputError(f"{path} has shape {volume.shape[::-1]} (i, j, k): too few slices or pixels for a 3D scan (need ≥{MIN_SLICES} slices of ≥{MIN_INPLANE}×{MIN_INPLANE})")
    return volume


def _write_one(volume: Volume, path: Path, dtype) -> None:
    array = volume.array if dtype is None else volume.array.astype(dtype)
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        image = nib.Nifti1Image(np.ascontiguousarray(array.T), volume.ijk_to_ras)
        image.set_qform(volume.ijk_to_ras, code=1)
        image.set_sform(volume.ijk_to_ras, code=1)
        nib.save(image, str(path))
    elif suffix in ITK_SUFFIXES:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        lps = LPS_TO_RAS @ volume.ijk_to_ras
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        image.SetSpacing(spacing.tolist())
        image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
        image.SetOrigin(lps[:3, 3].tolist())
        sitk.WriteImage(image, str(path), useCompression=True)
    else:
        raise InputError(f"cannot write {path.name}: use .nii.gz, .nii, .nrrd or .mha")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_volumes(outputs: dict[str | Path, tuple[Volume, object]]) -> list[Path]:
    """Write several volumes all-or-nothing: each to a hidden temporary name first, then all renamed into place.

    outputs maps path -> (volume, dtype or None). If any write fails, no output (and no temporary) is left behind.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, (volume, dtype) in outputs.items():
            target = Path(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_suffix(target), dir=target.parent)
            os.close(handle)
            staged.append((Path(tmp_name), target))
            _write_one(volume, Path(tmp_name), dtype)
            # mkstemp makes private 0600 files; outputs get the permissions any new file would get.
            os.chmod(tmp_name, 0o666 & ~_umask())
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return [target for _, target in staged]


def write_volume(volume: Volume, path: str | Path, dtype=None) -> Path:
    return write_volumes({path: (volume, dtype)})[0]
