"""`evaluate --precision`: the quality guard's numbers, one evaluation per precision and their comparison."""

from __future__ import annotations

import json

import pytest

from training.cli import main as training_main
from training.evaluation.common import GUARD_DICE, precision_comparison
from training.phantoms import write_btcv_dataset

from tiny_models import write_micro_model


@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    write_micro_model(root, "sdseg")
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(root))
    return root


@pytest.mark.filterwarnings("ignore:bf16 on this CPU")  # emulated here: the slowdown is not what is tested
def test_each_precision_is_evaluated_and_compared_with_the_first(tmp_path, models):
    data = tmp_path / "btcv"
    write_btcv_dataset(data, 1, seed=0, shape=(48, 48, 6))
    out = tmp_path / "eval"
    assert training_main(["evaluate", "segmentation", "--data-root", str(data), "--split", "all", "--model",
                          "sdseg-micro-test", "--out", str(out), "--core", "--device", "cpu",
                          "--precision", "fp32,bf16"]) == 0
    fp32 = json.loads((out / "fp32" / "results.json").read_text(encoding="utf-8"))
    bf16 = json.loads((out / "bf16" / "results.json").read_text(encoding="utf-8"))
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    verdict = json.loads((out / "precision.json").read_text(encoding="utf-8"))
    dice = {name: float(row[1].split()[0]) for name, row in (("fp32", fp32["rows"][0]), ("bf16", bf16["rows"][0]))}
    assert verdict == {"reference": "fp32", "within_guard": {"bf16": dice["fp32"] - dice["bf16"] <= GUARD_DICE}}
    table = (out / "precision.md").read_text(encoding="utf-8")
    assert f"| SDSeg single step | bf16 | dice | {dice['bf16']:.4f} | {dice['fp32']:.4f} |" in table


def test_the_guard_compares_psnr_and_dice_with_their_limits():
    translation = {"fp32": {"table1": [["CDM", 0, 0, 0, 0, 0, 0, 25.0, 0.80, 0.1]]},
                   "bf16": {"table1": [["CDM", 0, 0, 0, 0, 0, 0, 24.95, 0.79, 0.1]]},
                   "fp16": {"table1": [["CDM", 0, 0, 0, 0, 0, 0, 24.8, 0.80, 0.1]]}}
    text, verdict = precision_comparison("translation", translation)
    assert verdict == {"reference": "fp32", "within_guard": {"bf16": True, "fp16": False}}  # -0.05 dB vs -0.2 dB
    assert "| CDM | fp16 | psnr | 24.8000 | 25.0000 | -0.2000 | no |" in text
    segmentation = {"fp32": {"rows": [["SDSeg single step", "0.8000 ± 0.0100"]]},
                    "bf16": {"rows": [["SDSeg single step", "0.7940 ± 0.0100"]]}}
    assert precision_comparison("segmentation", segmentation)[1]["within_guard"] == {"bf16": False}  # -0.006 Dice


def test_unknown_precisions_and_card_updates_of_several_are_refused(tmp_path, models, capsys):
    with pytest.raises(SystemExit):
        training_main(["evaluate", "segmentation", "--data-root", str(tmp_path), "--model", "m", "--out",
                       str(tmp_path), "--precision", "fp32,fp8"])
    assert "expected precisions among auto, fp32, bf16, fp16" in capsys.readouterr().err
    assert training_main(["evaluate", "segmentation", "--data-root", str(tmp_path), "--model", "sdseg-micro-test",
                          "--out", str(tmp_path / "e"), "--precision", "fp32,bf16", "--update-card"]) == 2
    assert "--update-card takes one --precision" in capsys.readouterr().err
