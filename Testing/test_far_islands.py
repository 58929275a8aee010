"""Labelled islands far along the body axis from the organs (volume/islands.py) and their removal by segment."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import restored

from MedDiffusionExtension.cli import build_parser
from MedDiffusionExtension.tasks import SegmentRequest
from MedDiffusionExtension.volume import AxialReorientation, Volume
from MedDiffusionExtension.volume.engine import RunOptions
from MedDiffusionExtension.volume.islands import FAR_GAP_MM, far_islands
from MedDiffusionExtension.weights import load_model

SLICE_MM = 5.0
segment_module = importlib.import_module("MedDiffusionExtension.pipelines.segment")  # the package exports the function


def long_scan(slices=40):
    """Canonical axial labels on 5 mm slices: the organs (slices 20-35, with a separate 'kidney' beside them on
    12-24), a region ending exactly 40 mm below the organs' first slice (slices 9-12: kept) and one ending 65 mm
    below it (slices 2-7: far)."""
    labelled = np.zeros((slices, 24, 24), dtype=bool)
    labelled[20:36, 4:16, 4:16] = True  # the largest region
    labelled[12:25, 18:22, 18:22] = True  # overlaps the organs' span: kept
    labelled[9:13, 18:22, 2:6] = True  # last slice 12, 8 slices (40 mm) from slice 20: not more than the gap, kept
    labelled[2:8, 2:20, 2:20] = True  # last slice 7, 13 slices (65 mm) away: far
    volume = Volume(np.zeros(labelled.shape, np.float32), np.diag([-0.8, -0.8, SLICE_MM, 1.0]))
    far = np.zeros_like(labelled)
    far[2:8, 2:20, 2:20] = True
    return volume, labelled, far


def test_only_regions_wholly_beyond_the_gap_are_far():
    volume, labelled, expected = long_scan()
    assert np.array_equal(far_islands(labelled, volume), expected)
    # One slice further (45 mm) the kept region would be far; at 2 mm slices the far one lies only 26 mm away.
    further = labelled.copy()
    further[9:13, 18:22, 2:6], further[8:12, 18:22, 2:6] = False, True
    assert far_islands(further, volume)[8:12, 18:22, 2:6].all()
    thin = Volume(volume.array, np.diag([-0.8, -0.8, 2.0, 1.0]))
    assert far_islands(labelled, thin) is None
    assert FAR_GAP_MM == 40.0


def test_far_islands_follow_the_voxels_whatever_the_storage_order():
    volume, labelled, expected = long_scan()
    for axes, flips in (((2, 1, 0), (False, True, True)), ((1, 0, 2), (True, False, False))):
        stored_volume = restored(volume, axes, flips)
        stored_labels = restored(volume.with_array(labelled), axes, flips).array
        far = far_islands(stored_labels, stored_volume)
        assert np.array_equal(AxialReorientation.for_volume(stored_volume).apply(far), expected)


def test_one_region_or_nothing_has_no_islands():
    volume, labelled, _ = long_scan()
    assert far_islands(np.zeros_like(labelled), volume) is None
    single = np.zeros_like(labelled)
    single[20:36, 4:16, 4:16] = True
    assert far_islands(single, volume) is None


@pytest.fixture(scope="module")
def micro_unet(tmp_path_factory):
    from tiny_models import write_micro_model

    return load_model(write_micro_model(tmp_path_factory.mktemp("models"), "segunet"))


@pytest.mark.parametrize("keep", [False, True])
def test_segment_clears_far_islands_in_labels_and_probabilities_unless_kept(micro_unet, monkeypatch, keep):
    scan, labelled, far = long_scan()
    volume = scan.with_array(np.where(labelled, 40.0, -1000.0).astype(np.float32))  # a CT to run on
    probability = np.where(labelled, 0.9, 0.1).astype(np.float32)[None]
    monkeypatch.setattr(segment_module, "run_slicewise", lambda *args, **kwargs: probability.copy())
    result = segment_module.segment(image=volume, loaded=micro_unet, samples=2, options=RunOptions(device="cpu"),
                                    body_only=False, keep_far_islands=keep)
    labels = result.labels.array > 0
    assert np.array_equal(labels, labelled if keep else labelled & ~far)
    assert (result.probability.array[far] == 0.0).all() != keep


def test_the_cli_and_the_request_carry_the_choice():
    args = build_parser().parse_args(["segment", "--image", "ct.nii.gz", "--out", "labels.nii.gz", "--keep-far-islands"])
    assert args.keep_far_islands is True
    request = SegmentRequest(keep_far_islands=True)
    assert SegmentRequest.from_job(request.to_job()).keep_far_islands is True
    assert SegmentRequest().keep_far_islands is False
    with pytest.raises(Exception, match="keep_far_islands must be true or false"):
        SegmentRequest(keep_far_islands="yes")
    help_text = build_parser()._subparsers._group_actions[0].choices["segment"].format_help()
    assert f"{FAR_GAP_MM:g} mm" in " ".join(help_text.split())


@pytest.fixture(scope="module")
def micro_organ_unet(tmp_path_factory):
    from tiny_models import write_micro_model

    return load_model(write_micro_model(tmp_path_factory.mktemp("organ_models"), "segunet", organs=[3, 6]))


@pytest.mark.parametrize("organs", [None, [3]])
def test_asking_for_one_organ_does_not_change_which_region_is_far(micro_organ_unet, monkeypatch, organs):
    segments = micro_organ_unet.card.segments
    kidney, liver = (1 + [s.label for s in segments].index(label) for label in (3, 6))  # class indices
    classes = np.zeros((40, 24, 24), dtype=np.float32)
    classes[20:36, 4:16, 4:16] = liver  # the largest region
    classes[22:31, 18:22, 18:22] = kidney  # the left kidney beside it
    classes[2:10, 4:12, 4:12] = kidney  # a larger 'kidney' 55 mm below the organs: a false one, far
    scan = Volume(np.where(classes > 0, 40.0, -1000.0).astype(np.float32), np.diag([-0.8, -0.8, SLICE_MM, 1.0]))
    monkeypatch.setattr(segment_module, "run_slicewise", lambda *args, **kwargs: classes[None].copy())
    result = segment_module.segment(image=scan, loaded=micro_organ_unet, options=RunOptions(device="cpu"),
                                    organs=organs, body_only=False)
    labels = result.labels.array
    assert (labels[22:31, 18:22, 18:22] == 3).all()  # the true kidney kept, whatever was asked for
    assert not labels[2:10].any()  # the far false one gone
    assert (labels[20:36, 4:16, 4:16] == (0 if organs == [3] else 6)).all()
