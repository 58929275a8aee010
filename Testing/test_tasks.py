"""The task layer: one contract per task for the CLI, the runner, the Slicer Logics and the evaluation."""

from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from MedDiffusionExtension import runner, tasks
from MedDiffusionExtension.cli import main
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import Volume, read_volume, write_volume
from MedDiffusionExtension.weights import ModelRegistry, read_card
from MedDiffusionExtension.weights.card import CardError, parse_card

from tiny_models import write_micro_model


pytestmark = pytest.mark.usefixtures("micro_models_env")


def _registry(models_dir) -> ModelRegistry:
    return ModelRegistry([models_dir])


def _card_data(models_dir, name="cdm-micro-test") -> dict:
    return json.loads((models_dir / name / "card.json").read_text(encoding="utf-8"))


def test_the_task_layer_imports_no_torch():
    import subprocess

    code = "import sys, MedDiffusionExtension.tasks, MedDiffusionExtension.runner; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_job_form_round_trips_and_refuses_unknown_fields():
    request = tasks.TranslateRequest(model="m", targets=("t1c",), settings=tasks.RunSettings(samples=3, steps=4, seed=7))
    job = request.to_job()
    assert job["task"] == "translate" and job["targets"] == ["t1c"] and job["samples"] == 3
    assert tasks.request_from_job(json.loads(json.dumps(job))) == request
    segment = tasks.SegmentRequest(threshold=0.3, settings=tasks.RunSettings(precision="fp32"))
    assert tasks.request_from_job(segment.to_job()) == segment
    with pytest.raises(InputError, match="unknown field.*treshold"):
        tasks.request_from_job(dict(segment.to_job(), treshold=0.2))
    with pytest.raises(InputError, match="samples must be a whole number of at least 1"):
        tasks.request_from_job(dict(segment.to_job(), samples=0))
    with pytest.raises(InputError, match="task is one of"):
        tasks.request_from_job({"task": "denoise"})


@pytest.mark.parametrize("bad, message", [
    (dict(samples=True), "samples"), (dict(steps=0), "steps"), (dict(batch_size=1.5), "batch_size"),
    (dict(precision="fp8"), "precision"), (dict(device=""), "device"),
])
def test_run_settings_refuse_bad_values(bad, message):
    with pytest.raises(InputError, match=message):
        tasks.RunSettings(**bad)


def test_output_names_and_files_are_one_rule(models_dir, tmp_path):
    registry = _registry(models_dir)
    request = tasks.TranslateRequest(targets=("t2f", "t1c", "t2f"), settings=tasks.RunSettings(samples=2))
    assert request.targets == ("t2f", "t1c")  # a repeated target is not computed twice
    card = request.card(registry)
    assert request.output_names(card) == ["t2f", "t1c", "t2f_std", "t1c_std"]
    assert request.output_files(card, tmp_path)["t1c_std"] == tmp_path / "t1c_std.nii.gz"
    assert tasks.TranslateRequest().output_names(card) == list(card.output_names)  # (): every output

    segment = tasks.SegmentRequest(settings=tasks.RunSettings(samples=2))
    seg_card = segment.card(registry)
    assert segment.output_files(seg_card, tmp_path / "ct.seg.nrrd") == {  # a segmentation file's probability: .nrrd
        "labels": tmp_path / "ct.seg.nrrd", "probability": tmp_path / "ct_probability.nrrd"}
    assert segment.output_files(seg_card, tmp_path / "ct.mha")["probability"] == tmp_path / "ct_probability.mha"
    assert segment.cohort_destination(tmp_path, "c1") == tmp_path / "c1.nii.gz"
    assert tasks.SegmentRequest().output_names(seg_card) == ["labels"]


def test_a_baseline_draws_one_sample_and_is_never_the_default(models_dir, tmp_path):
    data = dict(_card_data(models_dir), method="cunet", name="cunet-micro", default=True)
    del data["sampling"]
    baseline = parse_card(data, tmp_path)
    request = tasks.TranslateRequest(settings=tasks.RunSettings(samples=4))
    request.check(baseline)  # a baseline needs no sampler
    assert request.output_names(baseline) == ["t1c", "t2f"]  # deterministic: no _std outputs to promise
    with pytest.raises(InputError, match="lacks sampling"):
        request.check(parse_card(dict(data, method="cdm"), tmp_path))


