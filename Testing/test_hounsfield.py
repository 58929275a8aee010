"""The CT units check: a CT in Hounsfield units runs silently; stored CT numbers (rescale intercept lost), a
normalized image or an MRI given as the CT are warned about, in one line on the command line and in the runner's
status (Slicer, web)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from MedDiffusionExtension import runner, tasks
from MedDiffusionExtension.cli import main
from MedDiffusionExtension.volume import Volume, read_volume, write_volume
from MedDiffusionExtension.volume.checks import InputRequirementWarning
from MedDiffusionExtension.volume.hounsfield import check_hounsfield, warn_if_not_hounsfield

SAMPLES = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"


@pytest.fixture(scope="module")
def ct():
    return read_volume(SAMPLES / "PhantomAbdomenCT.nii.gz")


def _silent(volume):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return warn_if_not_hounsfield(volume, "the CT", "model-x")


def test_a_ct_in_hounsfield_units_is_not_warned_about(ct):
    check = _silent(ct)
    assert check.verdict == "hu" and check.air > 0.5 and check.fat > 0.05


def test_a_box_inside_the_trunk_without_air_passes_on_its_fat(ct):
    labels = read_volume(SAMPLES / "PhantomAbdomenCT-label.nii.gz").array
    k, j, i = (int(np.median(axis)) for axis in np.nonzero(labels))
    box = ct.array[k - 8:k + 8, j - 30:j + 30, i - 30:i + 30]
    assert box.min() > -500  # no air in it
    check = _silent(Volume(np.ascontiguousarray(box), ct.ijk_to_ras))
    assert check.verdict == "hu" and check.air == 0.0


def test_stored_ct_numbers_are_named_with_what_to_do(ct):
    stored = ct.with_array(np.clip(ct.array + 1024.0, 0, None).astype(np.float32))
    with pytest.warns(InputRequirementWarning) as caught:
        check = warn_if_not_hounsfield(stored, "the CT", "model-x")
    assert check.verdict == "stored" and check.stored_tissue >= 0.10
    message = str(caught[0].message)
    assert "\n" not in message and "subtract 1024" in message and "'model-x' expects HU" in message


def _padded(volume, value):
    """The volume with the corners outside the reconstruction circle set to a scanner's padding value."""
    _, rows, columns = volume.shape
    j, i = np.ogrid[:rows, :columns]
    outside = (j - rows / 2) ** 2 + (i - columns / 2) ** 2 > (min(rows, columns) / 2) ** 2
    return volume.with_array(np.where(outside[None], value, volume.array).astype(np.float32))


def test_padding_outside_the_field_of_view_is_neither_air_nor_a_sign_of_the_units(ct):
    assert _silent(_padded(ct, -3024.0)).verdict == "hu"
    stored = ct.with_array(np.clip(ct.array + 1024.0, 0, None).astype(np.float32))
    padded = _padded(stored, -2000.0)  # stored numbers with the scanner's padding: the padding is not air
    assert (padded.array == -2000).mean() > 0.1
    with pytest.warns(InputRequirementWarning, match="subtract 1024"):
        assert warn_if_not_hounsfield(padded, "the CT", "model-x").verdict == "stored"


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_a_normalized_image_is_not_recognised_as_hounsfield_units(ct, scale):
    low, high = -175.0, 250.0
    normalized = ct.with_array((scale * np.clip((ct.array - low) / (high - low), 0, 1)).astype(np.float32))
    with pytest.warns(InputRequirementWarning, match="does not look like a CT in Hounsfield units"):
        assert warn_if_not_hounsfield(normalized, "the CT", "model-x").verdict == "unknown"


def test_an_mri_given_as_the_ct_is_warned_about():
    for name in ("PhantomBrainMR-t1n.nii.gz", "PhantomBrainMR-t1c.nii.gz"):
        assert check_hounsfield(read_volume(SAMPLES / name)).verdict in ("stored", "unknown")


@pytest.mark.usefixtures("micro_models_env")
def test_segment_prints_one_warning_line_and_still_writes_the_labels(tmp_path, ct, capsys):
    small = Volume(ct.array[20:24].astype(np.float32), ct.ijk_to_ras)  # 4 slices keep the micro model quick
    stored = write_volume(small.with_array(small.array + 1024.0), tmp_path / "stored.nii.gz")
    code = main(["segment", "--image", str(stored), "--out", str(tmp_path / "seg.nii.gz"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if "Hounsfield" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: the CT does not look like Hounsfield units"), err
    assert (tmp_path / "seg.nii.gz").exists()
    code = main(["segment", "--image", str(write_volume(small, tmp_path / "hu.nii.gz")), "--out",
                 str(tmp_path / "seg_hu.nii.gz"), "--quiet"])
    assert code == 0 and "Hounsfield" not in capsys.readouterr().err


@pytest.mark.usefixtures("micro_models_env")
def test_the_runner_reports_the_warning_to_slicer_and_the_web(tmp_path, ct):
    """The Slicer modules and the web app run jobs through the runner: its WARNING line is their status line."""
    small = Volume(ct.array[20:24].astype(np.float32) + 1024.0, ct.ijk_to_ras)
    job = dict(tasks.SegmentRequest().to_job(), inputs={"image": str(write_volume(small, tmp_path / "ct.nii.gz"))},
               outputs={"labels": str(tmp_path / "seg.nrrd")})
    (tmp_path / "job.json").write_text(json.dumps(job))
    stream = io.StringIO()
    assert runner.main([str(tmp_path / "job.json")], stream=stream, install_signal_handlers=False) == 0
    lines = stream.getvalue().splitlines()
    assert any(line.startswith("WARNING the CT does not look like Hounsfield units") for line in lines), lines
    assert lines[-1] == "DONE" and (tmp_path / "seg.nrrd").exists()
