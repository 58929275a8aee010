"""`python -m training evaluate`: paper-shaped Markdown tables, results.json and a case figure, on micro models."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from MedDiffusionExtension.data import write_brats_case, write_btcv_dataset
from training.cli import main as training_main

from tiny_models import write_micro_model


@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    write_micro_model(root, "cdm")
    write_micro_model(root, "sdseg")
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(root))
    return root


def test_translation_evaluation_writes_tables_and_figure(tmp_path, models):
    data = tmp_path / "brats"
    write_brats_case(data, 0, seed=0, shape=(40, 40, 24))
    out = tmp_path / "eval"
    assert training_main(["evaluate", "translation", "--data-root", str(data), "--split", "all", "--model",
                          "cdm-micro-test", "--out", str(out), "--samples", "2", "--device", "cpu"]) == 0
    report = (out / "README.md").read_text()
    for heading in ("Table 1 analogue", "Whole-volume (3D)", "Table 4 analogue", "Inter-slice consistency"):
        assert heading in report
    results = json.loads((out / "results.json").read_text())
    methods = [row[0] for row in results["table1"]]
    assert methods[0].startswith("Copy source") and any(m.startswith("cdm-micro-test") for m in methods)
    assert [row[0] for row in results["table4"]] == [3, 10, 20, 30, 40]  # the card's 3 steps plus the paper's sweep
    assert all(0 < row[2] <= 1 for row in results["table1"])  # SSIM in range
    assert matplotlib.image.imread(out / "case.png").shape[0] > 300


def test_segmentation_evaluation_writes_tables_and_updates_the_card(tmp_path, models):
    data = tmp_path / "btcv"
    write_btcv_dataset(data, 1, seed=0, shape=(64, 64, 8))
    out = tmp_path / "eval"
    assert training_main(["evaluate", "segmentation", "--data-root", str(data), "--split", "all", "--model",
                          "sdseg-micro-test", "--out", str(out), "--samples", "2", "--device", "cpu", "--update-card"]) == 0
    report = (out / "README.md").read_text()
    assert "Table 4 analogue" in report and "Table 5 analogue" in report
    results = json.loads((out / "results.json").read_text())
    assert [row[0] for row in results["rows"]][:2] == ["SDSeg single step", "SDSeg 10-step DDIM"]
    assert results["ddim10_over_single_step"] > 1
    card = json.loads((models / "sdseg-micro-test" / "card.json").read_text())
    assert 0 <= card["metrics"]["single_step"]["dice"] <= 1
    assert (out / "case.png").is_file()
