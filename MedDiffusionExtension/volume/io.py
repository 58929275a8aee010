"""Reading and writing volumes: NIfTI (nibabel), NRRD/MetaImage (SimpleITK), DICOM series (SimpleITK); label maps
also as Slicer's segmentation file (.seg.nrrd, segmentation_file.py).

NIfTI affines are RAS already; ITK geometry is LPS, so x and y flip sign both ways. Headers are checked before any
voxel is read (dimensions, datatype, voxel size, orientation, declared size against the file and free memory), DICOM
series for completeness. Writes are atomic as a group: every output appears complete under its final name or none
does (see write_volumes).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .segmentation_file import is_segmentation_file, write_segmentation_file
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
        raise InputError(f"{path} is {array.ndim}D with shape {array.shape}; "
                         "extract one 3D volume (one time point/component) first")
    return array


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _raw_nifti_header(path: Path):
    """The header exactly as stored: nibabel's loader would silently 'fix' zero or negative pixdims (and log a raw
    line about it), so the checks below read it first, without checks of its own."""
    opener = gzip.open if _suffix(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read(540)
    except gzip.BadGzipFile:
        raise InputError(f"cannot read {path}: not a NIfTI file (not gzip-compressed); expected {SUPPORTED}") from None
    if len(raw) < 348:
        raise InputError(f"cannot read {path}: the file is truncated or not a valid NIfTI (header of {len(raw)} bytes); "
                         "re-export or re-download it")
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    klass, size = (nib.Nifti2Header, 540) if 540 in sizes else (nib.Nifti1Header, 348)
    if not sizes & {348, 540}:
        raise InputError(f"cannot read {path}: not a NIfTI file; expected {SUPPORTED}")
    if len(raw) < size:
        raise InputError(f"cannot read {path}: the file is truncated (a NIfTI-2 header of {len(raw)} bytes); "
                         "re-export or re-download it")
    # The header block alone: header extensions (label names, provenance; any length) follow it and are not needed.
    return klass(raw[:size], check=False)


def _check_nifti_header(path: Path) -> None:
    """Refuse headers that cannot describe a scan before any voxel is read (or any memory is allocated for them)."""
    header = _raw_nifti_header(path)
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7 or any(d < 1 for d in dim[1:dim[0] + 1]):
        raise InputError(f"{path} declares dimensions {dim[1:max(1, min(dim[0], 7)) + 1]}; every dimension must be at "
                         "least 1: the header is corrupt, re-export the file")
    code = int(header["datatype"])
    if code not in nib.nifti1.data_type_codes.code:
        raise InputError(f"{path} declares an unknown voxel datatype (code {code}); the header is corrupt, re-export the file")
    if nib.nifti1.data_type_codes.dtype[code].kind not in "biuf":
        raise InputError(f"{path} has {nib.nifti1.data_type_codes.label[code]} voxels; a scalar (grey-value) volume is "
                         "needed: convert it to one channel first")
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not (np.all(np.isfinite(pixdim)) and np.all(pixdim > 0)):
        raise InputError(f"{path} declares voxel size {pixdim.tolist()} mm (pixdim); sizes must be positive: fix its header "
                         "(a guessed 1 mm grid would put every output in the wrong place)")
    quaternion = np.array([header["quatern_b"], header["quatern_c"], header["quatern_d"]], dtype=np.float64)
    offsets = np.array([header["qoffset_x"], header["qoffset_y"], header["qoffset_z"]], dtype=np.float64)
    if int(header["qform_code"]) > 0 and (not np.all(np.isfinite(np.r_[quaternion, offsets]))
                                          or float(quaternion @ quaternion) > 1 + 1e-4):
        raise InputError(f"{path} has an invalid orientation quaternion {quaternion.tolist()}; fix its header")
    rows = np.array([header["srow_x"], header["srow_y"], header["srow_z"]], dtype=np.float64)
    if int(header["sform_code"]) > 0 and not np.all(np.isfinite(rows)):
        raise InputError(f"{path} has a non-finite orientation matrix (sform); fix its header")
    itemsize = nib.nifti1.data_type_codes.dtype[code].itemsize
    voxels = int(np.prod(dim[1:dim[0] + 1], dtype=object))
    needed = int(header["vox_offset"]) + voxels * itemsize
    if _suffix(path) == ".nii":
        stored = path.stat().st_size
    else:
        # gzip's trailer holds the uncompressed size modulo 4 GiB: exact for every file that fits under it.
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            stored = int.from_bytes(handle.read(4), "little") if needed < 1 << 32 else needed
    if stored < needed:
        raise InputError(f"cannot read {path}: its header declares {voxels} voxels ({needed:,} bytes) but the file holds "
                         f"{stored:,}; the file is truncated or its header is corrupt")
    available = _available_memory()
    if available is not None and voxels * max(itemsize, 4) > available:
        raise InputError(f"{path} declares {voxels:,} voxels, more than this machine's free memory holds "
                         f"({available / 2 ** 30:.1f} GiB); crop or downsample it first")


def _read_nifti(path: Path) -> Volume:
    try:
        _check_nifti_header(path)
        with nib.imageglobals.LoggingOutputSuppressor():
            image = nib.load(str(path))
            data = np.asanyarray(image.dataobj)
            affine = image.affine.astype(np.float64)
    except InputError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: the file is truncated or not a valid NIfTI ({type(exc).__name__}); "
                         "re-export or re-download it") from None
    except nib.filebasedimages.ImageFileError:
        raise InputError(f"cannot read {path}: not a NIfTI file; expected {SUPPORTED}") from None
    except MemoryError:
        raise InputError(f"{path} does not fit in this machine's free memory; crop or downsample it first") from None
    data = _squeeze_to_3d(data, path)
    array_kji = np.ascontiguousarray(data.T)
    return Volume(_as_voxel_type(array_kji), affine)


def _ijk_to_ras_from_itk(image: sitk.Image) -> np.ndarray:
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ matrix


def _read_itk(path: Path, image: sitk.Image | None = None) -> Volume:
    if image is None:
        try:
            with _quiet_itk():
                image = sitk.ReadImage(str(path))
        except MemoryError:
            raise InputError(f"{path} does not fit in this machine's free memory; crop or downsample it first") from None
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


# Slice positions may differ from an even grid by scanner rounding, never by a fraction of a slice.
SLICE_SPACING_TOLERANCE = 0.1


@contextmanager
def _quiet_itk():
    """ITK prints its warnings (e.g. 'Non uniform sampling') raw on stderr; what matters is checked and said here."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _slice_position(file: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(ImagePositionPatient, slice normal) of one DICOM file, None when it lacks them; InputError if unreadable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"cannot read the DICOM file {file}: truncated or corrupt; re-export the series") from None
    try:
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        cosines = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
    except (RuntimeError, ValueError):
        return None
    if position.shape != (3,) or cosines.shape != (6,):
        return None
    return position, np.cross(cosines[:3], cosines[3:])


