"""Acquisition profiles of the phantoms: `fixed` reproduces the original generator, `train` draws vary within their
documented ranges, `shifted` stays outside them where documented, and labels, table, arms and truncation follow
the drawn acquisition."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage

from training.phantoms import simulate_brain, simulate_ct, write_brats_dataset, write_btcv_dataset
from training.phantoms.acquisition import (CT_ANATOMY, CT_COMMON_HU, CT_DISJOINT_TISSUES, CT_PHASE_HU, CT_PROFILES,
                                           CT_SHIFTED_HU, MR_DISJOINT, MR_PROFILES, Arms, draw_mr_acquisition)
from training.phantoms.brain import BRATS_CENTRE_RAS
from training.phantoms.cli import main
from training.phantoms.ct import BTCV_LABELS, acquired_subject
from training.phantoms.geometry import Grid
from training.phantoms.nifti import sha256_of

SMALL_CT = (96, 96, 32)
SMALL_BRAIN = (96, 96, 62)


def _digest(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


# --- fixed: the generator before profiles existed, bit for bit --------------------------------------------------

# Computed with the generator as it was before acquisition profiles were added (same platform caveat as
# Resources/SampleData/SHA256SUMS: another platform's floating point may flip a rounding).
BEFORE = {
    "ct2": ("64ccb3604ec0475e", "201f9879620411eb"),  # simulate_ct(2, (64, 64, 40)): image, label
    "ct3": ("47f619fa851a80c2", "329f9e7c1c7330a6"),  # simulate_ct(3, (64, 64, 20), spacing=(3, 3, 5))
    "brain1": ("78730bc6d5283856", "d863d1fea3d09cb7", "d50c522a82e32fef"),  # (48, 48, 31): t1n, t2f, seg
    "btcv": {"img0001.nii.gz": "11e044ffd7d33fff", "label0001.nii.gz": "570928d614221724",
             "img0002.nii.gz": "8d74982c9738aa6e", "label0002.nii.gz": "9fe3d0e9f26d26f0"},
    "brats": {"BraTS-GLI-00000-000-t1n.nii.gz": "1ed440e345d67c3b", "BraTS-GLI-00000-000-seg.nii.gz":
              "a1a25c690f7db50e", "BraTS-GLI-00001-000-t2f.nii.gz": "3048ac0c6821f300"},
}


def test_fixed_profile_reproduces_the_generator_before_profiles(tmp_path):
    ct = simulate_ct(2, (64, 64, 40), acquisition="fixed")
    assert (_digest(ct.image), _digest(ct.label)) == BEFORE["ct2"]
    assert ct.info == {"seed": 2, "shape": [64, 64, 40], "spacing_mm": [6.4, 6.4, 6.25], "enhancement": 0.719,
                       "noise_hu": 12.95}
    ct = simulate_ct(3, (64, 64, 20), spacing=(3.0, 3.0, 5.0))
    assert (_digest(ct.image), _digest(ct.label)) == BEFORE["ct3"]
    brain = simulate_brain(1, (48, 48, 31), acquisition="fixed")
    assert (_digest(brain.images["t1n"]), _digest(brain.images["t2f"]), _digest(brain.seg)) == BEFORE["brain1"]
    cases = write_btcv_dataset(tmp_path / "ct", 2, seed=0, shape=(48, 48, 16))
    assert {p.name: sha256_of(p)[:16] for c in cases for p in c.values()} == BEFORE["btcv"]
    cases = write_brats_dataset(tmp_path / "mr", 2, seed=0, shape=(40, 40, 24))
    written = {p.name: sha256_of(p)[:16] for c in cases for p in c.values()}
    assert {name: written[name] for name in BEFORE["brats"]} == BEFORE["brats"]
    record = json.loads((tmp_path / "ct" / "acquisitions.json").read_text(encoding="utf-8"))["cases"]["0001"]
    assert record["acquisition"] == {"profile": "fixed"} and record["shape"] == [48, 48, 16]


# --- determinism and the drawn distributions ---------------------------------------------------------------------

def test_profiles_are_deterministic_per_seed_and_keep_the_patient():
    for profile in ("train", "shifted"):
        first, again = (simulate_ct(5, (64, 64, 20), acquisition=profile) for _ in range(2))
        assert np.array_equal(first.image, again.image) and np.array_equal(first.label, again.label)
        assert first.info == again.info
    first, again = (simulate_brain(4, (40, 40, 26), acquisition="train") for _ in range(2))
    assert all(np.array_equal(first.images[k], again.images[k]) for k in first.images)
    assert first.info == again.info
    # Same seed, same patient: the tumour does not depend on the profile (only its height follows the coverage).
    fixed = simulate_brain(4, (40, 40, 26))
    assert fixed.info["tumour"]["core_radii_mm"] == first.info["tumour"]["core_radii_mm"]
    assert fixed.info["tumour"]["centre_ras_mm"][:2] == first.info["tumour"]["centre_ras_mm"][:2]
    train, shifted = acquired_subject(7, "train")[1], acquired_subject(7, "shifted")[1]
    assert train.anatomy == shifted.anatomy


def _inside(value, interval, slack=1e-6):
    return interval[0] - slack <= value <= interval[1] + slack


def _ct_draws(profile, n=40):
    return [acquired_subject(seed, profile)[1] for seed in range(n)]


def test_ct_train_draws_vary_and_stay_in_their_ranges():
    draws = _ct_draws("train")
    p = CT_PROFILES["train"]
    assert {a.phase for a in draws} == set(CT_PHASE_HU)
    assert {a.table for a in draws} == {True, False} and {a.arms is None for a in draws} == {True, False}
    for a in draws:
        ranges = {**CT_COMMON_HU, **CT_PHASE_HU[a.phase]}
        assert set(a.hu) == set(ranges) and all(_inside(a.hu[k], ranges[k]) for k in ranges)
        for key in ("noise_hu", "psf_fwhm_mm", "noise_corr_mm", "thickness_mm"):
            assert _inside(getattr(a, key), p[key]), key
        assert a.matrix == 512 and _inside(a.pixel_mm, (0.6, 1.0)) and _inside(a.fov_mm, (307.2, 500.0))
        assert 4 <= a.n_slices <= p["max_slices"]
        assert _inside(a.shift_mm[0], p["shift_x_mm"]) and _inside(a.shift_mm[1], p["shift_y_mm"])
        assert _inside(a.anatomy.body_scale, CT_ANATOMY["body_scale"])
        grid = a.grid()
        assert grid.shape == (512, 512, a.n_slices)
        assert np.allclose(grid.spacing, (a.pixel_mm, a.pixel_mm, a.thickness_mm))
    for key in ("noise_hu", "psf_fwhm_mm", "pixel_mm", "thickness_mm"):
        assert np.std([getattr(a, key) for a in draws]) > 0.1 * (p.get(key, (0.6, 1.0))[1] - p.get(key, (0.6, 1.0))[0])
    assert len({round(a.hu["liver"], 3) for a in draws}) == len(draws)


def test_ct_shifted_draws_lie_outside_the_train_ranges_where_documented():
    train, shifted = CT_PROFILES["train"], CT_PROFILES["shifted"]
    train_hu = {k: (min(CT_PHASE_HU[ph][k][0] for ph in CT_PHASE_HU), max(CT_PHASE_HU[ph][k][1] for ph in CT_PHASE_HU))
                for k in CT_DISJOINT_TISSUES}
    for a in _ct_draws("shifted"):
        assert a.phase in CT_SHIFTED_HU and a.table and a.arms is not None
        for tissue in CT_DISJOINT_TISSUES:
            assert not _inside(a.hu[tissue], train_hu[tissue]), tissue
        for key in ("noise_hu", "psf_fwhm_mm", "noise_corr_mm", "thickness_mm"):
            assert _inside(getattr(a, key), shifted[key]) and not _inside(getattr(a, key), train[key]), key
        assert _inside(a.pixel_mm, shifted["pixel_mm"]) and a.pixel_mm > 1.0
        assert abs(a.shift_mm[1]) > train["shift_y_mm"][1]
        # The field of view is narrower than the patient with arms: always truncated.
        assert a.fov_mm < 2 * a.arms.outer_x * a.anatomy.body_scale


def test_mr_draws_stay_in_their_ranges_and_shifted_is_disjoint_where_documented():
    for profile in ("train", "shifted"):
        p = MR_PROFILES[profile]
        draws = [draw_mr_acquisition(seed, profile) for seed in range(30)]
        assert {a.field_t for a in draws} == set(p["field_t"])
        for a in draws:
            for key, value in a.values.items():
                assert _inside(value, p[key]), key
            assert all(_inside(v, p["snr"]) for v in a.snr.values())
            assert all(_inside(v, p["bias_strength"]) for v in a.bias_strength.values())
            grid = a.grid(BRATS_CENTRE_RAS)
            assert np.allclose(grid.spacing, (a.pixel_mm, a.pixel_mm, a.thickness_mm), rtol=0.05)
            if profile == "shifted":
                train = MR_PROFILES["train"]
                for key in MR_DISJOINT:
                    value = a.values.get(key, next(iter(a.bias_strength.values())) if key == "bias_strength" else None)
                    assert not _inside(value, train[key]), key
                assert type(a.protocol["t1n"]).__name__ == "SpinEcho"
        assert np.std([a.values["pixel_mm"] for a in draws]) > 0.05


# --- what the drawn values do to the images ------------------------------------------------------------------------

def _median_in(phantom, organ):
    mask = ndimage.binary_erosion(phantom.label == BTCV_LABELS[organ], iterations=1)
    assert mask.sum() >= 20, organ
    return float(np.median(phantom.image[mask]))


@pytest.mark.parametrize("seed, profile, phase", [(0, "train", "native"), (3, "train", "arterial"),
                                                  (1, "train", "portal_venous"), (1, "shifted", "late_arterial")])
def test_organ_labels_carry_the_drawn_hounsfield_units(seed, profile, phase):
    ct = simulate_ct(seed, SMALL_CT, acquisition=profile)
    drawn = ct.info["acquisition"]["hu"]
    assert ct.info["acquisition"]["phase"] == phase
    assert set(np.unique(ct.label)) - {0} == set(BTCV_LABELS.values())
    for organ, tissue, tolerance in (("liver", "liver", 8), ("spleen", "spleen", 10), ("aorta", "aorta", 15),
                                     ("pancreas", "pancreas", 15)):
        assert abs(_median_in(ct, organ) - drawn[tissue]) < tolerance, organ


def test_noise_level_is_the_drawn_one():
    acquisition = acquired_subject(2, "train")[1]
    clean = simulate_ct(2, (64, 64, 16), acquisition=dataclasses.replace(acquisition, noise_hu=0.0))
    noisy = simulate_ct(2, (64, 64, 16), acquisition=acquisition)
    assert np.array_equal(clean.label, noisy.label)
    inside = (clean.image > -1000) & (clean.image < 1000)
    assert np.std((noisy.image - clean.image)[inside]) == pytest.approx(acquisition.noise_hu, rel=0.1)


def test_oral_contrast_fills_the_stomach_and_bowel_lumen_and_keeps_the_labels():
    acquisition = dataclasses.replace(acquired_subject(2, "train")[1], noise_hu=0.0)
    plain = simulate_ct(2, SMALL_CT, acquisition=acquisition)
    oral = simulate_ct(2, SMALL_CT, acquisition=acquisition, oral_contrast_hu=250.0)
    assert np.array_equal(plain.label, oral.label) and oral.info["oral_contrast_hu"] == 250.0
    brighter = oral.image > plain.image + 100.0  # lumen voxels, allowing for the kernel's blur at their edges
    stomach = plain.label == BTCV_LABELS["stomach"]
    assert brighter[stomach].mean() > 0.2  # the fluid below the gas level
    assert brighter[~stomach & (plain.label > 0)].mean() < 0.01  # solid organs and vessels keep their HU
    assert brighter[plain.label == 0].sum() > 100  # the small bowel and duodenum (no label)
    assert oral.image[brighter].max() > 200.0
    kidneys = np.isin(plain.label, [BTCV_LABELS["right_kidney"], BTCV_LABELS["left_kidney"]])
    # The renal pelvis holds the body's fluid, not the bowel's: kidney voxels move by the blur's last HU at most
    # (overriding all fluid instead would put 0.7 % of them 100-230 HU up).
    assert kidneys.any() and np.abs(oral.image - plain.image)[kidneys].max() <= 1.0


def test_an_oral_contrast_share_marks_some_cases_and_leaves_the_others_as_they_were(tmp_path):
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    write_btcv_dataset(plain, 6, seed=0, shape=(48, 48, 8), acquisition="train")
    write_btcv_dataset(mixed, 6, seed=0, shape=(48, 48, 8), acquisition="train", oral_contrast_share=0.5)
    records = json.loads((mixed / "acquisitions.json").read_text(encoding="utf-8"))["cases"]
    oral = {case: record.get("oral_contrast_hu") for case, record in records.items()}
    assert 0 < sum(hu is not None for hu in oral.values()) < 6
    assert all(150.0 <= hu <= 350.0 for hu in oral.values() if hu is not None)
    for case, hu in oral.items():
        same = sha256_of(plain / "img" / f"img{case}.nii.gz") == sha256_of(mixed / "img" / f"img{case}.nii.gz")
        assert same == (hu is None), case
        assert sha256_of(plain / "label" / f"label{case}.nii.gz") == sha256_of(mixed / "label" / f"label{case}.nii.gz")
    with pytest.raises(ValueError, match="oral_contrast_share"):
        write_btcv_dataset(tmp_path / "bad", 1, oral_contrast_share=1.5)


def test_table_arms_and_truncation_flags_do_what_they_say():
    base = acquired_subject(2, "train")[1]
    wide = dataclasses.replace(base, fov_mm=500.0, pixel_mm=500.0 / 512, shift_mm=(0.0, 0.0), arms=None,
                               table=False)
    plain = simulate_ct(2, SMALL_CT, acquisition=wide)
    assert not plain.info["truncated"] and not plain.info["acquisition"]["table"]
    # Table: only voxels behind (below) the patient change, labels do not.
    table = simulate_ct(2, SMALL_CT, acquisition=dataclasses.replace(wide, table=True))
    assert np.array_equal(table.label, plain.label)
    changed = table.image != plain.image
    body_rows = np.nonzero((plain.image > -500).any(axis=(0, 2)))[0]
    assert changed.any() and np.nonzero(changed.any(axis=(0, 2)))[0].min() > body_rows.mean()  # rows: A to P
    assert (plain.image[changed] < -500).mean() > 0.9  # the couch lies in air, touching the back at most
    assert ((table.image > -900) & (table.image < -700)).sum() > ((plain.image > -900) & (plain.image < -700)).sum()
    # Arms: bone beside the trunk, label 0, and the body now reaches further out.
    trunk_half = acquired_subject(2, "train")[0].trunk.half_width
    arms = Arms(centre_x=trunk_half + 50.0, centre_y=-10.0, radius=45.0, fat=10.0, humerus=12.0, elbow_z=-60.0)
    armed = simulate_ct(2, SMALL_CT, acquisition=dataclasses.replace(wide, arms=arms))
    assert armed.info["arms_visible"] and armed.info["acquisition"]["arms"]
    assert np.array_equal(armed.label, plain.label)
    lateral = np.zeros(SMALL_CT[::-1], bool)
    lateral[..., :12], lateral[..., -12:] = True, True
    assert (armed.image[lateral] > 400).sum() > 20 and (plain.image[lateral] > -500).sum() == 0
    # Truncation: a field of view narrower than the trunk cuts it, and body HU reach the circle's edge.
    narrow = simulate_ct(2, SMALL_CT, acquisition=dataclasses.replace(wide, fov_mm=240.0, pixel_mm=240.0 / 512))
    assert narrow.info["truncated"]
    middle = narrow.image[SMALL_CT[2] // 2]
    row = middle[SMALL_CT[1] // 2]
    inside = np.nonzero(row > -1024)[0]
    assert row[inside[0]] > -200 and row[inside[-1]] > -200  # soft tissue right at the circle's edge
    # Arms outside a narrow field of view: present in the scan, not visible, the body still counts as cut.
    hidden = simulate_ct(2, SMALL_CT, acquisition=dataclasses.replace(wide, arms=arms, fov_mm=360.0,
                                                                      pixel_mm=360.0 / 512))
    assert not hidden.info["arms_visible"] and hidden.info["truncated"]


def test_shape_and_spacing_force_the_grid_under_a_profile():
    acquisition = acquired_subject(4, "train")[1]
    kept = acquisition.grid((64, 64, 20))
    assert kept.shape == (64, 64, 20)
    assert np.allclose(np.asarray(kept.spacing) * (64, 64, 20),
                       (acquisition.fov_mm, acquisition.fov_mm, acquisition.n_slices * acquisition.thickness_mm))
    forced = simulate_ct(4, (48, 48, 12), (5.0, 5.0, 10.0), acquisition="train")
    assert forced.info["shape"] == [48, 48, 12] and forced.info["spacing_mm"] == [5.0, 5.0, 10.0]
    by_spacing = acquisition.grid(spacing=(4.0, 4.0, 8.0))
    assert np.allclose(by_spacing.spacing, (4.0, 4.0, 8.0))


# --- brain MRI -----------------------------------------------------------------------------------------------------

def _without_bias(phantom, acquisition):
    """The images divided by the drawn bias fields (known exactly), so that contrasts can be compared brain-wide."""
    x, y, z = Grid(tuple(phantom.info["shape"]), phantom.ijk_to_ras).world_axes()
    return {seq: image / np.exp(acquisition.bias_strength[seq] * acquisition.bias[seq](x, y, z))
            for seq, image in phantom.images.items()}


@pytest.mark.parametrize("profile", ["train", "shifted"])
def test_brain_profiles_keep_radiological_contrast(profile):
    for seed in (1, 2):
        acquisition = draw_mr_acquisition(seed, profile)
        brain = simulate_brain(seed, SMALL_BRAIN, acquisition=acquisition)
        assert brain.info["acquisition"]["profile"] == profile
        assert brain.info["shape"] == list(SMALL_BRAIN)
        for image in brain.images.values():
            assert (image[~brain.brain_mask] == 0).all() and image.max() < 32767
        images = _without_bias(brain, acquisition)
        masks = {name: (brain.tissues[name] > 0.8) & brain.brain_mask for name in brain.tissues}
        m = {seq: {name: float(image[mask].mean()) for name, mask in masks.items() if mask.sum() >= 20}
             for seq, image in images.items()}
        t1n, t1c, t2w, t2f = m["t1n"], m["t1c"], m["t2w"], m["t2f"]
        assert t1n["wm"] > t1n["gm"] > t1n["csf"]
        assert t2w["csf"] > t2w["gm"] > t2w["wm"]
        assert t2f["csf"] < 0.6 * t2f["wm"] and t2f["edema"] > 1.1 * t2f["wm"]
        assert t1c["enhancing"] > 1.15 * t1c["wm"] and t1c["enhancing"] / t1c["wm"] > 1.3 * t1n["enhancing"] / t1n["wm"]
        # The drawn bias is what is in the images: removing it flattens the white matter.
        spread = {name: np.std(np.log(im[masks["wm"]])) for name, im in (("raw", brain.images["t1n"]),
                                                                          ("flat", images["t1n"]))}
        assert spread["flat"] < spread["raw"]


def test_brain_drawn_grid_is_used_without_a_shape():
    acquisition = draw_mr_acquisition(6, "shifted")
    grid = acquisition.grid(BRATS_CENTRE_RAS)
    brain = simulate_brain(6, acquisition=acquisition)
    assert brain.info["shape"] == list(grid.shape)
    assert np.allclose(brain.info["spacing_mm"], grid.spacing, atol=1e-3)
    assert brain.info["spacing_mm"][2] >= MR_PROFILES["shifted"]["thickness_mm"][0] * 0.95


# --- command line ----------------------------------------------------------------------------------------------------

def test_cli_acquisition_flag_writes_acquisitions_json(tmp_path, capsys):
    assert main(["btcv", "--out", str(tmp_path / "ct"), "--n", "2", "--seed", "3", "--shape", "48x48x12",
                 "--acquisition", "shifted"]) == 0
    cases = json.loads((tmp_path / "ct" / "acquisitions.json").read_text(encoding="utf-8"))["cases"]
    assert sorted(cases) == ["0001", "0002"]
    assert all(c["acquisition"]["profile"] == "shifted" and c["truncated"] for c in cases.values())
    assert main(["brats", "--out", str(tmp_path / "mr"), "--n", "1", "--shape", "32x32x20",
                 "--acquisition", "train"]) == 0
    case = json.loads((tmp_path / "mr" / "acquisitions.json").read_text(encoding="utf-8"))["cases"]["BraTS-GLI-00000-000"]
    assert case["acquisition"]["profile"] == "train" and case["shape"] == [32, 32, 20]
    from training.data.layouts import read_brats, read_btcv
    assert [c.case_id for c in read_btcv(tmp_path / "ct")] == ["0001", "0002"]
    assert [c.case_id for c in read_brats(tmp_path / "mr")] == ["BraTS-GLI-00000-000"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["btcv", "--out", str(tmp_path), "--acquisition", "bogus"])


@pytest.mark.parametrize("flags, message", [(["--oral-contrast", "200", "--oral-contrast-share", "0.5"], "not allowed with"),
                                            (["--oral-contrast-share", "2"], "expected a share between 0 and 1")])
def test_cli_refuses_conflicting_or_impossible_oral_contrast(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as refused:
        main(["btcv", "--out", str(tmp_path / "ct"), *flags])
    assert refused.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "ct").exists()
