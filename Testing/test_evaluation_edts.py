"""`python -m training evaluate translation` on an EDTS-Trans model: the paper-shaped tables, the speed study and the
figure, end to end on a tiny BraTS-layout phantom with micro random-weight models; one number of each table kind
recomputed here with scikit-image and numpy."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio

from MedDiffusionExtension.volume import AxialReorientation, read_volume, scaling_from_card
from MedDiffusionExtension.volume.normalize import foreground_mask
from MedDiffusionExtension.weights import read_card
from training.cli import main as training_main
from training.evaluation.edts_report import ROWS
from training.phantoms import write_brats_case

from test_edts_pipeline import write_unet_t2_model
from tiny_models import write_micro_model


@pytest.fixture
def evaluated(tmp_path, monkeypatch):
    models = tmp_path / "models"
    write_micro_model(models, "edts", sampling_steps=2)
    no_ssim = write_micro_model(models, "edts", name="edts-micro-no-ssim", seed=7, sampling_steps=2)
    card = json.loads((no_ssim / "card.json").read_text(encoding="utf-8"))
    card["loss"]["ssim_weight"] = 0.0  # what `--set ssim_weight=0` records (the sha256 covers the weights only)
    (no_ssim / "card.json").write_text(json.dumps(card), encoding="utf-8")
    write_unet_t2_model(models)
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(models))
    data = tmp_path / "brats"
    write_brats_case(data, 0, seed=0, shape=(40, 40, 10))
    out = tmp_path / "eval"
    assert training_main(["evaluate", "translation", "--data-root", str(data), "--split", "all", "--model",
                          "edts-micro-test", "--baseline", "unet-t2-micro-test", "--compare", "edts-micro-no-ssim",
                          "--out", str(out), "--device", "cpu", "--update-card",
                          # fp32 on any CPU: `auto` is bf16 where the CPU has native units, and the rows compared
                          # below (two passes over other slice batches) then differ by bf16 rounding.
                          "--precision", "fp32"]) == 0
    return data, out, models


def _copy_t1_psnr_and_reference_statistics(data, card) -> tuple[float, float, float]:
    """The copy-T1 row's PSNR and Table I's reference mean and variance, with scikit-image and numpy."""
    psnrs, brains = [], []  # per case, then averaged over cases as the report does
    for folder in sorted(data.iterdir()):
        if not folder.is_dir():
            continue
        t1, t2 = (read_volume(folder / f"{folder.name}-{m}.nii.gz") for m in ("t1n", "t2w"))
        axial = AxialReorientation.for_volume(t1).apply
        unit = [axial((scaling_from_card(card.normalization, v.array).forward(v.array) + 1) / 2) for v in (t1, t2)]
        brain = axial(foreground_mask(t1.array))
        counted = [k for k in range(brain.shape[0]) if brain[k].mean() >= 0.05]
        psnrs += [np.mean([peak_signal_noise_ratio(unit[1][k], unit[0][k], data_range=1.0) for k in counted])]
        brains.append(unit[1][brain] * 255.0)
    return float(np.mean(psnrs)), float(np.mean([b.mean() for b in brains])), float(np.mean([b.var() for b in brains]))


def test_edts_evaluation_writes_the_papers_tables_the_speed_study_and_the_figure(evaluated):
    data, out, models = evaluated
    report = (out / "README.md").read_text(encoding="utf-8")
    for heading in ("Table I analogue", "Table II analogue", "Table IV analogue", "Speed study", "is not a T1 → T2 model"):
        assert heading in report
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [row[0] for row in results["table1"]] == [
        "MRI T1 (input)", "MRI T2 (reference)", "Regression result T2_bar (RegN)",
        "Diffusion result T2_tilde (refiner)", "Fused output T2_out"]
    table2 = {row[0]: row for row in results["table2"]}
    assert list(table2) == [ROWS.copy, ROWS.regn, ROWS.without_mask, ROWS.fused, ROWS.default,
                            "Plain UNet T1→T2 (unet-t2-micro-test)"]
    assert [row[0] for row in results["table4"]] == ["w/o M", "Th-0.4", "w/o L_ssim (edts-micro-no-ssim)",
                                                     "Ours (EDTS-Trans, fused)"]
    assert [row[0] for row in results["speed"]] == [
        ROWS.speed_every_slice, ROWS.speed_default,
        "every slice, refine strength 0.75: all 2 steps, from pure noise",  # round(1.5) = 2: the whole chain
        "every slice, refine strength 0.5: the last 1 of 2 steps, from T2_bar noised to t = 499",
        "every slice, refine strength 0.25: the last 1 of 2 steps, from T2_bar noised to t = 499"]
    # Every measured row has its seconds per volume; copying T1 takes no model.
    assert table2[ROWS.copy][5] == "" and all(row[5] > 0 for name, row in table2.items() if name != ROWS.copy)
    assert all(0 < row[2] <= 1 and row[4] > 0 for row in results["table2"])  # SSIM in range, sharpness positive

    card = read_card(models / "edts-micro-test")
    psnr, mean, variance = _copy_t1_psnr_and_reference_statistics(data, card)
    assert table2[ROWS.copy][1] == pytest.approx(psnr, abs=1e-6)
    reference_row = results["table1"][1]
    assert reference_row[1:3] == pytest.approx([mean, variance], rel=1e-6)
    t2_bar_row = results["table1"][2]
    assert t2_bar_row[3] == pytest.approx(t2_bar_row[1] - reference_row[1], abs=1e-9)  # Δ: against the reference
    assert t2_bar_row[5] == pytest.approx(table2[ROWS.regn][1])  # Table I's PSNR is Table II's RegN row
    # The evaluation's own pass (which also returns T2_bar, M, T2_tilde) is the task layer's every-slice output.
    speed = {row[0]: row for row in results["speed"]}
    assert speed[ROWS.speed_every_slice][3] == pytest.approx(table2[ROWS.fused][1], abs=1e-4)
    assert speed[ROWS.speed_every_slice][2] == pytest.approx(1.0) and speed[ROWS.speed_every_slice][4] == 0.0
    assert 0 < results["refined_windows"]["refined"] <= results["refined_windows"]["items"]

    metrics = json.loads((models / "edts-micro-test" / "card.json").read_text(encoding="utf-8"))["metrics"]
    assert metrics["t2w"]["psnr"] == table2[ROWS.default][1] and metrics["regn_only"]["ssim"] == table2[ROWS.regn][2]
    assert metrics["baseline_unet"]["psnr"] == table2["Plain UNet T1→T2 (unet-t2-micro-test)"][1]
    figure = matplotlib.image.imread(out / "case.png")
    assert figure.shape[1] > 3 * figure.shape[0]  # one row of seven panels


def test_sharpness_is_the_high_frequency_energy_ratio_to_the_reference():
    from training.evaluation.edts_scores import sharpness_ratio

    rng = np.random.default_rng(0)
    reference = rng.random((3, 24, 24))
    brain = np.ones_like(reference, bool)
    counted = np.array([True, True, False])
    blurred = np.stack([ndimage.gaussian_filter(s, 2.0) for s in reference])
    assert sharpness_ratio(reference, reference, brain, counted) == pytest.approx(1.0)
    assert sharpness_ratio(blurred, reference, brain, counted) < 0.2  # smoothing removes fine detail
    # Doubling the contrast quadruples the high-pass energy.
    assert sharpness_ratio(2 * reference, reference, brain, counted) == pytest.approx(4.0)
    high = [s - ndimage.gaussian_filter(s, 1.0) for s in reference[:2]]
    assert sharpness_ratio(blurred, reference, brain, counted) == pytest.approx(
        np.mean([(b - ndimage.gaussian_filter(b, 1.0)) ** 2 for b in blurred[:2]]) / np.mean(np.square(high)))


def test_a_baseline_that_is_not_t1_to_t2_is_refused(tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    write_micro_model(models, "edts", sampling_steps=2)
    write_micro_model(models, "cdm")
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(models))
    write_brats_case(tmp_path / "brats", 0, seed=0, shape=(40, 40, 12))
    assert training_main(["evaluate", "translation", "--data-root", str(tmp_path / "brats"), "--split", "all",
                          "--model", "edts-micro-test", "--baseline", "cdm-micro-test", "--out",
                          str(tmp_path / "eval")]) == 2
    assert "error: --baseline cdm-micro-test takes t1, t2 and makes t1c, t2f; a T1 -> T2 baseline" in \
        capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
