"""Volume IO: NIfTI, NRRD, MetaImage and DICOM series with exact RAS geometry; bad files refused in one line."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import Volume, read_volume, write_volume, write_volumes

from conftest import axial_volume, rotation


@pytest.fixture
def oblique():
    base = axial_volume(shape=(6, 24, 20))
    return Volume(base.array, rotation(1, 12) @ base.ijk_to_ras)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, oblique, suffix):
    path = write_volume(oblique, tmp_path / f"v{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, oblique.array)
    np.testing.assert_allclose(back.ijk_to_ras, oblique.ijk_to_ras, atol=1e-5)


def test_itk_lps_geometry_is_converted_to_ras(tmp_path):
    image = sitk.GetImageFromArray(np.arange(5 * 20 * 18, dtype=np.int16).reshape(5, 20, 18))
    image.SetOrigin((10.0, 20.0, 30.0))  # LPS
    image.SetSpacing((0.5, 0.7, 3.0))
    sitk.WriteImage(image, str(tmp_path / "lps.nrrd"))
    volume = read_volume(tmp_path / "lps.nrrd")
    expected = np.diag([-0.5, -0.7, 3.0, 1.0])
    expected[:3, 3] = [-10.0, -20.0, 30.0]
    np.testing.assert_allclose(volume.ijk_to_ras, expected)
    assert volume.array.dtype == np.int16 and volume.array[1, 2, 3] == 1 * 360 + 2 * 18 + 3


def test_nifti_and_itk_readers_agree_on_the_same_file(tmp_path, oblique):
    write_volume(oblique, tmp_path / "v.nii.gz")
    itk = sitk.ReadImage(str(tmp_path / "v.nii.gz"))
    lps = np.array(itk.GetDirection()).reshape(3, 3) @ np.diag(itk.GetSpacing())
    np.testing.assert_allclose(np.diag([-1, -1, 1]) @ lps, read_volume(tmp_path / "v.nii.gz").ijk_to_ras[:3, :3], atol=1e-5)


def _write_dicom_series(volume: Volume, folder: Path) -> None:
    """A minimal CT-like DICOM series with sitk: one file per slice, geometry in the standard tags."""
    folder.mkdir()
    lps = np.diag([-1, -1, 1, 1]) @ volume.ijk_to_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.shape[0]):
        image = sitk.GetImageFromArray(volume.array[k:k + 1].astype(np.int16))
        position = lps[:3, 3] + lps[:3, 2] * k
        tags = {
            "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in direction[:, 0].tolist() + direction[:, 1].tolist()),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}", "0018|0050": f"{spacing[2]:.6f}",
            "0020|0013": str(k + 1), "0008|0018": f"1.2.826.0.1.3680043.2.1125.3.{k + 1}",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        image.SetSpacing((spacing[0], spacing[1], spacing[2]))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_reads_with_ras_geometry(tmp_path):
    volume = axial_volume(shape=(5, 20, 18), spacing=(0.8, 0.8, 2.0))
    volume = volume.with_array(np.round(volume.array * 100).astype(np.float32))
    _write_dicom_series(volume, tmp_path / "series")
    back = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(back.array.astype(np.float32), volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)


def test_four_d_with_one_component_is_squeezed(tmp_path, oblique):
    array_xyz1 = oblique.array.T[..., None]
    nib.save(nib.Nifti1Image(array_xyz1, oblique.ijk_to_ras), str(tmp_path / "v4.nii.gz"))
    back = read_volume(tmp_path / "v4.nii.gz")
    np.testing.assert_array_equal(back.array, oblique.array)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_header_extensions_of_any_length_are_read_past(tmp_path, oblique, suffix):
    # Label maps from other tools carry their class names in a NIfTI header extension, often kilobytes long.
    image = nib.Nifti1Image(oblique.array.T.copy(), oblique.ijk_to_ras)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b'{"1": "spleen"}' + b" " * 4000))
    nib.save(image, str(tmp_path / f"named{suffix}"))
    back = read_volume(tmp_path / f"named{suffix}")
    np.testing.assert_array_equal(back.array, oblique.array)
    np.testing.assert_allclose(back.ijk_to_ras, oblique.ijk_to_ras, atol=1e-5)


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = write_volume(axial_volume(shape=(6, 24, 20)), tmp_path / "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_gzip = tmp_path / "garbage.nii.gz"
    not_gzip.write_bytes(b"this is not an image")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20), np.float32), np.eye(4)), str(flat))
    four_d = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 6, 3), np.float32), np.eye(4)), str(four_d))
    thin = tmp_path / "thin.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(20, 20, 2).astype(np.float32), np.eye(4)), str(thin))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    empty_dir = tmp_path / "empty_dicom"
    empty_dir.mkdir()
    return {
        "missing": (tmp_path / "nope.nii.gz", "does not exist"),
        "truncated": (truncated, "truncated"),
        "garbage": (not_gzip, "not a NIfTI file"),
        "2d": (flat, "2D"),
        "4d": (four_d, "4D"),
        "too_few_slices": (thin, "too few slices"),
        "extension": (text, "unsupported extension"),
        "empty_dicom_dir": (empty_dir, "no DICOM series"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "garbage", "2d", "4d", "too_few_slices", "extension",
                                  "empty_dicom_dir"])
def test_bad_files_raise_one_line_input_errors(tmp_path, case):
    path, message = _bad_files(tmp_path)[case]
    with pytest.raises(InputError, match=message) as info:
        read_volume(path)
    assert "\n" not in str(info.value)


def test_group_write_is_all_or_nothing(tmp_path, oblique):
    outputs = {tmp_path / "a.nii.gz": (oblique, np.float32), tmp_path / "b.unsupported": (oblique, None)}
    with pytest.raises(InputError):
        write_volumes(outputs)
    assert list(tmp_path.iterdir()) == []


def test_label_dtype_is_kept(tmp_path, oblique):
    labels = oblique.with_array((oblique.array > 1).astype(np.uint8))
    write_volume(labels, tmp_path / "seg.nii.gz", dtype=np.uint8)
    assert nib.load(str(tmp_path / "seg.nii.gz")).get_data_dtype() == np.uint8
    with gzip.open(tmp_path / "seg.nii.gz") as handle:
        assert len(handle.read()) > 0


def test_outputs_get_ordinary_permissions(tmp_path, oblique):
    previous = os.umask(0o022)
    try:
        path = write_volume(oblique, tmp_path / "out.nii.gz")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_label_map_writes_as_seg_nrrd_only_with_its_segments_and_all_or_nothing(tmp_path, oblique):
    from MedDiffusionExtension.weights.card import Segment

    labels = oblique.with_array((oblique.array > 1).astype(np.uint8) * 6)
    with pytest.raises(InputError, match="only a label map with its segments can be a .seg.nrrd"):
        write_volumes({tmp_path / "image.nii.gz": (oblique, np.float32), tmp_path / "labels.seg.nrrd": (labels, np.uint8)})
    assert list(tmp_path.iterdir()) == []
    write_volumes({tmp_path / "image.nii.gz": (oblique, np.float32),
                   tmp_path / "labels.seg.nrrd": (labels, np.uint8, [Segment("liver", 6, (0.8, 0.5, 0.4))])})
    back = read_volume(tmp_path / "labels.seg.nrrd")
    np.testing.assert_array_equal(back.array, labels.array)
    np.testing.assert_allclose(back.ijk_to_ras, oblique.ijk_to_ras, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.nii.gz", "labels.seg.nrrd"]
