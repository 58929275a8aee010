"""`python -m training evaluate`: paper-shaped Markdown tables, results.json and a case figure, on micro models."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from training.cli import main as training_main
from training.phantoms import write_brats_case, write_btcv_dataset
from MedDiffusionExtension.errors import InputError

from tiny_models import write_micro_model


@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    write_micro_model(root, "cdm")
    write_micro_model(root, "sdseg")
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(root))
    return root


def test_translation_evaluation_writes_tables_and_figure_and_the_card_gets_its_own_row(tmp_path, models):
    data = tmp_path / "brats"
    write_brats_case(data, 0, seed=0, shape=(40, 40, 24))
    write_micro_model(models, "cdm", name="cdm-micro-test-ablation", seed=5)  # a name that begins like the model's
    out = tmp_path / "eval"
    assert training_main(["evaluate", "translation", "--data-root", str(data), "--split", "all", "--model",
                          "cdm-micro-test", "--compare", "cdm-micro-test-ablation", "--out", str(out),
                          "--samples", "2", "--device", "cpu", "--update-card"]) == 0
    report = (out / "README.md").read_text(encoding="utf-8")
    for heading in ("Table 1 analogue", "Whole-volume (3D)", "Table 4 analogue", "Inter-slice consistency"):
        assert heading in report
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    methods = [row[0] for row in results["table1"]]
    assert methods == ["Copy source (T1→T1c, T2→T2f)", "cdm-micro-test-ablation (3 steps)",
                       "C-UNet + ground-truth representation (upper bound)", "cdm-micro-test (3 steps)"]
    own, ablation = results["table1"][3], results["table1"][1]
    assert own[7] != ablation[7]  # different weights, different scores
    card = json.loads((models / "cdm-micro-test" / "card.json").read_text(encoding="utf-8"))
    assert card["metrics"]["average"]["psnr"] == own[7] and card["metrics"]["t1c"]["ssim"] == own[2]
    assert [row[0] for row in results["table4"]] == [3, 10, 20, 30, 40]  # the card's 3 steps plus the paper's sweep
    assert all(0 < row[2] <= 1 for row in results["table1"])  # SSIM in range
    assert matplotlib.image.imread(out / "case.png").shape[0] > 300


def test_comparing_the_evaluated_model_with_itself_is_refused(tmp_path, models, capsys):
    data = tmp_path / "brats"
    write_brats_case(data, 0, seed=0, shape=(40, 40, 24))
    assert training_main(["evaluate", "translation", "--data-root", str(data), "--split", "all", "--model",
                          "cdm-micro-test", "--compare", "cdm-micro-test", "--out", str(tmp_path / "eval")]) == 2
    assert "error: --compare names cdm-micro-test (3 steps), the model being evaluated" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_sample_means_add_one_row_each_and_a_count_below_two_is_refused(tmp_path, models, capsys):
    data = tmp_path / "brats"
    write_brats_case(data, 0, seed=0, shape=(40, 40, 24))
    out = tmp_path / "eval"
    assert training_main(["evaluate", "translation", "--data-root", str(data), "--split", "all", "--model",
                          "cdm-micro-test", "--core", "--sample-means", "2,4", "--out", str(out),
                          "--device", "cpu"]) == 0
    table1 = json.loads((out / "results.json").read_text(encoding="utf-8"))["table1"]
    assert [row[0] for row in table1] == ["Copy source (T1→T1c, T2→T2f)", "cdm-micro-test (3 steps)",
                                          "cdm-micro-test (3 steps), mean of 2 samples",
                                          "cdm-micro-test (3 steps), mean of 4 samples"]
    single, two, four = (row[7] for row in table1[1:])
    assert len({single, two, four}) == 3  # other draws, other outputs
    with pytest.raises(SystemExit) as refused:
        training_main(["evaluate", "translation", "--data-root", str(data), "--model", "cdm-micro-test",
                       "--sample-means", "1", "--out", str(tmp_path / "refused")])
    assert refused.value.code == 2
    assert "expected sample counts of 2 or more" in capsys.readouterr().err


def test_segmentation_evaluation_writes_tables_and_updates_the_card(tmp_path, models):
    data = tmp_path / "btcv"
    write_btcv_dataset(data, 1, seed=0, shape=(64, 64, 8))
    out = tmp_path / "eval"
    assert training_main(["evaluate", "segmentation", "--data-root", str(data), "--split", "all", "--model",
                          "sdseg-micro-test", "--out", str(out), "--samples", "2", "--device", "cpu", "--update-card",
                          "--outside-body-row"]) == 0
    report = (out / "README.md").read_text(encoding="utf-8")
    assert "Table 4 analogue" in report and "Table 5 analogue" in report
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [row[0] for row in results["rows"]][:2] == ["SDSeg single step", "SDSeg 10-step DDIM"]
    assert results["rows"][-1][0] == "SDSeg single step, labels outside the body kept (`--outside-body`)"
    assert results["ddim10_over_single_step"] > 0  # a timing: reported, never asserted against another timing
    card = json.loads((models / "sdseg-micro-test" / "card.json").read_text(encoding="utf-8"))
    assert 0 <= card["metrics"]["single_step"]["dice"] <= 1
    # One Dice per case and row; the card's is their mean, and a phantom set says it is synthetic.
    assert set(results["per_case_dice"]) == {row[0] for row in results["rows"]}
    per_case = results["per_case_dice"]["SDSeg single step"]
    assert len(per_case) == len(results["cases"])
    assert card["metrics"]["single_step"]["dice"] == pytest.approx(sum(per_case) / len(per_case))
    assert "synthetic abdominal CT phantoms" in card["metrics"]["measured_on"]
    assert (out / "case.png").is_file()


def test_segmentation_evaluation_scores_each_compared_model_in_a_row_of_its_own(tmp_path, models):
    data = tmp_path / "btcv"
    write_btcv_dataset(data, 1, seed=0, shape=(64, 64, 8))
    out = tmp_path / "eval"
    same = str(models / "sdseg-micro-test")  # the evaluated model again, by its folder: the same scores
    assert training_main(["evaluate", "segmentation", "--data-root", str(data), "--split", "all", "--model",
                          "sdseg-micro-test", "--compare", same, "--core", "--out", str(out), "--device", "cpu",
                          "--precision", "fp32"]) == 0
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
    assert [row[0] for row in rows] == ["SDSeg single step", f"sdseg-micro-test 0.1.0 (`{same}`), single step"]
    assert rows[1][1:4] == rows[0][1:4]


def test_bundled_cards_carry_the_numbers_of_their_evaluation_reports():
    root = Path(__file__).resolve().parents[1]
    cdm = json.loads((root / "Resources/Models/cdm-tiny-phantom/card.json").read_text(encoding="utf-8"))
    report = json.loads((root / "docs/evaluation/cdm/results.json").read_text(encoding="utf-8"))
    row = next(r for r in report["table1"] if r[0] == f"{cdm['name']} ({cdm['sampling']['steps']} steps)")
    metrics = cdm["metrics"]
    assert metrics["measured_on"].startswith(f"{len(report['cases'])} held-out")
    assert [metrics[t][k] for t in ("t1c", "t2f", "average") for k in ("psnr", "ssim", "mae")] == row[1:]

    sdseg = json.loads((root / "Resources/Models/sdseg-tiny-phantom/card.json").read_text(encoding="utf-8"))
    report = json.loads((root / "docs/evaluation/sdseg/results.json").read_text(encoding="utf-8"))
    single = next(r for r in report["rows"] if r[0] == "SDSeg single step")
    metrics = sdseg["metrics"]
    assert metrics["measured_on"].startswith(f"{len(report['cases'])} held-out")
    assert single[1].startswith(f"{metrics['single_step']['dice']:.4f} ± ") and single[2] == metrics["single_step"]["iou"]
    assert metrics.get("stability_pairwise_dice") == report["stability"].get("pairwise_dice")
    for name, card in (("cdm", cdm), ("sdseg", sdseg)):  # and the held-out acquisitions, under their own key
        shifted = json.loads((root / f"docs/evaluation/{name}-shifted/results.json").read_text(encoding="utf-8"))
        assert card["metrics"]["shifted"]["measured_on"].startswith(f"{len(shifted['cases'])} held-out")


def test_a_card_says_whether_it_was_measured_on_phantoms_or_scans(tmp_path):
    from types import SimpleNamespace

    from training.evaluation.common import measured_on

    args = SimpleNamespace(data_root=tmp_path, split="all")
    assert measured_on(2, args, "abdominal CT") == f"2 held-out abdominal CT scans ({tmp_path}, all split)"
    (tmp_path / "acquisitions.json").write_text('{"cases": {}}', encoding="utf-8")  # what the phantom writers leave
    assert measured_on(6, args, "brain MRI") == f"6 held-out synthetic brain MRI phantoms ({tmp_path}, all split)"


def test_the_spacing_study_takes_the_sample_ct_or_the_first_case_of_a_btcv_root(tmp_path):
    from training.evaluation.spacing import _ct_case

    root = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
    assert _ct_case(root)["image"].name == "PhantomAbdomenCT.nii.gz"
    data = tmp_path / "btcv"
    write_btcv_dataset(data, 2, seed=0, shape=(32, 32, 4))
    assert _ct_case(data) == {"image": data / "img" / "img0001.nii.gz", "label": data / "label" / "label0001.nii.gz"}
    (data / "label" / "label0001.nii.gz").unlink()
    with pytest.raises(InputError, match="has no label file"):
        _ct_case(data)
