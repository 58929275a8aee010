"""`python -m training evaluate segmentation` for a multi-organ model (BTCV protocol), on micro models: per-organ
tables, numbers checked against numpy and MONAI, the card's metrics, the memory worker and the MedSegDiff-like pass."""

from __future__ import annotations

import json
import warnings

import matplotlib.image
import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from MedDiffusionExtension import metrics
from MedDiffusionExtension.volume import read_volume
from MedDiffusionExtension.weights import load_model
from training.cli import main as training_main
from training.evaluation.common import run_model
from training.evaluation.peak_memory import measure_peak_memory
from training.evaluation.pixel_diffusion import backbone, denoising_pass_seconds
from training.phantoms import write_btcv_dataset

from tiny_models import MICRO_SEGUNET, write_micro_model

ORGANS = list(range(1, 14))
EIGHT = ["aorta", "gallbladder", "spleen", "left kidney", "right kidney", "liver", "pancreas", "stomach"]


def _monai_hd95(prediction, reference, spacing) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute_hausdorff_distance(torch.as_tensor(prediction[None, None]),
                                                torch.as_tensor(reference[None, None]), include_background=True,
                                                percentile=95, spacing=spacing).item())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One evaluation of a one-hot multi-organ micro model with every kind of row, shared by the tests below."""
    root = tmp_path_factory.mktemp("organs")
    models = root / "models"
    write_micro_model(models, "sdseg", name="organs-onehot", organs=ORGANS)
    write_micro_model(models, "sdseg", name="organs-bits", organs=ORGANS, mask_encoding="analog_bits", seed=1)
    write_micro_model(models, "segunet", name="organs-unet", organs=ORGANS, seed=2)
    write_micro_model(models, "sdseg", name="union-micro", seed=3)
    data = root / "btcv"
    # A 256 mm field of view: one micro-model window per slice (the body is cut; esophagus is outside it).
    case = write_btcv_dataset(data, 1, seed=0, shape=(32, 32, 6), spacing=(8.0, 8.0, 20.0))[0]
    out = root / "eval"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDDIFFUSION_MODELS_DIR", str(models))
        assert training_main(["evaluate", "segmentation", "--data-root", str(data), "--split", "all", "--model",
                              "organs-onehot", "--baseline", "organs-unet", "--compare", "organs-bits,union-micro",
                              "--out", str(out), "--samples", "2", "--device", "cpu", "--update-card",
                              "--no-memory"]) == 0
        yield {"models": models, "case": case, "out": out, "report": (out / "README.md").read_text(encoding="utf-8"),
               "results": json.loads((out / "results.json").read_text(encoding="utf-8"))}


def _table(report: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table under `heading`, header row first."""
    lines = report.split(f"## {heading}\n", 1)[1].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table


def test_tables_have_a_row_per_method_and_a_column_per_organ(evaluated):
    dice = _table(evaluated["report"], "Dice, 8 organs of the TransUNet split")
    assert dice[0] == ["Method", "Design", *EIGHT, "mean 8", "mean 13", "union"]
    methods = ["SDSeg single step", "SDSeg 10-step DDIM", "SDSeg single step, 2-sample ensemble",
               "UNet (non-diffusion baseline)", "organs-bits 0.1.0", "union-micro 0.1.0"]
    assert [row[0] for row in dice[1:]] == methods
    assert [row[1] for row in dice[1:]][3:] == ["pixel UNet, 14 classes", "latent, analog_bits (4 mask channels)",
                                                 "latent, binary union mask"]
    union_row = dice[-1]
    assert union_row[2:12] == ["—"] * 10 and float(union_row[12].split(" ± ")[0]) > 0  # union Dice only
    hd95 = _table(evaluated["report"], "HD95 (mm)")
    assert hd95[0] == dice[0] and [row[0] for row in hd95[1:]] == methods
    every = _table(evaluated["report"], "Every organ of the model (Dice / HD95 mm)")
    assert len(every) == 1 + 13 and every[0] == ["Organ", *methods]
    speed = _table(evaluated["report"], "Speed and memory")
    assert [row[0] for row in speed[1:]] == methods + [
        "MedSegDiff-like pixel diffusion (50 steps × 5 samples), extrapolated from a measured pass"]
    design = _table(evaluated["report"], "Design comparison")
    assert [row[1] for row in design[1:]] == ["SDSeg single step", *methods[3:]]
    assert "## Targets" in evaluated["report"]
    assert [m["name"] for m in evaluated["results"]["methods"]] == methods