def test_default_model_choice(models_dir, tmp_path):
    root = tmp_path / "models"
    write_micro_model(root, "cdm", name="b-cdm")
    flagged = write_micro_model(root, "cdm", name="c-cdm")
    registry = ModelRegistry([root])
    assert tasks.choose_model("translation", registry=registry).name == "b-cdm"  # by name without a flag
    data = json.loads((flagged / "card.json").read_text(encoding="utf-8"))
    (flagged / "card.json").write_text(json.dumps(dict(data, default=True)))
    assert tasks.choose_model("translation", registry=registry).name == "c-cdm"
    with pytest.raises(InputError, match="no SDSeg model is installed"):
        tasks.choose_model("segmentation", method="sdseg", registry=registry)
    with pytest.raises(InputError, match="not a segmentation model"):
        tasks.SegmentRequest(model="c-cdm").card(registry)


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(outputs=["t1c"]), "outputs"),
    (lambda d: d["sampling"].update(steps="30"), "sampling.steps"),
    (lambda d: d["sampling"].pop("prediction_type"), "sampling.prediction_type"),
    (lambda d: d["normalization"].update(kind="zscore"), "normalization.kind"),
    (lambda d: d.update(segments=[{"name": "liver", "label": 0}], task="segmentation"), "segments\\[0\\].label"),
])
def test_a_malformed_card_names_the_bad_field(models_dir, tmp_path, change, field):
    data = _card_data(models_dir)
    change(data)
    with pytest.raises(CardError, match=field):
        parse_card(data, tmp_path)


def test_a_broken_user_model_does_not_hide_the_others(models_dir, tmp_path):
    root = tmp_path / "models"
    write_micro_model(root, "cdm")
    (root / "broken").mkdir()
    (root / "broken" / "card.json").write_text("{not json")
    with pytest.warns(UserWarning, match="skipped the model in .*broken"):
        cards = ModelRegistry([root]).cards()
    assert list(cards) == ["cdm-micro-test"]


def test_card_typed_parts(models_dir):
    card = read_card(models_dir / "sdseg-micro-test")
    assert card.sampling.steps == 1 and card.sampling.schedule.num_steps == 1000
    assert card.normalization.kind == "ct_window" and card.normalization.window == (-175.0, 250.0)
    assert card.segments[0].label == 1 and card.image_size == 32
    scale = card.output_range
    values = np.array([-1.0, 0.0, 1.0])
    assert np.allclose(scale.to_unit(scale.from_model(values)), [0.0, 0.5, 1.0])


def _brain(seed) -> Volume:
    rng = np.random.default_rng(seed)
    array = np.zeros((6, 32, 30), np.float32)
    array[1:-1, 4:-4, 4:-4] = 200 + 100 * rng.random((4, 24, 22))
    return Volume(array, np.diag([-1.0, -1.2, 3.0, 1.0]))


def test_cli_and_runner_give_the_same_outputs_through_the_same_contract(tmp_path, capsys):
    t1, t2 = write_volume(_brain(0), tmp_path / "t1.nii.gz"), write_volume(_brain(1), tmp_path / "t2.nii.gz")
    assert main(["translate", "--t1", str(t1), "--t2", str(t2), "--targets", "t1c", "--samples", "2",
                 "--seed", "5", "--out-dir", str(tmp_path / "cli"), "--quiet"]) == 0
    capsys.readouterr()
    request = tasks.TranslateRequest(targets=("t1c",), settings=tasks.RunSettings(samples=2, seed=5))
    card = request.card()
    job = dict(request.to_job(card), inputs={"t1": "t1.nii.gz", "t2": "t2.nii.gz"},
               outputs={name: f"job/{name}.nii.gz" for name in request.output_names(card)})
    (tmp_path / "job.json").write_text(json.dumps(job))
    stream = io.StringIO()
    assert runner.main([str(tmp_path / "job.json")], stream=stream, install_signal_handlers=False) == tasks.EXIT_OK
    for name in ("t1c", "t1c_std"):
        from_cli, from_runner = read_volume(tmp_path / "cli" / f"{name}.nii.gz"), read_volume(tmp_path / "job" / f"{name}.nii.gz")
        assert np.array_equal(from_cli.array, from_runner.array)
        assert np.array_equal(from_cli.ijk_to_ras, from_runner.ijk_to_ras)


