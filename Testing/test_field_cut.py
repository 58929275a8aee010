"""Cut-field stress sets (training/data/field_cut.py): part of the field removed on one side, geometry exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import axial_volume, restored

from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import AxialReorientation, read_volume
from MedDiffusionExtension.volume.resample import resample_to_grid
from training.data.field_cut import cut_dataset, cut_volume
from training.phantoms import write_btcv_dataset


def _patient_x(volume):
    """Patient RAS x (right-left) of every voxel centre, (k, j, i) as the array."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).reshape(-1, 4).T
    return (volume.ijk_to_ras @ ijk)[0].reshape(volume.shape)


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_cut_keeps_its_voxels_where_they_were_and_removes_the_patients_side(side):
    volume = axial_volume(shape=(5, 30, 40))
    for axes, flips in (((0, 1, 2), (False, False, False)), ((2, 1, 0), (True, False, True))):
        stored = restored(volume, axes, flips)
        cut = cut_volume(stored, side, 0.25)
        assert cut.shape == (5, 30, 30)  # a quarter of the 40 left-right columns removed
        back = resample_to_grid(cut, volume, order=0, fill=np.nan).array
        inside = ~np.isnan(back)
        np.testing.assert_array_equal(back[inside], volume.array[inside])  # same values at the same places
        x = _patient_x(volume)
        removed_x, kept_x = x[~inside], x[inside]
        # RAS x grows towards the patient's right: the removed quarter lies wholly on the cut side.
        assert (removed_x.max() < kept_x.min()) if side == "left" else (removed_x.min() > kept_x.max())


def test_a_dataset_is_cut_case_by_case_and_keeps_its_phantom_record(tmp_path):
    write_btcv_dataset(tmp_path / "src", 2, seed=0, shape=(40, 32, 6))
    written = cut_dataset(tmp_path / "src", tmp_path / "cut", "anterior", 0.5)
    assert len(written) == 4
    for number in ("0001", "0002"):
        image = read_volume(tmp_path / "cut" / "img" / f"img{number}.nii.gz")
        label = read_volume(tmp_path / "cut" / "label" / f"label{number}.nii.gz")
        assert image.same_grid(label)
        original = read_volume(tmp_path / "src" / "img" / f"img{number}.nii.gz")
        axial = AxialReorientation.for_volume(original).apply(original.array)
        assert image.shape == (axial.shape[0], axial.shape[1] // 2, axial.shape[2])
        np.testing.assert_array_equal(image.array, axial[:, axial.shape[1] // 2:])  # the posterior half
    assert json.loads((tmp_path / "cut" / "acquisitions.json").read_text()) == \
        json.loads((tmp_path / "src" / "acquisitions.json").read_text())
    with pytest.raises(InputError):  # never over an existing set
        cut_dataset(tmp_path / "src", tmp_path / "cut", "anterior", 0.5)


@pytest.mark.parametrize("side, fraction", [("up", 0.4), ("left", 0.0), ("left", 1.0)])
def test_a_bad_side_or_fraction_is_refused(side, fraction):
    with pytest.raises(InputError):
        cut_volume(axial_volume(), side, fraction)
