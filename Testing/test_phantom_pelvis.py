"""Abdomen-pelvis phantoms: the same patient above the bifurcation, the BTCV vessels ending where they divide, the
pelvis below unlabelled and plausible in HU, the field reaching past the symphysis, and the dataset options."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from MedDiffusionExtension.errors import InputError
from phantom_shares import cases_marked_by_share
from training.phantoms import simulate_ct
from training.phantoms.acquisition import CT_PELVIS, reach_down_to_pelvis
from training.phantoms.cli import main
from training.phantoms.ct import BTCV_LABELS, acquired_subject
from training.phantoms.ct_pelvis import with_pelvis

SHAPE = (96, 96, 90)


@pytest.fixture(scope="module")
def pair():
    """Seed 4 scanned abdomen-pelvis, with and without the pelvis drawn, on the same grid, noise off."""
    subject, acquisition = acquired_subject(4, "train")
    pelvis = with_pelvis(subject).pelvis
    extended = dataclasses.replace(reach_down_to_pelvis(acquisition, pelvis.symphysis_bottom_z, 4), noise_hu=0.0)
    plain = simulate_ct(4, SHAPE, acquisition=extended)
    drawn = simulate_ct(4, SHAPE, acquisition=extended, pelvis=True)
    z = drawn.ijk_to_ras[2, 2] * np.arange(SHAPE[2]) + drawn.ijk_to_ras[2, 3]
    return plain, drawn, pelvis, z


def test_the_field_keeps_its_top_and_reaches_past_the_symphysis(pair):
    _, drawn, pelvis, z = pair
    acquisition = acquired_subject(4, "train")[1]
    top = acquisition.centre_ras[2] + 0.5 * acquisition.n_slices * acquisition.thickness_mm
    step = abs(z[1] - z[0])
    assert z.max() == pytest.approx(top - step / 2, abs=step)
    low, high = CT_PELVIS["below_symphysis_mm"]
    assert pelvis.symphysis_bottom_z - high - step <= z.min() <= pelvis.symphysis_bottom_z - low + step
    extended = reach_down_to_pelvis(acquisition, pelvis.symphysis_bottom_z, 4)
    assert extended.n_slices <= CT_PELVIS["max_slices"] and extended.thickness_mm >= acquisition.thickness_mm
    assert drawn.info["pelvis"]["symphysis_bottom_z"] == pytest.approx(pelvis.symphysis_bottom_z, abs=0.05)
    # Landmarks in anatomical order, a few centimetres apart as in adults.
    assert (pelvis.confluence_z < pelvis.bifurcation_z and
            20 < pelvis.bifurcation_z - pelvis.promontory_z < 70 and
            80 < pelvis.promontory_z - pelvis.femoral_head_z < 130 and
            20 < pelvis.femoral_head_z - pelvis.symphysis_bottom_z < 50)


def test_above_the_bifurcation_the_patient_is_the_same(pair):
    plain, drawn, pelvis, z = pair
    above = z > pelvis.bifurcation_z + 20.0
    assert above.sum() > 20
    assert np.array_equal(plain.label[above], drawn.label[above])


def test_aorta_and_ivc_labels_end_where_they_divide_and_the_pelvis_is_unlabelled(pair):
    plain, drawn, pelvis, z = pair
    step = abs(z[1] - z[0])
    for name, end in (("aorta", pelvis.bifurcation_z), ("ivc", pelvis.confluence_z)):
        slices = np.nonzero((drawn.label == BTCV_LABELS[name]).any(axis=(1, 2)))[0]
        assert end - 15.0 - step <= z[slices].min() <= end + step, name
        # Without the pelvis drawn the same vessels ran on, labelled, to the bottom of the abdomen phantom.
        assert z[np.nonzero((plain.label == BTCV_LABELS[name]).any(axis=(1, 2)))[0]].min() < end - 40.0
    assert not drawn.label[z < pelvis.confluence_z - 15.0 - step].any()


def test_pelvic_bones_bladder_and_rectum_have_their_hounsfield_units(pair):
    _, drawn, pelvis, z = pair
    image = drawn.image
    hu = acquired_subject(4, "train")[0].hu
    heads = image[np.argmin(np.abs(z - pelvis.femoral_head_z))]
    # Two femoral heads: bright bone on each side of the midline at their level, none there in the abdomen.
    left, right = heads[:, : SHAPE[0] // 2], heads[:, SHAPE[0] // 2:]
    assert (left > 400).sum() > 10 and (right > 400).sum() > 10
    bladder_level = image[np.argmin(np.abs(z - (pelvis.symphysis_bottom_z + 40.0)))]
    fluid = np.abs(bladder_level - hu["fluid"]) < 15.0
    assert fluid.sum() > 30  # the bladder's urine (and no other large fluid body at that level)
    rectum_level = image[np.argmin(np.abs(z - pelvis.femoral_head_z))]
    assert (rectum_level < -500)[SHAPE[1] // 4: 3 * SHAPE[1] // 4].any()  # gas in the rectum / inside the body


def test_a_pelvis_share_marks_some_cases_and_the_fixed_profile_refuses_it(tmp_path, capsys):
    cases = cases_marked_by_share(tmp_path, "pelvis_share", "pelvis")
    assert 0 < sum(case["marked"] for case in cases.values()) < len(cases)
    for name, case in cases.items():
        assert case["same_image"] != case["marked"], name
    with pytest.raises(InputError, match="randomized acquisition"):
        simulate_ct(0, (32, 32, 8), pelvis=True)
    assert main(["btcv", "--out", str(tmp_path / "fixed"), "--pelvis"]) == 2
    assert "--acquisition train or shifted" in capsys.readouterr().err and not (tmp_path / "fixed").exists()
    with pytest.raises(SystemExit):
        main(["btcv", "--out", str(tmp_path / "both"), "--pelvis", "--pelvis-share", "0.5"])