def test_runner_refuses_outputs_that_differ_from_the_contract(tmp_path):
    write_volume(_brain(0), tmp_path / "t1.nii.gz")
    request = tasks.TranslateRequest(targets=("t1c",), settings=tasks.RunSettings(samples=2))
    job = dict(request.to_job(), inputs={"t1": "t1.nii.gz", "t2": "t1.nii.gz"}, outputs={"t1c": "t1c.nii.gz"})
    (tmp_path / "job.json").write_text(json.dumps(job))
    stream = io.StringIO()
    assert runner.main([str(tmp_path / "job.json")], stream=stream, install_signal_handlers=False) == tasks.EXIT_INPUT
    assert "outputs must be exactly t1c, t1c_std" in stream.getvalue()
    assert not (tmp_path / "t1c.nii.gz").exists()


def test_segment_labels_use_the_cards_segment(models_dir, tmp_path, monkeypatch):
    root = tmp_path / "models"
    folder = write_micro_model(root, "sdseg")
    data = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    (folder / "card.json").write_text(json.dumps(dict(data, segments=[{"name": "liver", "label": 6, "color": [1, 0, 0]}])))
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(root))
    rng = np.random.default_rng(0)
    ct = Volume(rng.normal(0, 400, (4, 32, 32)).astype(np.float32), np.diag([-1.0, -1.0, 2.0, 1.0]))
    loaded = tasks.load(tasks.SegmentRequest(model="sdseg-micro-test"))
    out = tasks.SegmentRequest(threshold=0.01).run({"image": ct}, loaded, tasks.RunSettings().run_options())
    assert set(np.unique(out["labels"].array)) <= {0, 6} and (out["labels"].array == 6).any()


@pytest.mark.parametrize("single_step_only, steps, warns", [(True, 2, True), (True, 1, False), (False, 2, False)])
def test_more_steps_than_a_single_step_only_model_was_trained_for_warns(tmp_path, monkeypatch, single_step_only, steps,
                                                                          warns):
    folder = write_micro_model(tmp_path / "models", "sdseg")
    data = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    data["sampling"]["single_step_only"] = single_step_only
    (folder / "card.json").write_text(json.dumps(data))
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(tmp_path / "models"))
    ct = Volume(np.random.default_rng(0).normal(0, 400, (2, 32, 32)).astype(np.float32), np.diag([-1.0, -1.0, 2.0, 1.0]))
    request = tasks.SegmentRequest(model="sdseg-micro-test", settings=tasks.RunSettings(steps=steps))
    loaded = tasks.load(request)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        request.run({"image": ct}, loaded, request.settings.run_options())
    trained_for = [str(w.message) for w in caught if "trained for its single step only" in str(w.message)]
    expected = (f"sdseg-micro-test 0.1.0 was trained for its single step only: {steps}-step DDIM runs timesteps it "
                "never saw and scores far lower, down to empty masks; run it with 1 step")
    assert trained_for == ([expected] if warns else [])


def test_every_front_end_goes_through_the_task_layer():
    """The rules live once: no front end calls a pipeline, builds output names, or reads card fields itself."""
    root = Path(__file__).resolve().parents[1]
    front_ends = [root / "MedDiffusionExtension" / n for n in ("commands.py", "runner.py", "demo.py")] + \
        list((root / "Modules").rglob("MedDiffusion*.py")) + list((root / "training" / "evaluation").glob("*.py"))
    for path in front_ends:
        text = path.read_text(encoding="utf-8")
        for forbidden in ("from .pipelines import", "MedDiffusionExtension.pipelines import segment",
                          "MedDiffusionExtension.pipelines import translate", "_std\" for", "card.data[\"sampling\"]",
                          "/ 1000", "card.data.get("):
            assert forbidden not in text, f"{path.name} bypasses the task layer ({forbidden})"