def _check_series_spacing(folder: Path, files: list[str]) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing slice): ITK would assume an even grid."""
    located = [_slice_position(f) for f in files]
    if len(files) < 2 or any(item is None for item in located):
        return
    normal = located[0][1]
    depths = np.sort([float(position @ normal) for position, _ in located])
    gaps = np.diff(depths)
    typical = float(np.median(gaps))
    if typical <= 0 or np.any(gaps <= 0):
        raise InputError(f"the DICOM series in {folder} has several slices at the same position; "
                         "it mixes scans: export one series per folder")
    uneven = np.abs(gaps - typical) > SLICE_SPACING_TOLERANCE * typical
    if np.any(uneven):
        where = int(np.argmax(np.abs(gaps - typical)))
        raise InputError(f"the DICOM series in {folder} is not evenly spaced: a gap of {gaps[where]:.3g} mm between "
                         f"slices {typical:.3g} mm apart elsewhere (a slice is missing?); re-export the complete series")


def _dicom_series_files(folder: Path, series: str | None = None) -> list[str]:
    """The files of the one series to read, after checking it is complete and evenly spaced."""
    reader = sitk.ImageSeriesReader()
    with _quiet_itk():
        found = {uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in reader.GetGDCMSeriesIDs(str(folder))}
    if not found:
        raise InputError(f"{folder} holds no DICOM series; point to a folder of .dcm files of one scan")
    listed = "; ".join(f"{uid} ({len(files)} files)" for uid, files in found.items())
    if series:
        if series not in found:
            raise InputError(f"{folder} has no DICOM series {series}; it holds {listed}")
        files = found[series]
    elif len(found) > 1:
        raise InputError(f"{folder} holds {len(found)} DICOM series: {listed}; choose one with --series UID")
    else:
        files = next(iter(found.values()))
    # GDCM leaves out files it cannot parse: a truncated slice would vanish and stretch the geometry unnoticed.
    in_series = {os.path.realpath(f) for listed_files in found.values() for f in listed_files}
    for candidate in sorted(folder.iterdir()):
        if (candidate.is_file() and not candidate.name.startswith(".") and os.path.realpath(candidate) not in in_series
                and _looks_like_dicom(candidate)):
            _slice_position(str(candidate))
    _check_series_spacing(folder, files)
    return files


def _read_dicom_series(folder: Path, series: str | None = None) -> Volume:
    files = _dicom_series_files(folder, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError:
        raise InputError(f"cannot read the DICOM series in {folder}; some files may be missing or corrupt") from None
    return _read_itk(folder, image)


def _as_voxel_type(array: np.ndarray) -> np.ndarray:
    # Integer voxels (CT in HU, labels) stay integers until a pipeline decides; everything else becomes float32.
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return array
    return array.astype(np.float32, copy=False)


def read_volume(path: str | Path, series: str | None = None) -> Volume:
    """Read a 3D scalar volume; anything else raises InputError with a one-line reason.

    series: the SeriesInstanceUID to read when `path` is a DICOM folder holding several series (ignored otherwise).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    if path.is_dir():
        volume = _read_dicom_series(path, series)
    elif _suffix(path) in NIFTI_SUFFIXES:
        volume = _read_nifti(path)
    elif _suffix(path) in ITK_SUFFIXES or _suffix(path) == ".dcm":
        volume = _read_itk(path)
    else:
        raise InputError(f"{path.name} has an unsupported extension; expected {SUPPORTED}")
    if min(volume.shape) < MIN_SLICES or sorted(volume.shape)[1] < MIN_INPLANE:
        raise InputError(f"{path} has shape {volume.shape[::-1]} (i, j, k): too few slices or pixels for a 3D scan "
                         f"(need ≥{MIN_SLICES} slices of ≥{MIN_INPLANE}×{MIN_INPLANE})")
    matrix = volume.ijk_to_ras[:3, :3]
    if not np.all(np.isfinite(volume.ijk_to_ras)) or np.linalg.matrix_rank(matrix) < 3:
        raise InputError(f"{path} has a degenerate voxel-to-patient matrix (zero or non-finite spacing, or collinear "
                         "axes); fix its header")
    return volume


