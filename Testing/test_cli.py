"""The `meddiffusion` command line: outputs with the input geometry, every bad input refused in one line with no
output left behind, cohort mode, determinism and cancellation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from MedDiffusionExtension.cli import main
from MedDiffusionExtension.volume import Volume, read_volume, write_volume

from conftest import rotation
from tiny_models import write_micro_model


pytestmark = pytest.mark.usefixtures("micro_models_env")


def _brain(shape=(8, 40, 36), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    array = np.zeros(shape, np.float32)
    array[1:-1, 4:-4, 4:-4] = 200 + 100 * rng.random((shape[0] - 2, shape[1] - 8, shape[2] - 8))
    matrix = rotation(2, 10) @ np.diag([-1.0, -1.2, 3.0, 1.0])
    return Volume(array, matrix)


@pytest.fixture
def mri(tmp_path):
    t1 = write_volume(_brain(), tmp_path / "t1.nii.gz")
    t2 = write_volume(_brain(seed=1), tmp_path / "t2.nii.gz")
    return t1, t2


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_translate_writes_targets_with_the_t1_geometry(tmp_path, mri, capsys):
    t1, t2 = mri
    code, out, err = _run(capsys, "translate", "--t1", t1, "--t2", t2, "--out-dir", tmp_path / "out", "--quiet")
    assert code == 0, err
    reference = read_volume(t1)
    for target in ("t1c", "t2f"):
        synthetic = read_volume(tmp_path / "out" / f"{target}.nii.gz")
        assert synthetic.shape == reference.shape
        np.testing.assert_allclose(synthetic.ijk_to_ras, reference.ijk_to_ras, atol=1e-6)
        assert np.isfinite(synthetic.array).all() and 0 <= synthetic.array.min() and synthetic.array.max() <= 1000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t1c.nii.gz", "t2f.nii.gz"]


def test_samples_write_uncertainty_and_seed_is_deterministic(tmp_path, mri, capsys):
    t1, t2 = mri
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        code, _, err = _run(capsys, "translate", "--t1", t1, "--t2", t2, "--targets", "t1c", "--samples", "2",
                            "--seed", seed, "--out-dir", tmp_path / name, "--quiet", "--batch-size", 3)
        assert code == 0, err
        runs[name] = read_volume(tmp_path / name / "t1c.nii.gz").array
        std = read_volume(tmp_path / name / "t1c_std.nii.gz").array
        assert std.min() >= 0 and std.max() > 0
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])


def test_segment_writes_labels_and_probability(tmp_path, capsys):
    ct = _brain() .with_array(np.where(_brain().array > 0, 40.0, -1000.0).astype(np.float32))
    image = write_volume(ct, tmp_path / "ct.nrrd")
    code, out, err = _run(capsys, "segment", "--image", image, "--out", tmp_path / "seg.nii.gz", "--samples", "2", "--quiet")
    assert code == 0, err
    labels = nib.load(str(tmp_path / "seg.nii.gz"))
    assert labels.get_data_dtype() == np.uint8
    probability = read_volume(tmp_path / "seg_probability.nii.gz")
    assert 0 <= probability.array.min() and probability.array.max() <= 1
    np.testing.assert_allclose(read_volume(tmp_path / "seg.nii.gz").ijk_to_ras, ct.ijk_to_ras, atol=1e-5)


def test_models_list_and_show(capsys):
    code, out, _ = _run(capsys, "models", "list")
    assert code == 0 and "cdm-micro-test" in out and "sdseg-micro-test" in out
    code, out, _ = _run(capsys, "models", "show", "sdseg-micro-test")
    card = json.loads(out)
    assert code == 0 and card["method"] == "sdseg" and len(card["sha256"]) == 64


def _bad_inputs(tmp_path: Path, t1: Path, t2: Path) -> dict[str, tuple[list, str]]:
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(t1.read_bytes()[:200])
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"\x00" * 50)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((30, 30), np.float32), np.eye(4)), str(flat))
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(30, 30, 8, 2).astype(np.float32), np.eye(4)), str(four_d))
    nan = tmp_path / "nan.nii.gz"
    array = _brain().array.copy()
    array[2, 10, 10] = np.nan
    write_volume(_brain().with_array(array), nan)
    constant = write_volume(_brain().with_array(np.full((8, 40, 36), 7.0, np.float32)), tmp_path / "constant.nii.gz")
    thin = tmp_path / "thin.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(30, 30, 2).astype(np.float32), np.eye(4)), str(thin))
    out = tmp_path / "out"
    translate = lambda first, second=t2, *extra: ["translate", "--t1", first, "--t2", second, "--out-dir", out, *extra]  # noqa: E731
    return {
        "missing file": (translate(tmp_path / "absent.nii.gz"), "does not exist"),
        "unreadable file": (translate(garbage), "cannot read"),
        "truncated nii.gz": (translate(truncated), "truncated"),
        "2D volume": (translate(flat), "2D"),
        "4D volume": (translate(four_d), "4D"),
        "NaN voxels": (translate(nan), "NaN"),
        "constant volume": (translate(constant), "constant"),
        "too few slices": (translate(thin), "too few slices"),
        "output equals input": (["segment", "--image", t1, "--out", t1], "one of the inputs"),
        "unknown model": (translate(t1, t2, "--model", "no-such-model"), "unknown model"),
        "unknown target": (translate(t1, t2, "--targets", "pd"), "cannot synthesize"),
        "wrong task model": (translate(t1, t2, "--model", "sdseg-micro-test"), "segmentation model"),
        "bad device": (translate(t1, t2, "--device", "cuda:7"), "cuda"),
        "missing t2": (["translate", "--t1", t1, "--out-dir", out], "--t2"),
        "unknown organ": (["segment", "--image", t1, "--out", out / "seg.seg.nrrd", "--organs", "liver,heart"],
                          "does not segment 'liver'; its organs are abdominal_organs (or their label values 1)"),
        "empty organs": (["segment", "--image", t1, "--out", out / "seg.nii.gz", "--organs", " , "], "--organs is empty"),
    }


CASES = ["missing file", "unreadable file", "truncated nii.gz", "2D volume", "4D volume", "NaN voxels", "constant volume",
         "too few slices", "output equals input", "unknown model", "unknown target", "wrong task model", "bad device",
         "missing t2", "unknown organ", "empty organs"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line_and_leaves_nothing(tmp_path, mri, capsys, case):
    t1, t2 = mri
    argv, message = _bad_inputs(tmp_path, t1, t2)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    inputs_before = t1.read_bytes()
    code, out, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no output, no temporary file
    assert t1.read_bytes() == inputs_before


def test_checksum_mismatch_is_refused(tmp_path, mri, capsys, models_dir, monkeypatch):
    broken = tmp_path / "models"
    write_micro_model(broken, "cdm", name="cdm-tampered")
    weights = broken / "cdm-tampered" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(broken))
    t1, t2 = mri
    code, _, err = _run(capsys, "translate", "--t1", t1, "--t2", t2, "--out-dir", tmp_path / "out", "--model", "cdm-tampered")
    assert code == 2 and "do not match their card" in err and not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path, mri):
    t1, t2 = mri
    from MedDiffusionExtension.errors import InputError

    with pytest.raises(InputError):
        main(["--debug", "translate", "--t1", str(tmp_path / "absent.nii.gz"), "--t2", str(t2), "--out-dir", str(tmp_path / "o")])


def test_cohort_is_resumable_and_sharded(tmp_path, capsys, monkeypatch):
    rows = ["case_id,t1,t2"]
    for case in ("A", "B", "C"):
        write_volume(_brain(seed=ord(case)), tmp_path / f"{case}_t1.nii.gz")
        write_volume(_brain(seed=ord(case) + 1), tmp_path / f"{case}_t2.nii.gz")
        rows.append(f"{case},{case}_t1.nii.gz,{case}_t2.nii.gz")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    args = ["translate", "--cohort", tmp_path / "cohort.csv", "--out-dir", tmp_path / "out", "--quiet", "--targets", "t1c"]

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = _run(capsys, *args)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["B"]  # rank 1 of 2 takes every second case

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    first_b = (tmp_path / "out" / "B" / "t1c.nii.gz").stat().st_mtime_ns
    code, _, err = _run(capsys, *args)
    assert code == 0 and "B: done already, skipped" in err and "A: ok" in err and "C: ok" in err
    assert (tmp_path / "out" / "B" / "t1c.nii.gz").stat().st_mtime_ns == first_b


def test_cohort_reports_a_bad_case_and_goes_on(tmp_path, capsys):
    write_volume(_brain(), tmp_path / "t1.nii.gz")
    (tmp_path / "cohort.csv").write_text("case_id,t1,t2\nok,t1.nii.gz,t1.nii.gz\nbad,t1.nii.gz,absent.nii.gz\n")
    code, _, err = _run(capsys, "translate", "--cohort", tmp_path / "cohort.csv", "--out-dir", tmp_path / "out", "--quiet")
    assert code == 3 and "error: case bad:" in err and (tmp_path / "out" / "ok" / "t1c.nii.gz").exists()
    assert not (tmp_path / "out" / "bad").exists()


def test_sigterm_cancels_and_leaves_no_output(tmp_path, models_dir):
    long = write_volume(_brain(shape=(120, 40, 36)), tmp_path / "long.nii.gz")
    out = tmp_path / "out"
    env = dict(os.environ, MEDDIFFUSION_MODELS_DIR=str(models_dir))
    process = subprocess.Popen(
        [sys.executable, "-m", "MedDiffusionExtension.cli", "translate", "--t1", str(long), "--t2", str(long),
         "--out-dir", str(out), "--steps", "200", "--batch-size", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=Path(__file__).resolve().parents[1])
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: process.stderr.read(1), b"")), daemon=True)
    reader.start()
    deadline = time.time() + 60
    while b"slice 1/" not in b"".join(seen) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert b"slice 1/" in b"".join(seen), b"".join(seen).decode(errors="replace")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    reader.join(timeout=5)
    assert process.returncode == 130
    assert "cancelled; nothing was written" in b"".join(seen).decode()
    assert not out.exists() or list(out.iterdir()) == []
