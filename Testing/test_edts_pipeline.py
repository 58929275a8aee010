"""EDTS-Trans inference (pipelines/edts.py) through the task layer and the CLI: T1 alone in, T2 out on the T1's exact
grid, with its spread and mask; the refiner skipped where the mask marks nothing; a partial-noise start; and the
plain UNet T1 -> T2 baseline. Micro random-weight models: the numbers are meaningless, the mechanics are not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from MedDiffusionExtension import tasks
from MedDiffusionExtension.cli import main
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.models import build_model
from MedDiffusionExtension.pipelines import edts as edts_pipeline
from MedDiffusionExtension.pipelines.common import build_network
from MedDiffusionExtension.pipelines.registry import build_slice_model
from MedDiffusionExtension.volume import Volume, read_volume, write_volume
from MedDiffusionExtension.volume.engine import RunOptions, SliceBatch
from MedDiffusionExtension.weights import load_model, save_model
from training.recipes import build_recipe

from conftest import restored
from tiny_models import MICRO_EDTS, _randomize, write_micro_model

STEPS = 4  # the micro EDTS model's DDIM steps


def write_identity_regression_model(root: Path, name: str = "edts-micro-identity") -> Path:
    """A micro EDTS whose RegN returns its input (its zero-initialised output layer left at zero): T2_bar = T1, so a
    flat T1 slice gives a flat T2_bar, whose mask marks nothing."""
    folder = write_micro_model(root, "edts", name=name, sampling_steps=STEPS, seed=4)
    loaded = load_model(folder)
    tensors = {k: (torch.zeros_like(v) if k.startswith("regn.output.") else v) for k, v in loaded.tensors.items()}
    return save_model(folder, tensors, json.loads((folder / "card.json").read_text(encoding="utf-8")))


def write_unet_t2_model(root: Path, name: str = "unet-t2-micro-test") -> Path:
    """The plain UNet baseline T1 -> T2 of the EDTS recipe (stage unet), micro-sized, random weights."""
    recipe = build_recipe("edts", {"stage": "unet", "architecture": MICRO_EDTS, "name": name, "spacing_mm": 4.0})
    card = recipe.export_card()
    card["training"] = {"data": "none: random weights for tests", "command": "Testing/test_edts_pipeline.py"}
    return save_model(root / name, _randomize(build_model(card["method"], card["architecture"]), 1), card)


@pytest.fixture(scope="module")
def edts_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_micro_model(root, "cdm")
    return {"edts": write_micro_model(root, "edts", sampling_steps=STEPS).name,
            "identity": write_identity_regression_model(root).name, "unet": write_unet_t2_model(root).name,
            "root": root}


@pytest.fixture(autouse=True)
def models_env(edts_models, monkeypatch):
    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(edts_models["root"]))


def head_t1(slices: int = 8, seed: int = 0) -> Volume:
    """A T1-like head (disk with texture) on an oblique, anisotropic, sagittally stored grid."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(slices), np.arange(36), np.arange(40), indexing="ij")
    head = (j - 18) ** 2 + (i - 20) ** 2 < 15 ** 2
    array = head * (300 + 80 * np.sin(i / 2.0) * np.cos(j / 3.0) + rng.normal(0, 10, head.shape))
    axial = Volume(array.astype(np.float32), np.array([[-3.0, 0, 0.3, 20], [0, -3.5, 0, -10], [0, 0, 4.0, 5],
                                                       [0, 0, 0, 1]]))
    return restored(axial, (2, 0, 1), (False, True, False))


def flat_and_textured_t1() -> tuple[Volume, list[int], list[int]]:
    """40 x 40 pixels of the model's 4 mm (wider than its 32-pixel window, so no window reaches past the slice):
    slices 0-1 one constant value, slices 2-4 textured. Returns the volume, its flat and its textured slices."""
    rng = np.random.default_rng(1)
    array = np.full((5, 40, 40), 400.0, np.float32)
    array[2:] = 200 + 300 * rng.random((3, 40, 40))
    return Volume(array, np.diag([-4.0, -4.0, 5.0, 1.0])), [0, 1], [2, 3, 4]