def test_per_organ_numbers_equal_numpy_and_monai_on_the_case(evaluated):
    case = evaluated["case"]
    image = read_volume(case["image"])
    reference = read_volume(case["label"]).array
    # The same single step again (seeded noise per slice): the prediction the evaluation scored.
    prediction = run_model(load_model(evaluated["models"] / "organs-onehot"), {"image": image}, device="cpu",
                           batch_size=8, steps=1)["labels"].array
    single = evaluated["results"]["per_case"]["SDSeg single step"][0]
    keys = [organ["key"] for organ in evaluated["results"]["organs"]]
    for label, key in zip(ORGANS, keys):
        p, r = prediction == label, reference == label
        expected = 2 * np.logical_and(p, r).sum() / (p.sum() + r.sum()) if p.sum() + r.sum() else 1.0
        assert single["organs"][key]["dice"] == pytest.approx(expected, abs=1e-12)
    esophagus = single["organs"]["esophagus"]  # outside the field of view: the empty-mask convention
    assert not (reference == 5).any()
    assert (esophagus["dice"], esophagus["hd95"]) == ((0.0, None) if (prediction == 5).any() else (1.0, 0.0))
    union = 2 * np.logical_and(prediction > 0, reference > 0).sum() / ((prediction > 0).sum() + (reference > 0).sum())
    assert single["union"]["dice"] == pytest.approx(union, abs=1e-12)
    spacing = tuple(image.spacing[::-1])  # (k, j, i), as the arrays
    both = [(label, key) for label, key in zip(ORGANS, keys) if (prediction == label).any() and (reference == label).any()]
    assert both
    for label, key in both[:3]:
        assert single["organs"][key]["hd95"] == pytest.approx(
            _monai_hd95(prediction == label, reference == label, spacing), rel=1e-5)
    methods = evaluated["results"]["methods"]
    assert methods[0]["mean13_dice"] == pytest.approx(np.mean([single["organs"][k]["dice"] for k in keys]))
    assert methods[0]["mean8_dice"] == pytest.approx(
        np.mean([single["organs"][k]["dice"] for k in evaluated["results"]["transunet_eight"]]))
    assert methods[-1]["dice"]["liver"] is None and methods[-1]["union_dice"] > 0  # the binary union model


def test_the_card_gets_per_organ_metrics(evaluated):
    card = json.loads((evaluated["models"] / "organs-onehot" / "card.json").read_text(encoding="utf-8"))
    metrics_ = card["metrics"]
    single, baseline = evaluated["results"]["methods"][0], evaluated["results"]["methods"][3]
    assert metrics_["measured_on"].startswith("1 held-out")
    assert metrics_["single_step"]["dice"] == single["dice"] and len(single["dice"]) == 13
    for key in ("mean13_dice", "mean8_dice", "union_dice"):
        assert metrics_["single_step"][key] == single[key]
    assert metrics_["baseline_unet_mean13_dice"] == baseline["mean13_dice"]


def test_speed_rows_and_the_extrapolated_medsegdiff_like_total(evaluated):
    results = evaluated["results"]
    medsegdiff = results["medsegdiff_like"]
    assert medsegdiff["extrapolated"] and (medsegdiff["in_channels"], medsegdiff["out_channels"]) == (15, 14)
    assert medsegdiff["seconds_per_volume"] == pytest.approx(
        medsegdiff["seconds_per_pass_per_slice"] * 50 * 5 * np.mean(results["slices"]))
    single = results["methods"][0]["seconds_per_volume"]
    assert results["ratios"]["medsegdiff_like_over_single_step"] == pytest.approx(medsegdiff["seconds_per_volume"] / single)
    assert results["ratios"]["ddim10_over_single_step"] == pytest.approx(results["methods"][1]["seconds_per_volume"] / single)
    assert results["ratios"]["single_step_over_union_model"] == pytest.approx(
        single / results["methods"][-1]["seconds_per_volume"])
    assert matplotlib.image.imread(evaluated["out"] / "case.png").shape[0] > 500  # axial and coronal rows


def test_label_metrics_equal_the_binary_metrics_of_each_label_and_monai():
    rng = np.random.default_rng(0)
    reference = np.digitize(ndimage.gaussian_filter(rng.standard_normal((14, 30, 26)), 2.0), [-0.1, 0.05, 0.2])
    prediction = np.digitize(ndimage.gaussian_filter(rng.standard_normal((14, 30, 26)), 2.0), [-0.1, 0.05, 0.2])
    prediction[prediction == 2] = 0  # label 2 absent from the prediction only
    spacing = (3.0, 0.8, 1.2)
    scores = metrics.label_metrics(prediction, reference, [1, 2, 3, 5], spacing)
    for label in (1, 3):
        assert scores[label] == metrics.segmentation_metrics(prediction == label, reference == label, spacing)
        assert scores[label]["hd95"] == pytest.approx(_monai_hd95(prediction == label, reference == label, spacing),
                                                      rel=1e-5)
    assert scores[2] == {"dice": 0.0, "iou": 0.0, "hd95": float("inf")}  # in one mask only
    assert scores[5] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}  # in neither


def test_peak_memory_is_measured_in_a_process_of_its_own(tmp_path):
    model = write_micro_model(tmp_path / "models", "sdseg", organs=[1, 6])
    case = write_btcv_dataset(tmp_path / "btcv", 1, seed=0, shape=(40, 40, 4))[0]
    measured = measure_peak_memory(str(model), str(case["image"]), steps=1, samples=1, device="cpu", batch_size=4)
    assert set(measured) == {"peak_rss_mib", "increase_mib"}
    assert measured["peak_rss_mib"] > 0 and 0 <= measured["increase_mib"] <= measured["peak_rss_mib"]


def test_the_pixel_diffusion_pass_takes_the_backbone_of_a_unet_or_cunet_architecture():
    cunet = {**MICRO_SEGUNET["unet"], "conditioned": True, "fusion": "add", "output_activation": "none"}
    assert backbone(cunet) == MICRO_SEGUNET["unet"]
    assert denoising_pass_seconds(cunet, 3, 2, 16, 2, "cpu") > 0


def test_comparing_a_multi_organ_model_with_itself_is_refused(tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    write_micro_model(models, "sdseg", name="organs-onehot", organs=[1, 6])
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(models))
    write_btcv_dataset(tmp_path / "btcv", 1, seed=0, shape=(40, 40, 4))
    assert training_main(["evaluate", "segmentation", "--data-root", str(tmp_path / "btcv"), "--split", "all",
                          "--model", "organs-onehot", "--compare", str(models / "organs-onehot"),
                          "--out", str(tmp_path / "eval")]) == 2
    assert "the model being evaluated" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
