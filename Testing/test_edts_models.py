"""EDTS-Trans: its networks (RegN, the texture/structure mask, the refiner), the differentiable SSIM loss, and a micro
training run of the recipe's stages through the shared trainer, exported and reloaded."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from skimage.metrics import structural_similarity

from MedDiffusionExtension.models import EDTS, EDTS_CONFIGS, build_model
from MedDiffusionExtension.models.edts import vgg16_features
from MedDiffusionExtension.weights import load_model
from training.cli import main as training_main
from training.losses import l1_ssim_loss, ssim
from training.phantoms import write_brats_case
from training.recipes import build_recipe
from training.recipes.edts import dihedral

from tiny_models import MICRO_EDTS, write_micro_model


def micro(**tsm) -> EDTS:
    config = copy.deepcopy(MICRO_EDTS)
    config["tsm"].update(tsm)
    torch.manual_seed(0)
    return build_model("edts", config).eval()


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter (zero-initialised output layers included) so that every path carries signal."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def textured_patch(size: int = 32) -> torch.Tensor:
    """(1, 1, S, S): uniform noise in the top-left quadrant, flat background (-1) elsewhere."""
    image = torch.full((1, 1, size, size), -1.0)
    half = size // 2
    image[..., :half, :half] = torch.rand(half, half, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return image


# ---------------------------------------------------------------------------------------------- networks


def test_shapes_and_registration():
    model = micro()
    t1 = torch.rand(2, 1, 32, 32) * 2 - 1
    t2_bar = model.regress(t1)
    mask = model.structure_mask(t2_bar)
    output = model.predict(torch.randn(2, 1, 32, 32), torch.tensor([0, 999]), t2_bar, mask)
    assert t2_bar.shape == mask.shape == output.shape == (2, 1, 32, 32)
    assert model.refiner.input.in_channels == 3 and model.TRAINING_ONLY == ()
    assert {k.split(".")[0] for k in model.state_dict()} == {"regn", "tsm", "refiner"}


def test_regn_adds_its_output_to_the_input_t1():
    model = micro()
    t1 = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.equal(model.regress(t1), t1)  # zero-initialised output conv: T2_bar starts as T1
    randomize(model.regn)
    captured = []  # the output conv's result: the residual RegN adds to its input
    hook = model.regn.output.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        t2_bar = model.regress(t1)
    hook.remove()
    residual = captured[0]
    assert torch.allclose(t2_bar, t1 + residual, atol=1e-6)
    assert residual.abs().mean() > 1e-3


def test_residual_refiner_starts_as_the_regression():
    model = micro()
    t2_bar, x_t, t = torch.rand(2, 1, 32, 32) * 2 - 1, torch.randn(2, 1, 32, 32), torch.tensor([5, 900])
    mask = model.structure_mask(t2_bar)
    assert torch.equal(model.predict(x_t, t, t2_bar, mask), t2_bar)  # zero-initialised UNet output
    plain = build_model("edts", dict(MICRO_EDTS, refiner_residual=False))
    randomize(model.refiner)
    plain.load_state_dict(model.state_dict())
    assert torch.allclose(model.predict(x_t, t, t2_bar, mask), plain.predict(x_t, t, t2_bar, mask) + t2_bar)
    with pytest.raises(Exception, match="prediction_type=sample"):
        build_recipe("edts", {"architecture": MICRO_EDTS, "prediction_type": "epsilon"})


def test_fuse_is_the_mask_weighted_sum():
    tilde, bar = torch.full((1, 1, 2, 2), 0.8), torch.full((1, 1, 2, 2), -0.4)
    mask = torch.tensor([[[[0.0, 1.0], [0.25, 0.7]]]])
    expected = torch.tensor([[[[-0.4, 0.8], [-0.1, 0.44]]]])
    assert torch.allclose(EDTS.fuse(tilde, bar, mask), expected)
    assert torch.equal(EDTS.fuse(tilde, bar, EDTS.full_mask(bar)), tilde)


def test_tiny_and_paper_configs():
    tiny = build_model("edts", EDTS_CONFIGS["tiny"])
    trained = sum(p.numel() for part in (tiny.regn, tiny.refiner) for p in part.parameters())
    assert trained < 4_000_000  # CPU-trainable
    assert EDTS_CONFIGS["paper"]["tsm"]["features"] == "vgg16" and len(EDTS_CONFIGS["paper"]["regn"]["channel_mult"]) == 4
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model("edts", dict(MICRO_EDTS, image_size=36))


# ---------------------------------------------------------------------------------------------- texture/structure mask


def test_vgg16_layout_has_torchvision_indices():
    features = vgg16_features(31)
    convs = [i for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d)]
    pools = [i for i, m in enumerate(features) if isinstance(m, torch.nn.MaxPool2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28] and pools == [4, 9, 16, 23, 30]
    # layer ends 4, 9, 16, 23 = relu1_2, relu2_2, relu3_3, relu4_3 at 1, 1/2, 1/4, 1/8 of the size
    tsm = micro().tsm
    maps = tsm.feature_maps(torch.zeros(1, 1, 32, 32))
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4] and [m.shape[1] for m in maps] == [8, 16, 32, 64]
    assert all(isinstance(tsm.features[end - 1], torch.nn.ReLU) for end in tsm.layers)


def test_mask_is_frozen_and_carries_no_gradient():
    model = micro()
    assert not any(p.requires_grad for p in model.tsm.parameters())
    t2_bar = model.regress(torch.rand(1, 1, 32, 32, requires_grad=True))
    mask = model.structure_mask(t2_bar)
    assert not mask.requires_grad


def test_dynamic_mask_values_and_its_binary_forms():
    image = textured_patch()
    dynamic = micro().structure_mask(image)
    low, high = dynamic < 0.05, dynamic > 0.5
    assert bool((low | high).all()) and low.any() and high.any()
    assert float(dynamic.max()) <= 1 / (1 + math.exp(-0.95)) + 1e-6  # sigmoid(1 - t)
    binary = micro(mask="binary").structure_mask(image)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(binary, high.float())
    # The fixed-threshold ablation binarizes the dynamic map: any threshold in [t, 0.5] marks the same pixels.
    assert torch.equal(micro().structure_mask(image, threshold=0.4), binary)
    assert not micro().structure_mask(image, threshold=0.9).any()


@pytest.mark.parametrize("value", [-1.0, 0.0, 0.7])
def test_flat_image_marks_nothing(value):
    flat = torch.full((1, 1, 32, 32), value)
    dynamic = micro().structure_mask(flat)
    # every layer normalizes to -1: p_0 = sigmoid(-1)^4 < t everywhere, kept as the (small) weight
    assert torch.allclose(dynamic, torch.full_like(dynamic, 1 / (1 + math.e) ** 4), atol=1e-6)
    assert not micro(mask="binary").structure_mask(flat).any()


@pytest.mark.parametrize("dispersion, marked", [("local", 0.9), ("channels", 0.7)])
def test_textured_region_is_marked_and_flat_background_is_not(dispersion, marked):
    mask = micro(mask="binary", dispersion=dispersion).structure_mask(textured_patch())[0, 0]
    assert float(mask[:16, :16].mean()) > marked
    assert not mask[24:, 24:].any()


def test_paper_literal_normalization_never_crosses_the_threshold():
    p0 = micro(normalize="none").tsm.probability(textured_patch())
    assert float(p0.min()) >= 0.5 ** 4 - 1e-6  # why the recipe normalizes: sigmoid of a dispersion >= 0 is >= 0.5


def test_fixed_features_are_deterministic_and_seeded():
    first, second, other = micro().tsm.state_dict(), micro().tsm.state_dict(), micro(seed=1).tsm.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["features.0.weight"], other["features.0.weight"])
    assert float(first["features.0.bias"].abs().sum()) == 0.0
    std = float(first["features.2.weight"].std())
    assert std == pytest.approx(math.sqrt(2 / (9 * 8)), rel=0.15)  # Kaiming normal, fan_out, ReLU gain


def _torchvision_vgg16_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {f"features.{k}": torch.randn(v.shape, generator=generator) * 0.05
             for k, v in vgg16_features(31).state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # a whole torchvision state dict has more than the features
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_loads_a_torchvision_vgg16_state_dict(tmp_path, suffix):
    state = _torchvision_vgg16_state()
    path = tmp_path / f"vgg16{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = micro(features="vgg16", width=64)
    model.tsm.load_vgg16(path)
    loaded = model.tsm.features.state_dict()
    assert sorted(loaded) == sorted(k[len("features."):] for k in state if k.startswith("features.") and
                                    int(k.split(".")[1]) < 23)
    assert torch.equal(loaded["21.weight"], state["features.21.weight"])
    assert model.structure_mask(textured_patch()).shape == (1, 1, 32, 32)


def test_vgg16_weights_must_fit(tmp_path):
    state = _torchvision_vgg16_state()
    state["features.2.weight"] = state["features.2.weight"][:32]
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="features.2.weight"):
        micro(features="vgg16", width=64).tsm.load_vgg16(tmp_path / "bad.safetensors")
    save_file({"conv.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        micro(features="vgg16", width=64).tsm.load_vgg16(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="width 64"):
        micro(features="vgg16", width=8)


# ---------------------------------------------------------------------------------------------- SSIM loss


def test_ssim_matches_scikit_image():
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(2, 1, 40, 48, generator=generator, dtype=torch.float64)
    prediction = (reference + 0.2 * torch.randn(reference.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(prediction.float(), reference.float())
    for b in range(2):
        expected = structural_similarity(prediction[b, 0].numpy(), reference[b, 0].numpy(), gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False, data_range=1.0)
        assert float(ours[b]) == pytest.approx(expected, abs=1e-5)
    assert float(ssim(reference, reference).min()) == pytest.approx(1.0, abs=1e-6)


def test_image_loss_terms_and_gradient():
    reference = torch.rand(1, 1, 24, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    prediction = torch.zeros_like(reference, requires_grad=True)
    l1, dissimilarity = l1_ssim_loss(prediction, reference, 0.5)
    assert float(l1.detach()) == pytest.approx(float(reference.abs().mean()), rel=1e-6)
    (l1 + 0.5 * dissimilarity).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    l1, dissimilarity = l1_ssim_loss(prediction, reference, 0.0)  # the "without SSIM" ablation: logged, not trained
    assert dissimilarity.requires_grad is False and float(dissimilarity) > 0.5


# ---------------------------------------------------------------------------------------------- recipe


def test_dihedral_gives_eight_distinct_transforms_of_both_images():
    images = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    results = [dihedral(images, choice) for choice in range(8)]
    assert len({tuple(r.flatten().tolist()) for r in results}) == 8
    assert torch.equal(results[0], images) and torch.equal(results[5], torch.flip(torch.rot90(images, 1, (1, 2)), (2,)))
    assert all(torch.equal(r[1] - r[0], torch.full((3, 3), 9.0)) for r in results)  # one transform for T1 and T2


def test_cards_of_the_model_and_the_baseline():
    recipe = build_recipe("edts", {"stage": "refiner", "architecture": MICRO_EDTS})
    card = recipe.export_card()
    assert (card["task"], card["method"]) == ("translation", "edts")
    assert [i["name"] for i in card["inputs"]] == ["t1"] and [o["name"] for o in card["outputs"]] == ["t2w"]
    assert card["sampling"]["prediction_type"] == "sample" and card["architecture"]["tsm"]["features"] == "fixed"
    assert card["texture_structure_features"]["kind"] == "fixed" and "Xiao" in card["citation"]
    baseline = build_recipe("edts", {"stage": "unet", "architecture": MICRO_EDTS}).export_card()
    assert baseline["method"] == "cunet" and "sampling" not in baseline
    unet = build_model("cunet", baseline["architecture"])
    assert unet(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_vgg16_features_need_a_weights_file():
    architecture = copy.deepcopy(MICRO_EDTS)
    architecture["tsm"].update(features="vgg16", width=64)
    with pytest.raises(Exception, match="vgg16_weights"):
        build_recipe("edts", {"architecture": architecture}).build_model()


def test_micro_model_for_pipeline_tests(tmp_path):
    loaded = load_model(write_micro_model(tmp_path, "edts"))
    assert loaded.card.method == "edts" and loaded.card.sampling.steps == 3
    model = build_model("edts", loaded.card.data["architecture"])
    model.load_state_dict(loaded.tensors)
    assert torch.equal(model.tsm.features[0].weight, micro().tsm.features[0].weight)  # the fixed features kept


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    for number in range(3):
        write_brats_case(root, number, seed=number, shape=(40, 40, 12))
    return root


def _train(recipe_args, out, steps=3):
    argv = ["train", "--recipe", "edts", "--out-dir", str(out), "--max-steps", str(steps), "--batch-size", "4",
            "--no-progress", "--lr", "2e-4", "--min-lr", "1e-6", "--lr-schedule", "cosine", *recipe_args]
    assert training_main(argv) == 0
    assert training_main(["export", "--checkpoint", str(out), "--out", str(out / "model"), "--raw-weights"]) == 0
    return out / "model"


def test_stages_train_export_and_reload(tmp_path, brats_root):
    common = ["--set", f"data_root={brats_root}", "--set", f"cache_dir={tmp_path / 'cache'}",
              "--set", f"architecture={json.dumps(MICRO_EDTS)}", "--set", "sampling_steps=3"]
    regn = _train([*common, "--set", "stage=regn"], tmp_path / "regn")
    refiner = _train([*common, "--set", "stage=refiner", "--set", f"init={regn}"], tmp_path / "refiner")
    first, last = load_file(str(regn / "model.safetensors")), load_file(str(refiner / "model.safetensors"))
    fresh = micro().state_dict()
    assert all(torch.equal(first[k], last[k]) for k in first if k.startswith(("regn.", "tsm.")))  # frozen
    assert all(torch.equal(last[k], fresh[k]) for k in last if k.startswith("tsm."))  # never trained
    assert any(not torch.equal(first[k], fresh[k]) for k in first if k.startswith("regn."))
    assert any(not torch.equal(first[k], last[k]) for k in first if k.startswith("refiner."))

    loaded = load_model(refiner)
    card = loaded.card.data
    assert card["method"] == "edts" and card["stage"] == "refiner" and card["training"]["steps"] == 3
    assert card["training"]["config"]["lr_schedule"] == "cosine"
    model = build_model("edts", card["architecture"]).eval()
    model.load_state_dict(loaded.tensors)
    t1 = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 1, 32, 32)).astype(np.float32))
    t2_bar = model.regress(t1)
    output = model.predict(torch.zeros_like(t1), torch.tensor([10]), t2_bar, model.structure_mask(t2_bar))
    assert torch.isfinite(output).all()


def test_baseline_and_no_ssim_ablation_train(tmp_path, brats_root):
    common = ["--set", f"data_root={brats_root}", "--set", f"cache_dir={tmp_path / 'cache'}",
              "--set", f"architecture={json.dumps(MICRO_EDTS)}"]
    unet = _train([*common, "--set", "stage=unet", "--set", "name=unet-t2-test"], tmp_path / "unet", steps=2)
    assert load_model(unet).card.method == "cunet"
    ablation = _train([*common, "--set", "ssim_weight=0"], tmp_path / "no-ssim", steps=2)
    assert load_model(ablation).card.data["loss"]["ssim_weight"] == 0
