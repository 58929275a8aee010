"""`python -m training evaluate translation-ceiling`: a phantom set's references against themselves without their
own noise and bias field, on the translation evaluation's scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedDiffusionExtension import metrics
from MedDiffusionExtension.volume import read_volume, write_volume
from training.cli import main as training_main
from training.phantoms import write_brats_dataset
from training.phantoms.brain import simulate_brain
from training.phantoms.layouts import case_seed

SHAPE = (40, 40, 24)
pytestmark = pytest.mark.usefixtures("micro_models_env")  # cdm-micro-test: its card's normalization is the scale


def _ceiling(data, out) -> dict:
    assert training_main(["evaluate", "translation-ceiling", "--data-root", str(data), "--split", "all",
                          "--model", "cdm-micro-test", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_the_shifted_sets_bias_fields_lower_the_ceiling_far_below_the_noise_alone(tmp_path):
    shifted = tmp_path / "shifted"
    write_brats_dataset(shifted, 2, seed=1000, shape=SHAPE, acquisition="shifted")
    results = _ceiling(shifted, tmp_path / "out")
    noise, both = (results["table"][row] for row in ("Reference without its noise",
                                                     "Reference without its noise and bias field"))
    assert [case["case"] for case in results["per_case"]] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert 25 < noise["Avg PSNR"] < 60 and both["Avg PSNR"] < noise["Avg PSNR"] - 5  # bias log SD 0.25-0.40
    assert 0 < both["Avg SSIM"] < noise["Avg SSIM"] < 1
    assert both["T2w PSNR"] < noise["T2w PSNR"] - 5  # EDTS-Trans's target, scored alike
    assert "Reference without its noise and bias field" in (tmp_path / "out" / "README.md").read_text(encoding="utf-8")

    # The noise-free render is the same case: its difference to the file is the noise, about sigma everywhere.
    clean = simulate_brain(case_seed(1000, 0), SHAPE, acquisition="shifted", sequences=("t2f",), scanner_noise=False)
    noisy = read_volume(shifted / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t2f.nii.gz").array
    brain = clean.brain_mask
    assert not np.array_equal(clean.images["t2f"], noisy)
    assert np.corrcoef(clean.images["t2f"][brain], noisy[brain])[0, 1] > 0.9


def test_a_low_bias_set_has_a_higher_ceiling_and_the_rows_match_an_independent_psnr(tmp_path):
    fixed = tmp_path / "fixed"
    write_brats_dataset(fixed, 1, seed=3, shape=SHAPE)  # the fixed acquisition: bias log SD 0.04-0.12
    results = _ceiling(fixed, tmp_path / "out")
    both = results["table"]["Reference without its noise and bias field"]["Avg PSNR"]
    shifted = tmp_path / "shifted"
    write_brats_dataset(shifted, 1, seed=3, shape=SHAPE, acquisition="shifted")
    assert both > _ceiling(shifted, tmp_path / "out2")["table"]["Reference without its noise and bias field"]["Avg PSNR"]

    # One slice by hand: the reference and the bias- and noise-free render on [0, 1] by the card's percentiles.
    from MedDiffusionExtension.volume.normalize import fit_mri_scaling

    reference = read_volume(fixed / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1c.nii.gz").array
    ideal = simulate_brain(case_seed(3, 0), SHAPE, sequences=("t1c",), scanner_noise=False, bias_field=False).images["t1c"]
    unit = [(fit_mri_scaling(a).forward(a) + 1) / 2 for a in (ideal, reference)]
    middle = SHAPE[2] // 2
    by_hand = metrics.psnr(unit[0][middle], unit[1][middle])
    from skimage.metrics import peak_signal_noise_ratio

    assert by_hand == pytest.approx(peak_signal_noise_ratio(unit[1][middle], unit[0][middle], data_range=1.0), abs=1e-6)
    per_case = results["per_case"][0]["noise+bias t1c psnr_2d"]
    assert per_case == pytest.approx(results["rows"]["Reference without its noise and bias field"][0]["psnr_2d"])
    assert min(by_hand, per_case) > 10


def test_a_set_that_is_not_a_phantom_set_or_was_edited_is_refused(tmp_path, capsys):
    data = tmp_path / "brats"
    write_brats_dataset(data, 1, seed=0, shape=SHAPE)
    path = data / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1c.nii.gz"
    volume = read_volume(path)
    write_volume(volume.with_array(volume.array + 1), path)
    out = tmp_path / "out"
    assert training_main(["evaluate", "translation-ceiling", "--data-root", str(data), "--split", "all",
                          "--model", "cdm-micro-test", "--out", str(out)]) == 2
    assert "re-rendering its seed does not reproduce the files" in capsys.readouterr().err
    (data / "acquisitions.json").unlink()
    assert training_main(["evaluate", "translation-ceiling", "--data-root", str(data), "--split", "all",
                          "--model", "cdm-micro-test", "--out", str(out)]) == 2
    assert "has no acquisitions.json" in capsys.readouterr().err
    assert not (out / "results.json").exists()