def check_input_header(path: str | Path, series: str | None = None) -> None:
    """The checks of read_volume that need no voxel: a missing file, an unknown extension, a NIfTI header that
    cannot describe a scan, an incomplete or ambiguous DICOM series. Cheap enough to run before a model is loaded."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    if path.is_dir():
        _dicom_series_files(path, series)
    elif _suffix(path) in NIFTI_SUFFIXES:
        try:
            _check_nifti_header(path)
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            raise InputError(f"cannot read {path}: the file is truncated or not a valid NIfTI ({type(exc).__name__}); "
                             "re-export or re-download it") from None
    elif _suffix(path) not in ITK_SUFFIXES + (".dcm",):
        raise InputError(f"{path.name} has an unsupported extension; expected {SUPPORTED}")


def _write_one(volume: Volume, path: Path, dtype, segments=None) -> None:
    array = volume.array if dtype is None else volume.array.astype(dtype)
    suffix = _suffix(path)
    if is_segmentation_file(path):
        if segments is None:
            raise InputError(f"cannot write {path.name}: only a label map with its segments can be a .seg.nrrd; "
                             "use .nrrd or .nii.gz")
        write_segmentation_file(volume.with_array(array), path, segments)
    elif suffix in NIFTI_SUFFIXES:
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


WRITABLE = ".nii.gz, .nii, .nrrd, .nhdr, .mha or .mhd (label maps also .seg.nrrd)"
LOCK_NAME = ".meddiffusion.lock"


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


def check_outputs_writable(paths, overwrite: bool = True) -> None:
    """Refuse, before any work, outputs that could not be written: an unknown extension, a folder where a file is
    meant (or a file where a folder is), a read-only location, or (without `overwrite`) a file that exists already."""
    for path in (Path(p).expanduser() for p in paths):
        if _suffix(path) not in NIFTI_SUFFIXES + ITK_SUFFIXES:
            raise InputError(f"cannot write {path.name}: unknown output extension; use {WRITABLE}")
        if path.is_dir():
            raise InputError(f"output {path} is a folder; give a file name such as {path / 'seg.nii.gz'}")
        ancestor = path.parent if path.parent.exists() else _existing_ancestor(path)
        if not ancestor.is_dir():
            raise InputError(f"cannot write {path}: {ancestor} is a file, not a folder; choose another output location")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {path}: {ancestor} is not writable (read-only or no permission); "
                             "choose another output location")
        if path.exists() and not overwrite:
            raise InputError(f"output {path} exists already; pass --overwrite to replace it, or choose another output")


@contextmanager
def output_lock(paths):
    """Hold a lock on every output folder (created if needed) so that two runs cannot interleave their outputs.

    A second run into a locked folder is refused at once. Folders created here and left empty are removed again,
    and the lock file goes with the lock: a failed or refused run leaves nothing behind.
    """
    created: list[Path] = []
    held: list[tuple[Path, int]] = []
    try:
        for folder in sorted({Path(p).expanduser().parent for p in paths}):
            missing = [folder, *folder.parents]
            missing = [f for f in missing if not f.exists()][::-1]
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InputError(f"cannot create the output folder {folder}: {error.strerror}") from None
            created.extend(missing)
            held.append((folder / LOCK_NAME, _lock(folder)))
        yield
    finally:
        for lock_path, handle in reversed(held):
            _unlock(lock_path, handle)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty: outputs were written there


def _lock(folder: Path) -> int:
    path = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs there are not guarded against one another
        return -1
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise InputError(f"cannot write into {folder}: {error.strerror}; choose another output location") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(handle)
            raise InputError(f"another meddiffusion run is writing into {folder}; wait for it to end or choose another "
                             "output location") from None
        try:
            # The previous holder unlinks the lock file when it is done: a lock on an unlinked file guards nothing.
            if os.fstat(handle).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass
        os.close(handle)


def _unlock(path: Path, handle: int) -> None:
    if handle < 0:
        return
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(handle)


def _write_error(target: Path, error: BaseException) -> InputError:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).strip().splitlines()[-1][:160]
    return InputError(f"cannot write {target}: {reason}; free space or choose another output location (nothing was written)")


def write_volumes(outputs: dict[str | Path, tuple], overwrite: bool = True) -> list[Path]:
    """Write several volumes all-or-nothing; outputs maps path -> (volume, dtype or None[, segments]): `segments`
    (a card's Segment list) describes a label map, and a .seg.nrrd path needs them.

    Every file, including the data file a .mhd/.nhdr header points to, is first written under its final name into
    a private folder next to its destination (same file system), then the whole group is moved into place. If any
    write or move fails, the files already moved are taken back (and any file they replaced is restored), so either
    every output appears complete or none does, and no temporary is left.
    """
    targets = {Path(t).expanduser(): value for t, value in outputs.items()}
    check_outputs_writable(targets, overwrite)
    staging: dict[Path, Path] = {}
    placed: list[tuple[Path, Path | None]] = []  # (destination, the previous file kept aside or None)
    try:
        for target, (volume, dtype, *segments) in targets.items():
            if target.parent not in staging:
                target.parent.mkdir(parents=True, exist_ok=True)
                staging[target.parent] = Path(tempfile.mkdtemp(prefix=".meddiffusion-", dir=target.parent))
            try:
                _write_one(volume, staging[target.parent] / target.name, dtype, *segments)
            except (OSError, RuntimeError) as error:
                raise _write_error(target, error) from None
        mode = 0o666 & ~_umask()
        for folder, stage in staging.items():
            kept = stage / ".previous"
            for staged in sorted(p for p in stage.iterdir() if p != kept):
                destination = folder / staged.name
                os.chmod(staged, mode)  # ordinary permissions, as any new file would get
                previous = None
                if destination.exists():
                    kept.mkdir(exist_ok=True)
                    previous = kept / staged.name
                    os.replace(destination, previous)
                placed.append((destination, previous))
                try:
                    os.replace(staged, destination)
                except OSError as error:
                    raise _write_error(destination, error) from None
    except BaseException:
        for destination, previous in reversed(placed):
            try:
                if previous is not None and previous.exists():
                    os.replace(previous, destination)
                elif previous is None:
                    destination.unlink(missing_ok=True)
            except OSError:
                pass  # best effort: the error being raised says what failed
        raise
    finally:
        for stage in staging.values():
            shutil.rmtree(stage, ignore_errors=True)
    return list(targets)


def write_volume(volume: Volume, path: str | Path, dtype=None) -> Path:
    return write_volumes({path: (volume, dtype)})[0]
