"""Lesion phantoms: the same patient and labels with or without lesions, each lesion inside its organ with the
density of its kind, and the dataset options."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from phantom_shares import cases_marked_by_share
from training.phantoms import simulate_ct
from training.phantoms.cli import main
from training.phantoms.ct import BTCV_LABELS, _Canvas, _paint_inside, acquired_subject
from training.phantoms.ct_lesions import KINDS, draw_lesions, with_lesions
from training.phantoms.geometry import lps_grid

SHAPE = (128, 128, 40)


def test_lesions_change_the_image_inside_their_organs_and_never_the_labels():
    plain, drawn = (simulate_ct(3, SHAPE, acquisition="train", lesions=lesions) for lesions in (False, True))
    assert np.array_equal(plain.label, drawn.label)
    assert (plain.image != drawn.image).sum() > 50 and "lesions" not in plain.info
    # Painted before blur and noise, on a patient grid: every changed voxel lies in the organ of a lesion.
    subject = acquired_subject(3, "train")[0]
    lesioned = with_lesions(subject)
    assert {lesion["organ"] for lesion in drawn.info["lesions"]} == {lesion.organ for lesion in lesioned.lesions}
    grid = lps_grid((128, 128, 50), (2.5, 2.5, 4.0), (0.0, 0.0, 30.0))
    before, after = _Canvas(grid, subject), _Canvas(grid, lesioned)
    _paint_inside(before)
    _paint_inside(after)
    assert np.array_equal(before.label, after.label)
    changed = before.hu != after.hu
    organs = [BTCV_LABELS[lesion.organ] for lesion in lesioned.lesions]
    assert changed.sum() > 50 and np.isin(after.label[changed], organs).all()


def test_each_kind_has_its_density_against_the_parenchyma():
    subject = acquired_subject(3, "train")[0]
    hu = subject.hu
    checked = set()
    for seed in range(60):
        for lesion in draw_lesions(dataclasses.replace(subject, seed=seed)):
            if lesion.organ != "liver" or lesion.shape.radii.min() < 6.0 or lesion.kind in checked:
                continue
            parenchyma = _value_at(dataclasses.replace(subject, lesions=()), lesion.shape.centre)
            if parenchyma is None or abs(parenchyma - hu["liver"]) > 20.0:  # a vessel, or outside the liver
                continue
            value = _value_at(dataclasses.replace(subject, lesions=(lesion,)), lesion.shape.centre)
            # The lesion's texture and the liver's follow the same field: at most about 2 x 3 HU apart.
            if lesion.kind == "cyst":
                assert value == pytest.approx(hu["fluid"] + 3.0, abs=0.5)
            elif lesion.kind == "hypovascular":
                assert value < parenchyma - 0.3 * (hu["liver"] - hu["fluid"]) + 8.0
            else:
                assert value > parenchyma + 0.15 * (hu["aorta"] - hu["liver"]) - 8.0
            checked.add(lesion.kind)
    assert checked == set(KINDS)
    assert hu["aorta"] > hu["liver"] + 50.0 and hu["liver"] > hu["fluid"] + 50.0  # an enhanced phase


def _value_at(subject, point):
    """The painted HU (no blur, no noise) at a patient point; None where that is not liver."""
    canvas = _Canvas(lps_grid((5, 5, 5), (1.0, 1.0, 1.0), tuple(point)), subject)
    _paint_inside(canvas)
    return float(canvas.hu[2, 2, 2]) if canvas.label[2, 2, 2] == BTCV_LABELS["liver"] else None


def test_a_lesion_share_marks_some_cases_and_leaves_the_others(tmp_path, capsys):
    cases = cases_marked_by_share(tmp_path, "lesion_share", "lesions")
    assert 0 < sum(case["marked"] for case in cases.values()) < len(cases)
    for name, case in cases.items():
        assert case["same_label"] and case["same_image"] != case["marked"], name
    with pytest.raises(SystemExit):
        main(["btcv", "--out", str(tmp_path / "both"), "--lesions", "--lesion-share", "0.5"])
    assert "not allowed with" in capsys.readouterr().err and not (tmp_path / "both").exists()
