"""Real CTs with TotalSegmentator references into the BTCV layout (training/data/totalsegmentator.py)."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import axial_volume, restored

from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import AxialReorientation, Volume, read_volume, write_volume
from training.data.layouts import read_btcv
from training.data.totalsegmentator import (
    BTCV_FROM_TOTALSEGMENTATOR, TOTALSEGMENTATOR_NUMBERS, LabelledCT, import_cases,
)

BTCV_NAMES = {1: "spleen", 2: "right_kidney", 6: "liver", 8: "aorta", 13: "left_adrenal"}


def _ct_and_reference(seed=0):
    """A CT and its reference in TotalSegmentator numbering: blocks of liver (5), a right kidney cyst (24),
    the aorta (52), the left adrenal (13 in BTCV: TotalSegmentator 9), and the heart (51, not a BTCV organ)."""
    ct = axial_volume(shape=(8, 40, 36), seed=seed)
    labels = np.zeros(ct.shape, dtype=np.uint8)
    labels[1:7, 4:20, 4:18] = 5
    labels[2:5, 24:30, 4:10] = 24
    labels[:, 30:36, 20:26] = 52
    labels[3:5, 10:14, 26:30] = 9
    labels[6:, 2:8, 28:34] = 51
    expected = np.select([labels == 5, labels == 24, labels == 52, labels == 9], [6, 2, 8, 13], 0).astype(np.uint8)
    return ct, ct.with_array(labels), expected


def test_a_label_map_is_renumbered_and_read_back_as_a_btcv_case(tmp_path):
    ct, reference, expected = _ct_and_reference()
    write_volume(ct, tmp_path / "ct.nii.gz")
    write_volume(reference, tmp_path / "seg.nii.gz", np.uint8)
    import_cases([LabelledCT(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz")], tmp_path / "out")
    case, = read_btcv(tmp_path / "out")
    labels = read_volume(case.paths["label"])
    assert np.array_equal(labels.array, expected)  # kidney cyst as its kidney, the heart as background
    assert labels.same_grid(ct)
    np.testing.assert_allclose(read_volume(case.paths["image"]).array, np.rint(ct.array), atol=0.5)


def test_a_reference_stored_in_another_order_lands_on_the_ct_grid(tmp_path):
    ct, reference, expected = _ct_and_reference(seed=1)
    write_volume(ct, tmp_path / "ct.nii.gz")
    # The reference stored sagittally and flipped, as another tool may write it: the same voxels in patient space.
    write_volume(restored(reference, (2, 1, 0), (True, False, True)), tmp_path / "seg.nii.gz", np.uint8)
    import_cases([LabelledCT(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz")], tmp_path / "out")
    labels = read_volume(tmp_path / "out" / "label" / "label0001.nii.gz")
    assert np.array_equal(AxialReorientation.for_volume(labels).apply(labels.array), expected)


def test_a_folder_of_per_structure_masks_is_combined(tmp_path):
    ct, reference, expected = _ct_and_reference(seed=2)
    write_volume(ct, tmp_path / "ct.nii.gz")
    masks = tmp_path / "segmentations"
    number_to_name = {number: name for name, number in TOTALSEGMENTATOR_NUMBERS.items()}
    for number in (5, 24, 52, 9):
        write_volume(reference.with_array((reference.array == number).astype(np.uint8)),
                     masks / f"{number_to_name[number]}.nii.gz", np.uint8)
    write_volume(reference.with_array((reference.array == 51).astype(np.uint8)), masks / "heart.nii.gz", np.uint8)
    import_cases([LabelledCT(tmp_path / "ct.nii.gz", masks)], tmp_path / "out", first_number=7)
    assert np.array_equal(read_volume(tmp_path / "out" / "label" / "label0007.nii.gz").array, expected)


def test_masks_on_different_grids_and_a_case_number_below_one_are_refused(tmp_path):
    ct, reference, _ = _ct_and_reference()
    write_volume(ct, tmp_path / "ct.nii.gz")
    masks = tmp_path / "segmentations"
    write_volume(reference.with_array((reference.array == 5).astype(np.uint8)), masks / "liver.nii.gz", np.uint8)
    shifted = Volume((reference.array == 52).astype(np.uint8), reference.ijk_to_ras + np.diag([0, 0, 0, 0]) +
                     np.pad(np.full((3, 1), 1.0), ((0, 1), (3, 0))))
    write_volume(shifted, masks / "aorta.nii.gz", np.uint8)
    with pytest.raises(InputError, match="not on the grid of the other masks"):
        import_cases([LabelledCT(tmp_path / "ct.nii.gz", masks)], tmp_path / "out")
    with pytest.raises(InputError, match="at least 1"):
        import_cases([LabelledCT(tmp_path / "ct.nii.gz", masks)], tmp_path / "out", first_number=0)
    assert not list(tmp_path.glob("out/**/*.nii.gz"))


def test_every_btcv_organ_has_its_totalsegmentator_numbers():
    assert sorted(BTCV_FROM_TOTALSEGMENTATOR) == list(range(1, 14))
    names = [name for group in BTCV_FROM_TOTALSEGMENTATOR.values() for name in group]
    assert sorted(names) == sorted(TOTALSEGMENTATOR_NUMBERS) and len(set(TOTALSEGMENTATOR_NUMBERS.values())) == 15


def test_a_label_map_with_its_label_table_is_read_by_name(tmp_path):
    # Another numbering (aorta 7, liver 5, the heart 51), named in the table TotalSegmentator writes into the header.
    ct, _, _ = _ct_and_reference()
    labels = np.zeros(ct.shape, dtype=np.uint8)
    labels[1:7, 4:20, 4:18], labels[:, 30:36, 20:26], labels[6:, 2:8, 28:34] = 5, 7, 51
    table = b"".join(b'<Label Key="%d" Red="1"><![CDATA[%s]]></Label>\n' % (key, name)
                     for key, name in ((5, b"liver"), (7, b"aorta"), (51, b"heart")))
    image = nib.Nifti1Image(labels.T.copy(), ct.ijk_to_ras)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, b"<CaretExtension><LabelTable>" + table +
                                                              b"</LabelTable></CaretExtension>"))
    nib.save(image, str(tmp_path / "seg.nii.gz"))
    write_volume(ct, tmp_path / "ct.nii.gz")
    import_cases([LabelledCT(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz")], tmp_path / "out")
    expected = np.select([labels == 5, labels == 7], [6, 8], 0)  # by v2's numbers 7 would have been the pancreas
    assert np.array_equal(read_volume(tmp_path / "out" / "label" / "label0001.nii.gz").array, expected)


@pytest.mark.parametrize("problem", ["not_totalsegmentator", "fractional", "no_organ", "elsewhere", "half_covered",
                                     "existing"])
def test_bad_pairs_are_refused_and_nothing_is_written(tmp_path, problem):
    ct, reference, _ = _ct_and_reference()
    write_volume(ct, tmp_path / "ct.nii.gz")
    write_volume(ct, tmp_path / "ct2.nii.gz")
    write_volume(reference, tmp_path / "good.nii.gz", np.uint8)
    bad = tmp_path / "bad.nii.gz"
    if problem == "not_totalsegmentator":
        write_volume(reference.with_array(reference.array.astype(np.int16) * 10), bad, np.int16)
    elif problem == "fractional":
        write_volume(reference.with_array(reference.array.astype(np.float32) + 0.5), bad, np.float32)
    elif problem == "half_covered":  # the reference of the CT's lower half only
        half = Volume(reference.array[:4].copy(), reference.ijk_to_ras)
        write_volume(half, bad, np.uint8)
    elif problem == "no_organ":
        write_volume(reference.with_array((reference.array == 51).astype(np.uint8) * 51), bad, np.uint8)
    elif problem == "elsewhere":  # the reference of another scan, 2 m away
        moved = reference.ijk_to_ras.copy()
        moved[:3, 3] += 2000.0
        nib.save(nib.Nifti1Image(reference.array.T.copy(), moved), str(bad))
    else:
        bad = tmp_path / "good.nii.gz"
        (tmp_path / "out" / "label").mkdir(parents=True)
        (tmp_path / "out" / "label" / "label0002.nii.gz").write_bytes(b"someone's file")
    cases = [LabelledCT(tmp_path / "ct.nii.gz", tmp_path / "good.nii.gz"), LabelledCT(tmp_path / "ct2.nii.gz", bad)]
    with pytest.raises(InputError) as info:
        import_cases(cases, tmp_path / "out")
    assert "\n" not in str(info.value)
    written = sorted(p.name for p in (tmp_path / "out").rglob("*.nii.gz")) if (tmp_path / "out").exists() else []
    assert written == (["label0002.nii.gz"] if problem == "existing" else [])
    if problem == "existing":
        assert (tmp_path / "out" / "label" / "label0002.nii.gz").read_bytes() == b"someone's file"


def test_the_command_writes_the_cases_and_names_their_labels(tmp_path):
    ct, reference, _ = _ct_and_reference()
    write_volume(ct, tmp_path / "ct.nii.gz")
    write_volume(reference, tmp_path / "seg.nii.gz", np.uint8)
    done = subprocess.run([sys.executable, "-m", "training", "import-totalsegmentator", "--case", str(tmp_path / "ct.nii.gz"),
                           str(tmp_path / "seg.nii.gz"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, check=True)
    assert "label0001.nii.gz: (36, 40, 8) voxels, BTCV labels 2, 6, 8, 13" in done.stdout
    assert "wrote 1 case(s)" in done.stdout
