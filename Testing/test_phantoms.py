"""Phantom generators: MR physics, radiological contrast, BraTS/BTCV/IXI layouts, anatomy, reproducibility."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from MedDiffusionExtension.errors import InputError
from training.phantoms import (BTCV_LABELS, brats_grid, generate_brain_case, mni_template, sample_file_names, simulate_brain,
                               simulate_ct, verify_samples, write_brats_case, write_btcv_dataset, write_ixi_case)
from training.phantoms.cli import main
from training.phantoms.ct_anatomy import draw_abdomen
from training.phantoms.fields import add_rician_noise
from training.phantoms.mr_signal import FLAIR, MPRAGE, TISSUES_3T, SpinEcho, null_inversion_time, with_gadolinium
from training.phantoms.nifti import read_nifti, sha256_of
from training.phantoms.samples import write_samples

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
SMALL_BRAIN = (96, 96, 62)  # 2.5 mm voxels over the BraTS field of view
SMALL_CT = (128, 128, 40)


@pytest.fixture(scope="module")
def brain():
    return simulate_brain(1, SMALL_BRAIN)


@pytest.fixture(scope="module")
def ct():
    return simulate_ct(2, SMALL_CT)


# --- MR physics -------------------------------------------------------------------------------------------------

def test_flair_inversion_time_nulls_csf_and_gadolinium_shortens_t1():
    csf = TISSUES_3T["csf"]
    ti = null_inversion_time(csf.t1_ms, 9000.0)
    assert 2300 < ti < 2600  # the usual 3 T FLAIR TI
    flair = FLAIR(tr_ms=9000.0, te_ms=110.0, ti_ms=ti)
    assert flair.signal(csf.t1_ms, csf.t2_ms, csf.pd) < 1e-9
    t1, t2 = with_gadolinium(1750.0, 125.0, 0.4)
    assert t1 == pytest.approx(1 / (1 / 1750 + 4.5 * 0.4 / 1000)) and t1 < 500 and t2 < 125
    mprage = MPRAGE()
    assert mprage.signal(t1, t2, 0.85) > 1.5 * mprage.signal(850.0, 75.0, 0.70)  # enhancing rim beats WM


def test_signal_equations_give_textbook_tissue_order():
    signal = {name: {seq: s.signal(t.t1_ms, t.t2_ms, t.pd) for seq, s in
                     (("t1", MPRAGE()), ("t2", SpinEcho()), ("flair", FLAIR()))} for name, t in TISSUES_3T.items()}
    assert signal["wm"]["t1"] > signal["gm"]["t1"] > 2 * signal["csf"]["t1"]
    assert signal["csf"]["t2"] > signal["gm"]["t2"] > signal["wm"]["t2"]
    assert signal["edema"]["flair"] > signal["gm"]["flair"] > signal["wm"]["flair"] > 5 * signal["csf"]["flair"]


def test_rician_noise_on_zero_signal_is_rayleigh():
    noise = add_rician_noise(np.zeros(200_000, np.float32), 10.0, np.random.default_rng(0))
    assert noise.min() >= 0
    assert noise.mean() == pytest.approx(10.0 * np.sqrt(np.pi / 2), rel=0.01)


# --- brain phantom ----------------------------------------------------------------------------------------------

def _region_means(phantom, purity=0.8):
    masks = {name: (phantom.tissues[name] > purity) & phantom.brain_mask for name in phantom.tissues}
    for name, mask in masks.items():
        assert mask.sum() >= 20, f"too few pure {name} voxels"
    return {seq: {name: float(image[mask].mean()) for name, mask in masks.items()}
            for seq, image in phantom.images.items()}


def test_brain_contrast_matches_what_a_radiologist_expects(brain):
    assert brain.info["tumour"]["necrotic"]
    m = _region_means(brain)
    t1n, t1c, t2w, t2f = m["t1n"], m["t1c"], m["t2w"], m["t2f"]
    # CSF dark on T1, bright on T2, suppressed on FLAIR; WM brighter than GM on T1 and darker on T2.
    assert t1n["wm"] > t1n["gm"] > t1n["csf"]
    assert t2w["csf"] > t2w["gm"] > t2w["wm"]
    assert t2f["csf"] < 0.5 * t2f["wm"] and t2f["csf"] < 0.5 * t2f["gm"]
    # Oedema bright on T2 and FLAIR.
    assert t2w["edema"] > t2w["gm"] and t2f["edema"] > 1.2 * t2f["gm"] and t2f["edema"] > 1.2 * t2f["wm"]
    # The enhancing rim is bright on T1c only.
    assert t1c["enhancing"] > 1.3 * t1c["wm"]
    assert t1n["enhancing"] < t1n["wm"]
    assert t1c["enhancing"] > 1.8 * t1n["enhancing"] * (t1c["wm"] / t1n["wm"])
    # Necrosis dark on T1 and T1c, bright on T2.
    for t1 in (t1n, t1c):
        assert t1["necrosis"] < t1["gm"] and t1["necrosis"] < t1["enhancing"]
    assert t2w["necrosis"] > t2w["gm"] and t2w["necrosis"] > t2w["enhancing"]


def test_brain_labels_follow_brats_and_background_is_zero(brain):
    assert set(np.unique(brain.seg)) == {0, 1, 2, 3}
    assert not (brain.seg[~brain.brain_mask] > 0).any()
    for name, image in brain.images.items():
        assert image.dtype == np.float32 and image.shape == SMALL_BRAIN[::-1]
        assert (image[~brain.brain_mask] == 0).all() and image.min() >= 0
        assert np.array_equal(image, np.rint(image)) and image.max() < 32767
    # Labels sit where their tissue is: necrosis inside enhancing tumour, oedema outside the core.
    core = np.isin(brain.seg, (1, 3))
    assert brain.tissues["necrosis"][brain.seg == 1].mean() > 0.5
    assert brain.tissues["enhancing"][brain.seg == 3].mean() > 0.4
    assert brain.tissues["edema"][brain.seg == 2].mean() > 0.3
    # The enhancing rim separates necrosis from oedema almost everywhere.
    necrosis_next_to_edema = ndimage.binary_dilation(brain.seg == 2) & (brain.seg == 1)
    assert necrosis_next_to_edema.sum() < 0.1 * (brain.seg == 1).sum()
    assert core.sum() < (brain.seg > 0).sum() and 0.005 < (brain.seg > 0).sum() / brain.brain_mask.sum() < 0.5


def test_brain_is_deterministic_and_grid_independent(brain):
    again = simulate_brain(1, SMALL_BRAIN)
    for name in brain.images:
        assert np.array_equal(brain.images[name], again.images[name])
    assert np.array_equal(brain.seg, again.seg)
    coarse = simulate_brain(1, (48, 48, 31))
    assert coarse.info["tumour"] == brain.info["tumour"]  # same patient, sampled on another grid
    assert coarse.info["protocol"] == brain.info["protocol"]
    assert simulate_brain(2, (48, 48, 31)).info["tumour"] != coarse.info["tumour"]
    # The tumour lies at the same place in patient space on both grids.
    centres = []
    for phantom in (brain, coarse):
        kji = np.argwhere(phantom.seg > 0).mean(axis=0)
        centres.append((phantom.ijk_to_ras @ np.r_[kji[::-1], 1.0])[:3])
    assert np.linalg.norm(centres[0] - centres[1]) < 4.0


def test_brats_grid_matches_brats_files():
    grid = brats_grid()
    assert grid.shape == (240, 240, 155)
    assert np.allclose(grid.ijk_to_ras, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]])
    small = brats_grid((64, 64, 40))
    corners = [small.ijk_to_ras @ np.r_[c, 1.0] for c in ([0, 0, 0], [63, 63, 39])]
    centre = (corners[0] + corners[1])[:3] / 2
    assert np.allclose(centre, [-119.5, 119.5, 77.0]) and np.allclose(small.spacing, (3.75, 3.75, 3.875))


def test_generate_brain_case_returns_volume_pairs():
    case = generate_brain_case(3, (40, 40, 26))
    assert set(case) == {"t1n", "t1c", "t2w", "t2f", "seg"}
    for name, (array, matrix) in case.items():
        assert array.shape == (26, 40, 40) and matrix.shape == (4, 4)
        assert nib.aff2axcodes(matrix) == ("L", "P", "S")
    assert case["seg"][0].dtype == np.uint8


def test_write_brats_case_layout_is_readable_and_byte_reproducible(tmp_path):
    first = write_brats_case(tmp_path / "a", 12, seed=5, shape=(40, 40, 26))
    second = write_brats_case(tmp_path / "b", 12, seed=5, shape=(40, 40, 26))
    folder = tmp_path / "a" / "BraTS-GLI-00012-000"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"BraTS-GLI-00012-000-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f", "seg"))
    for key in first:
        assert sha256_of(first[key]) == sha256_of(second[key])
    image = nib.load(str(first["t1c"]))
    assert image.get_data_dtype() == np.int16 and image.shape == (40, 40, 26)
    assert nib.load(str(first["seg"])).get_data_dtype() == np.uint8
    array, matrix = read_nifti(first["t1c"])
    expected = simulate_brain(5, (40, 40, 26))
    assert np.array_equal(array, expected.images["t1c"]) and np.allclose(matrix, expected.ijk_to_ras)
    from training.data.layouts import read_brats
    assert [c.case_id for c in read_brats(tmp_path / "a")] == ["BraTS-GLI-00012-000"]


def test_missing_nilearn_is_a_one_line_input_error(monkeypatch):
    monkeypatch.setattr(mni_template.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install nilearn"):
        mni_template.template_folder()


# --- IXI pairs --------------------------------------------------------------------------------------------------

def test_ixi_pair_is_one_healthy_subject_on_two_grids(tmp_path):
    paths = write_ixi_case(tmp_path, 2, seed=11, scale=0.25)
    names = {key: path.name for key, path in paths.items()}
    assert re.fullmatch(r"IXI002-HH-\d{4}-T1\.nii\.gz", names["t1n"])
    assert names["t2w"] == names["t1n"][:-9] + "T2.nii.gz"
    t1, t1_matrix = read_nifti(paths["t1n"])
    t2, t2_matrix = read_nifti(paths["t2w"])
    assert nib.aff2axcodes(t1_matrix) == ("P", "S", "R") and nib.aff2axcodes(t2_matrix) == ("L", "P", "S")
    k, j, i = np.indices(t2.shape)
    ijk = np.linalg.solve(t1_matrix, t2_matrix @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)]))[:3]
    t1_on_t2 = ndimage.map_coordinates((t1 > 0).T.astype(np.float32), ijk, order=0).reshape(t2.shape) > 0
    dice = 2 * (t1_on_t2 & (t2 > 0)).sum() / (t1_on_t2.sum() + (t2 > 0).sum())
    assert dice > 0.9
    from training.data.layouts import read_ixi
    assert [c.case_id for c in read_ixi(tmp_path)] == [names["t1n"][:-10]]


# --- abdominal CT -----------------------------------------------------------------------------------------------

def _centroid_ras(phantom, mask):
    kji = np.argwhere(mask).mean(axis=0)
    return (phantom.ijk_to_ras @ np.r_[kji[::-1], 1.0])[:3]


def test_ct_labels_are_btcv_and_anatomy_is_plausible(ct):
    present = set(np.unique(ct.label)) - {0}
    assert present == set(BTCV_LABELS.values())
    where = {name: _centroid_ras(ct, ct.label == value) for name, value in BTCV_LABELS.items()}
    # RAS: +x is the patient's right, +y anterior, +z superior.
    assert where["liver"][0] > 30 and where["spleen"][0] < -30 and where["gallbladder"][0] > 0
    assert where["right_kidney"][0] > 30 and where["left_kidney"][0] < -30
    assert where["right_kidney"][2] < where["left_kidney"][2]  # the liver pushes the right kidney down
    assert where["aorta"][0] < where["ivc"][0] and where["stomach"][0] < 0
    assert where["right_adrenal"][2] > where["right_kidney"][2] and where["left_adrenal"][2] > where["left_kidney"][2]
    spine = draw_abdomen(2).spine
    assert where["aorta"][1] > spine.front and where["pancreas"][1] > where["aorta"][1]
    # Organs of sensible size (mL) for an adult.
    voxel_ml = np.prod(ct.info["spacing_mm"]) / 1000
    volume = {name: (ct.label == value).sum() * voxel_ml for name, value in BTCV_LABELS.items()}
    assert 900 < volume["liver"] < 2500 and 80 < volume["spleen"] < 450
    assert 80 < volume["right_kidney"] < 300 and 80 < volume["left_kidney"] < 300
    assert 10 < volume["gallbladder"] < 90


def test_ct_hounsfield_units_are_realistic(ct):
    image, label = ct.image, ct.label
    assert np.array_equal(image, np.rint(image)) and image.min() >= -1024 and image.max() <= 3071
    median = {name: float(np.median(image[label == value])) for name, value in BTCV_LABELS.items()}
    assert 45 < median["liver"] < 125 and 35 < median["spleen"] < 135 and median["gallbladder"] < 30
    assert 30 < median["aorta"] < 220 and median["right_kidney"] > 20 and median["left_kidney"] > 20
    corner = image[:, :6, image.shape[2] // 2]  # in front of the patient, inside the scan circle
    assert abs(float(np.median(corner)) + 1000) < 10
    assert image.max() > 500  # cortical bone
    assert (image < -900).sum() > (image < -1023).sum()  # bowel and stomach gas besides the outside air
    stomach = image[label == BTCV_LABELS["stomach"]]
    assert (stomach < -500).mean() > 0.02  # gas in the stomach
    fat = image[(image > -150) & (image < -60)]
    assert fat.size > 0.05 * (image > -500).sum()  # subcutaneous and visceral fat


def test_ct_is_deterministic_and_btcv_files_are_readable(tmp_path, ct):
    assert np.array_equal(simulate_ct(2, SMALL_CT).image, ct.image)
    cases = write_btcv_dataset(tmp_path, 1, seed=4, shape=(64, 64, 20))
    assert cases[0]["image"] == tmp_path / "img" / "img0001.nii.gz"
    assert cases[0]["label"] == tmp_path / "label" / "label0001.nii.gz"
    image = nib.load(str(cases[0]["image"]))
    assert image.get_data_dtype() == np.int16 and image.shape == (64, 64, 20)
    assert nib.load(str(cases[0]["label"])).get_data_dtype() == np.uint8
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    from training.data.layouts import read_btcv
    assert [c.case_id for c in read_btcv(tmp_path)] == ["0001"]



def test_cases_written_in_parallel_are_the_files_written_one_at_a_time(tmp_path):
    options = dict(seed=3, shape=(48, 48, 8), acquisition="train", oral_contrast_share=0.5)
    write_btcv_dataset(tmp_path / "serial", 3, **options)
    write_btcv_dataset(tmp_path / "parallel", 3, workers=3, **options)
    serial = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*") if p.is_file())
    assert len(serial) == 7  # 3 images, 3 label maps, acquisitions.json
    for name in serial:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes(), name

# --- sample data and command line -------------------------------------------------------------------------------

def test_bundled_samples_match_their_checksums():
    assert sorted(p.name for p in SAMPLE_DATA.glob("*.nii.gz")) == sorted(sample_file_names())
    assert verify_samples(SAMPLE_DATA) == []
    total_mb = sum(p.stat().st_size for p in SAMPLE_DATA.glob("*.nii.gz")) / 1e6
    assert total_mb < 12


def test_samples_command_reproduces_the_bundled_files(tmp_path):
    digests = write_samples(tmp_path)
    for name in sample_file_names():
        if digests[name] == sha256_of(SAMPLE_DATA / name):
            continue
        # Another platform's floating point may flip a rounding: then the content must still agree.
        ours, theirs = (read_nifti(folder / name) for folder in (tmp_path, SAMPLE_DATA))
        assert np.allclose(ours[1], theirs[1])
        differs = ours[0].astype(np.int32) != theirs[0].astype(np.int32)
        assert differs.mean() < 1e-3 and np.abs(ours[0].astype(np.int32) - theirs[0])[differs].max() <= 1


def test_cli_writes_datasets_and_reports_bad_input(tmp_path, capsys):
    assert main(["btcv", "--out", str(tmp_path), "--n", "2", "--seed", "1", "--shape", "48x48x16"]) == 0
    assert sorted(p.name for p in (tmp_path / "label").iterdir()) == ["label0001.nii.gz", "label0002.nii.gz"]
    capsys.readouterr()
    assert main(["brats", "--out", str(tmp_path), "--shape", "3x3"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: shape") and "64x64x40" in error and "Traceback" not in error