def test_cli_synthesizes_t2_from_t1_alone_on_its_exact_grid(tmp_path, edts_models, capsys):
    t1 = head_t1()
    write_volume(t1, tmp_path / "t1.nii.gz")
    out = tmp_path / "out"
    assert main(["translate", "--method", "edts", "--t1", str(tmp_path / "t1.nii.gz"), "--out-dir", str(out),
                 "--samples", "2", "--save-mask", "--seed", "3", "--device", "cpu", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["t2w.nii.gz", "t2w_mask.nii.gz", "t2w_std.nii.gz"]
    reference = read_volume(tmp_path / "t1.nii.gz")
    volumes = {name: read_volume(out / f"{name}.nii.gz") for name in ("t2w", "t2w_std", "t2w_mask")}
    for volume in volumes.values():
        assert volume.shape == reference.shape and np.allclose(volume.ijk_to_ras, reference.ijk_to_ras, atol=1e-5)
    synthetic, spread, mask = (volumes[n].array for n in ("t2w", "t2w_std", "t2w_mask"))
    assert 0.0 <= synthetic.min() and synthetic.max() <= 1000.0 and synthetic.std() > 0
    assert spread.min() >= 0.0 and spread.max() > 0.0  # two samples of the refiner differ
    # M: the dynamic mask's two ranges [0, t) and (0.5, sigmoid(1 - t)], t = 0.05, blended where windows or voxels meet.
    assert 0.0 <= mask.min() and mask.max() <= 1 / (1 + np.exp(-0.95)) + 1e-6 and (mask > 0.5).any()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("arguments, message", [
    (["--t2", "T2"], "takes T1 alone, no T2; drop --t2"),
    (["--register"], "takes one input: there is nothing to register"),
    (["--refine-strength", "0"], "refine strength must be a number in (0, 1]"),
    (["--refine-strength", "1.5"], "refine strength must be a number in (0, 1]"),
    (["--targets", "t1c"], "cannot synthesize t1c; it makes t2w"),
])
def test_bad_edts_requests_end_in_one_error_line(tmp_path, edts_models, capsys, arguments, message):
    write_volume(head_t1(), tmp_path / "t1.nii.gz")
    arguments = [str(tmp_path / "t1.nii.gz") if a == "T2" else a for a in arguments]
    assert main(["translate", "--model", edts_models["edts"], "--t1", str(tmp_path / "t1.nii.gz"), "--out-dir",
                 str(tmp_path / "out"), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and message in error
    assert not (tmp_path / "out").exists()


def test_refiner_options_are_refused_for_a_model_without_a_refiner(tmp_path, capsys):
    write_volume(head_t1(), tmp_path / "t1.nii.gz")
    for option in (["--save-mask"], ["--refine-strength", "0.5"], ["--refine-every-slice"]):
        assert main(["translate", "--method", "cdm", "--t1", str(tmp_path / "t1.nii.gz"), "--t2",
                     str(tmp_path / "t1.nii.gz"), "--out-dir", str(tmp_path / "out"), *option]) == 2
        assert f"error: {option[0]} applies to models with a mask-guided refiner (EDTS-Trans); model " \
               "'cdm-micro-test' is CDM" in capsys.readouterr().err


def test_the_request_names_its_outputs_and_round_trips_as_a_job(edts_models):
    card = tasks.TranslateRequest(model=edts_models["edts"]).card()
    request = tasks.TranslateRequest(model=edts_models["edts"], save_mask=True, refine_strength=0.5,
                                     settings=tasks.RunSettings(samples=3))
    assert request.input_names(card) == ("t1",) and request.output_names(card) == ["t2w", "t2w_std", "t2w_mask"]
    assert [tasks.target_of(n) for n in request.output_names(card)] == ["t2w"] * 3
    assert tasks.is_mask("t2w_mask") and not tasks.is_mask("t2w_std")
    job = json.loads(json.dumps(request.to_job(card)))
    assert (job["save_mask"], job["refine_strength"], job["refine_every_slice"]) == (True, 0.5, False)
    assert tasks.request_from_job(job) == tasks.TranslateRequest(
        model=str(card.directory), save_mask=True, refine_strength=0.5, settings=tasks.RunSettings(samples=3))
    with pytest.raises(InputError, match="save_mask must be true or false"):
        tasks.request_from_job(dict(job, save_mask="yes"))
    with pytest.raises(InputError, match=r"refine strength must be a number in \(0, 1\]"):
        tasks.request_from_job(dict(job, refine_strength=True))
    assert [m.key for m in tasks.offered_methods("translation")] == ["cdm", "edts"]  # runnable once installed


def _batch(images: torch.Tensor, first_slice: int = 10) -> SliceBatch:
    return SliceBatch(images, list(range(first_slice, first_slice + len(images))), seed=0)


def _identity_network(edts_models):
    loaded = load_model(edts_models["root"] / edts_models["identity"])
    return loaded, build_network(loaded, torch.device("cpu"))


def test_untextured_items_get_t2_bar_exactly_and_refined_items_what_refining_everything_gives(edts_models):
    loaded, network = _identity_network(edts_models)
    images = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images[[1, 4]] = 0.3  # flat: T2_bar flat, M marks nothing
    outputs = {}
    for every in (False, True):
        model = build_slice_model(network, loaded.card, steps=None, samples=2, channels=[0], save_mask=True,
                                  refine_every_slice=every)
        with torch.inference_mode():
            outputs[every] = model(_batch(images))
    skipped, everything = outputs[False], outputs[True]
    with torch.inference_mode():
        t2_bar = network.regress(images)
        refined = edts_pipeline.EDTSInference.for_card(network, loaded.card).needs_refiner(skipped[:, 2:])
    assert refined.tolist() == [True, False, True, True, False, True]
    for row in (1, 4):  # the mean is T2_bar itself, the spread exactly 0
        assert torch.equal(skipped[row, 0], t2_bar[row, 0]) and not skipped[row, 1].any()
        assert not torch.equal(everything[row, 0], t2_bar[row, 0])  # refining it would have changed it a little
    for row in (0, 2, 3, 5):
        # The same noise and arithmetic; only the refiner's batch differs (4 items instead of 6), which changes the
        # rounding of its batched matrix products (measured: at most 1.2e-7 of the model range [-1, 1]).
        torch.testing.assert_close(skipped[row], everything[row], rtol=0, atol=1e-6)
    assert torch.equal(skipped[:, 2], everything[:, 2])  # M never depends on the skipping


def test_a_volume_with_flat_slices_gives_t2_bar_there_and_the_unskipped_output_elsewhere(edts_models):
    from training.evaluation.edts import regression_only

    t1, flat, textured = flat_and_textured_t1()
    loaded = load_model(edts_models["root"] / edts_models["identity"])
    options = RunOptions(device="cpu", batch_size=4, seed=2)
    runs = {}
    for every in (False, True):
        request = tasks.TranslateRequest(model=edts_models["identity"], refine_every_slice=every, save_mask=True)
        runs[every] = request.run({"t1": t1}, loaded, options)
    scale = loaded.card.output_range
    skipped, everything = (scale.to_unit(runs[every]["t2w"].array) for every in (False, True))
    mask = runs[False]["t2w_mask"].array
    assert (mask[flat] < 0.05).all() and all((mask[k] >= 0.05).mean() > 0.01 for k in textured)
    np.testing.assert_allclose(skipped[flat], regression_only(loaded, t1, options)[flat], rtol=0, atol=1e-6)
    np.testing.assert_allclose(skipped[textured], everything[textured], rtol=0, atol=1e-5)
    assert np.abs(skipped[flat] - everything[flat]).max() > 0  # the skipped slices were not refined


def test_refine_strength_starts_from_noised_t2_bar_and_runs_the_last_steps(edts_models):
    loaded, network = _identity_network(edts_models)
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    calls = []
    predict = network.predict
    network.predict = lambda x, t, t2_bar, mask: calls.append((x.clone(), t.clone())) or predict(x, t, t2_bar, mask)
    outputs = {}
    for strength in (1.0, 0.5):
        calls.clear()
        model = build_slice_model(network, loaded.card, steps=None, samples=1, channels=[0], refine_strength=strength,
                                  refine_every_slice=True)
        with torch.inference_mode():
            outputs[strength] = model(_batch(images, first_slice=0))
        inference = edts_pipeline.EDTSInference.for_card(network, loaded.card, strength=strength)
        timesteps = inference.sampler.timesteps.tolist()
        assert [int(t[0]) for _, t in calls] == timesteps[STEPS - round(strength * STEPS):]
        noise = _batch(images, first_slice=0).randn(1, 32, 32, stream=0)
        with torch.inference_mode():
            t2_bar = network.regress(images)
        start = noise if strength == 1.0 else inference.sampler.schedule.add_noise(t2_bar, noise, timesteps[2])
        torch.testing.assert_close(calls[0][0], start, rtol=0, atol=1e-6)
    assert [len(edts_pipeline.refined_timesteps(inference.sampler, s)) for s in (1.0, 0.5, 0.3, 0.01)] == [4, 2, 1, 1]
    assert not torch.equal(outputs[1.0], outputs[0.5])
    network.predict = predict
    default = build_slice_model(network, loaded.card, steps=None, samples=1, channels=[0], refine_every_slice=True)
    with torch.inference_mode():
        assert torch.equal(default(_batch(images, first_slice=0)), outputs[1.0])  # strength 1 is the default


def test_the_plain_unet_baseline_takes_t1_alone(tmp_path, edts_models):
    write_volume(head_t1(), tmp_path / "t1.nii.gz")
    card = tasks.TranslateRequest(model=edts_models["unet"]).card()
    assert card.method == "cunet" and tasks.TranslateRequest().input_names(card) == ("t1",)
    assert main(["translate", "--model", edts_models["unet"], "--t1", str(tmp_path / "t1.nii.gz"), "--out-dir",
                 str(tmp_path / "out"), "--samples", "3", "--device", "cpu", "--quiet"]) == 0
    # Deterministic: one sample whatever --samples says, so no spread volume.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t2w.nii.gz"]
    out = read_volume(tmp_path / "out" / "t2w.nii.gz")
    assert out.shape == read_volume(tmp_path / "t1.nii.gz").shape and out.array.std() > 0
