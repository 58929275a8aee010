"""Rigid registration of T2 to T1 (`--register`, the request's `register`, Slicer's checkbox) and the warnings the
translation task gives about its inputs, end to end through the CLI, cohort mode and the runner.

The known motion: the sample phantom's T2 moved by 5 degrees about an oblique axis and 4 mm (by its header, so
the truth is exact and the moved T2 lies on another grid than the T1). Registration must undo it to within 1 degree
and 1 mm, measured on the parameters and as the displacement of every brain voxel.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from MedDiffusionExtension import runner, tasks
from MedDiffusionExtension.cli import main
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import Volume, read_volume, write_volume
from MedDiffusionExtension.volume.register import RegistrationWarning, euler_angles_deg, register_rigid

from synthetic_heads import cropped, mni_head, reduced

pytestmark = pytest.mark.usefixtures("micro_models_env")

SAMPLES = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
BRAIN_BOX = ((0.0, 1.0), (0.12, 0.86), (0.2, 0.8))  # (k, j, i) fractions of the sample's field of view


def axis_angle(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(degrees)
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    return matrix


def centre_of(volume: Volume) -> np.ndarray:
    return volume.ijk_to_ras[:3, :3] @ ((np.array(volume.shape[::-1]) - 1) / 2) + volume.ijk_to_ras[:3, 3]


def known_motion(volume: Volume, degrees: float = 5.0, shift_mm: float = 4.0) -> np.ndarray:
    """Rotation about an oblique axis through a point off the volume's centre, then a shift of `shift_mm`."""
    about = np.eye(4)
    about[:3, 3] = centre_of(volume) + [10.0, -5.0, 3.0]
    shift = np.eye(4)
    shift[:3, 3] = np.array([2.0, -3.0, 2.0]) / np.linalg.norm([2.0, -3.0, 2.0]) * shift_mm
    return shift @ about @ axis_angle([1.0, 2.0, 3.0], degrees) @ np.linalg.inv(about)


@pytest.fixture(scope="module")
def sample():
    """The bundled phantom's T1 and T2 (one grid, skull-stripped) around the brain: 80 x 95 x 78 voxels of ~1.9 mm."""
    return tuple(cropped(read_volume(SAMPLES / f"PhantomBrainMR-{n}.nii.gz"), BRAIN_BOX) for n in ("t1n", "t2w"))


def test_registration_recovers_a_known_rigid_motion(sample):
    t1, t2 = sample
    motion = known_motion(t1)
    moved = Volume(t2.array.copy(), motion @ t2.ijk_to_ras)
    before = moved.array.copy()
    started = time.perf_counter()
    registered, transform = register_rigid(moved, t1, "T2", "T1")
    seconds = time.perf_counter() - started

    truth = np.linalg.inv(motion)  # moved T2 -> T1
    residual = transform.matrix @ motion  # identity when exact
    angle_error = np.degrees(np.arccos(np.clip((np.trace(residual[:3, :3]) - 1) / 2, -1, 1)))
    brain = np.argwhere(t1.array > 0)[:, ::-1]
    points = brain @ t1.ijk_to_ras[:3, :3].T + t1.ijk_to_ras[:3, 3]
    displacement = np.linalg.norm(points @ (residual[:3, :3] - np.eye(3)).T + residual[:3, 3], axis=1)
    centre = transform.centre_ras
    true_translation = truth[:3, :3] @ centre + truth[:3, 3] - centre
    print(f"registration: {seconds:.2f} s, rotation error {angle_error:.3f} deg, brain voxel displacement "
          f"mean {displacement.mean():.3f} / max {displacement.max():.3f} mm; {transform.describe()}")
    assert angle_error < 1.0 and displacement.max() < 1.0
    np.testing.assert_allclose(transform.rotation_deg, euler_angles_deg(truth[:3, :3]), atol=1.0)
    np.testing.assert_allclose(transform.translation_mm, true_translation, atol=1.0)
    assert max(abs(a) for a in transform.rotation_deg) > 3 and np.linalg.norm(transform.translation_mm) > 3

    # The moved T2 comes back onto the T1 grid where the original T2 was; the input is untouched.
    assert registered.same_grid(t1)
    inside = t1.array > 0
    error = np.abs(registered.array - t2.array)[inside].mean() / t2.array[inside].mean()
    assert error < 0.05, error
    np.testing.assert_array_equal(moved.array, before)


def test_the_transform_is_described_in_one_line_and_as_json():
    from MedDiffusionExtension.volume.register import RigidTransform

    matrix = axis_angle([0, 0, 1], -5.0)
    matrix[:3, 3] = [2.0, -4.0, 0.5]
    transform = RigidTransform(matrix, np.zeros(3), -0.5, "T2", "T1")
    assert transform.describe() == ("registered T2 to T1 (rigid): rotation R +0.0, A +0.0, S -5.0 degrees; "
                                    "translation R +2.0, A -4.0, S +0.5 mm")
    record = json.loads(json.dumps(transform.as_dict()))
    assert record["rotation_deg"] == pytest.approx([0, 0, -5]) and record["translation_mm"] == pytest.approx([2, -4, 0.5])


def test_register_is_a_request_option_that_survives_the_job_form():
    request = tasks.TranslateRequest(targets=("t1c",), register=True)
    job = request.to_job()
    assert job["register"] is True and json.loads(json.dumps(job)) == job
    assert tasks.request_from_job(job) == request
    assert tasks.request_from_job(dict(job, register=False)).register is False
    assert tasks.TranslateRequest.from_job({"task": "translate"}).register is False  # old jobs: no registration
    with pytest.raises(InputError, match="register must be true or false"):
        tasks.request_from_job(dict(job, register="yes"))
    with pytest.raises(InputError, match="register must be true or false"):
        tasks.TranslateRequest(register=1)


# -- end to end: CLI, cohort, runner -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moved_case(sample, tmp_path_factory):
    """Small files (20 slices of 7.8 mm, 3.8 mm in-plane): the T1, and the T2 moved by the known motion (its header)."""
    folder = tmp_path_factory.mktemp("moved")
    t1, t2 = (reduced(v, (4, 2, 2)) for v in sample)
    motion = known_motion(t1)
    paths = (write_volume(t1, folder / "t1.nii.gz"), write_volume(Volume(t2.array, motion @ t2.ijk_to_ras), folder / "t2.nii.gz"))
    return paths, motion


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_cli_register_reports_and_records_the_transform(tmp_path, moved_case, capsys):
    (t1, t2), motion = moved_case
    digests = [_digest(t1), _digest(t2)]
    code, out, err = _run(capsys, "translate", "--t1", t1, "--t2", t2, "--out-dir", tmp_path / "out", "--register",
                          "--targets", "t1c", "--quiet")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("warning: registered T2 to T1 (rigid): rotation R "), err
    assert "skull" not in err  # the phantom is skull-stripped
    record_path = tmp_path / "out" / "registration.json"
    assert out.split() == [str(tmp_path / "out" / "t1c.nii.gz"), str(record_path)]
    record = json.loads(record_path.read_text(encoding="utf-8"))["registrations"][0]
    truth = np.linalg.inv(motion)
    centre = np.array(record["centre_ras_mm"])
    np.testing.assert_allclose(record["rotation_deg"], euler_angles_deg(truth[:3, :3]), atol=1.0)
    np.testing.assert_allclose(record["translation_mm"], truth[:3, :3] @ centre + truth[:3, 3] - centre, atol=1.0)
    reference = read_volume(t1)
    np.testing.assert_allclose(read_volume(tmp_path / "out" / "t1c.nii.gz").ijk_to_ras, reference.ijk_to_ras, atol=1e-6)
    assert [_digest(t1), _digest(t2)] == digests  # inputs are never modified


def test_cohort_register_writes_a_record_per_case(tmp_path, moved_case, capsys):
    (t1, t2), _ = moved_case
    (tmp_path / "cohort.csv").write_text(f"case_id,t1,t2\ncase-a,{t1},{t2}\n")
    code, _, err = _run(capsys, "translate", "--cohort", tmp_path / "cohort.csv", "--out-dir", tmp_path / "out",
                        "--register", "--targets", "t1c", "--quiet")
    assert code == 0, err
    assert "warning: registered T2 to T1" in err
    record = json.loads((tmp_path / "out" / "case-a" / "registration.json").read_text(encoding="utf-8"))
    assert record["registrations"][0]["moving"] == "T2"


def test_runner_job_with_register_reports_the_transform(tmp_path, moved_case):
    (t1, t2), _ = moved_case
    job = dict(tasks.TranslateRequest(targets=("t1c",), register=True).to_job(), inputs={"t1": str(t1), "t2": str(t2)},
               outputs={"t1c": str(tmp_path / "t1c.nrrd")})
    (tmp_path / "job.json").write_text(json.dumps(job))
    stream = io.StringIO()
    assert runner.main([str(tmp_path / "job.json")], stream=stream, install_signal_handlers=False) == 0
    lines = stream.getvalue().splitlines()
    assert any(line.startswith("WARNING registered T2 to T1 (rigid): rotation") for line in lines)
    assert any(line.startswith("PROGRESS 0.000 registering T2 to T1") for line in lines) and lines[-1] == "DONE"


def test_cli_warns_once_when_inputs_are_not_skull_stripped(tmp_path, capsys):
    # The upper 60% of heads with 6 mm slices and 4 mm pixels: 19 slices.
    upper = ((0.4, 1.0), (0.0, 1.0), (0.0, 1.0))
    t1, t2 = (write_volume(cropped(reduced(mni_head(c, False, voxel_mm=2, seed=3), (3, 2, 2)), upper),
                           tmp_path / f"{c}.nii.gz") for c in ("t1", "t2"))
    code, _, err = _run(capsys, "translate", "--t1", t1, "--t2", t2, "--out-dir", tmp_path / "out", "--targets", "t1c",
                        "--quiet")
    assert code == 0, err
    lines = [line for line in err.splitlines() if "skull" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("warning: T1 and T2 do not look skull-stripped")
    # The micro model's card is the training recipe's export: it carries the recipe's requirement sentence.
    assert "'cdm-micro-test' expects skull-stripped brain MRI, T1 and T2 co-registered (BraTS-style)" in lines[0]
    assert "registered T2" not in err and not (tmp_path / "out" / "registration.json").exists()  # no --register


def test_registration_warning_carries_the_transform(sample):
    from MedDiffusionExtension.volume.register import register_to_reference

    t1, t2 = (reduced(v, (2, 2, 2)) for v in sample)
    with pytest.warns(RegistrationWarning) as caught:
        registered = register_to_reference(t2, t1, "T2", "T1")
    assert registered.same_grid(t1) and len(caught) == 1
    transform = caught[0].message.transform
    assert max(abs(a) for a in transform.rotation_deg) < 1 and np.linalg.norm(transform.translation_mm) < 1
