"""The method recipes end to end at micro scale: every stage trains a few steps through the shared trainer,
exports a model folder, the next stage starts from it, and the final export runs in the inference pipelines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.pipelines import segment, translate
from MedDiffusionExtension.volume import read_volume
from MedDiffusionExtension.weights import load_model
from training.cli import main as training_main
from training.recipes import build_recipe
from training.phantoms import write_brats_case, write_btcv_dataset

from tiny_models import MICRO_CDM, MICRO_EDTS, MICRO_SDSEG


def _train(tmp_path, recipe, stage, out, steps=2, batch=4, extra=()):
    argv = ["train", "--recipe", recipe, "--out-dir", str(out), "--max-steps", str(steps), "--batch-size", str(batch),
            "--no-progress", "--lr", "1e-3", "--set", f"stage={stage}", *extra]
    assert training_main(argv) == 0
    assert training_main(["export", "--checkpoint", str(out), "--out", str(out / "model")]) == 0
    return out / "model"


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    for number in range(3):
        write_brats_case(root, number, seed=number, shape=(40, 40, 24))
    return root


def test_cdm_three_stages_then_translate(tmp_path, brats_root):
    common = ["--set", f"data_root={brats_root}", "--set", f"cache_dir={tmp_path / 'cache'}",
              "--set", f"architecture={json.dumps(MICRO_CDM)}", "--set", "sampling_steps=3"]
    mrm = _train(tmp_path, "cdm", "mrm", tmp_path / "mrm", extra=common)
    cunet = _train(tmp_path, "cdm", "cunet", tmp_path / "cunet", extra=[*common, "--set", f"init={mrm}"])
    final = _train(tmp_path, "cdm", "mdn", tmp_path / "mdn",
                   extra=[*common, "--set", f"init={cunet}", "--set", "mdn_source_condition=true"])

    # Each stage changes only its own network: what earlier stages trained is carried through unchanged.
    first, middle = load_file(str(mrm / "model.safetensors")), load_file(str(cunet / "model.safetensors"))
    last = load_file(str(final / "model.safetensors"))
    assert all(torch.equal(first[k], last[k]) for k in first if k.startswith("mrm."))
    assert all(torch.equal(middle[k], last[k]) for k in middle if k.startswith("cunet."))
    assert any(not torch.equal(first[k], middle[k]) for k in first if k.startswith("cunet."))
    assert any(k.startswith("mdn.source_mlp.") for k in last)  # the grown MDN starts fresh where it is new

    loaded = load_model(final)
    assert loaded.card.data["training"]["command"].startswith("python -m training train --recipe cdm")
    assert loaded.card.data["architecture"]["mdn"]["source_condition_dim"] == MICRO_CDM["representation_dim"]
    case = next(brats_root.iterdir())
    t1, t2 = (read_volume(next(case.glob(f"*-{m}.nii.gz"))) for m in ("t1n", "t2w"))
    out = translate(inputs=[t1, t2], loaded=loaded, targets=["t1c", "t2f"])
    assert out["t1c"].shape == t1.shape and np.isfinite(out["t2f"].array).all()


def test_sdseg_stages_then_segment(tmp_path):
    root = tmp_path / "btcv"
    write_btcv_dataset(root, 3, seed=0, shape=(64, 64, 10))
    common = ["--set", f"data_root={root}", "--set", f"cache_dir={tmp_path / 'cache'}",
              "--set", f"architecture={json.dumps(MICRO_SDSEG)}"]
    autoencoder = _train(tmp_path, "sdseg", "autoencoder", tmp_path / "ae", extra=common)
    final = _train(tmp_path, "sdseg", "ldm", tmp_path / "ldm", extra=[*common, "--set", f"init={autoencoder}"])
    tensors = load_file(str(final / "model.safetensors"))
    assert float(tensors["latent_scale"]) != 1.0  # measured on the first batch of training latents
    loaded = load_model(final)
    assert loaded.card.data["recipe"]["config"]["latent_scale"] == pytest.approx(float(tensors["latent_scale"]), rel=1e-4)
    image = read_volume(root / "img" / "img0001.nii.gz")
    result = segment(image=image, loaded=loaded, samples=2)
    assert result.labels.array.dtype == np.uint8 and result.probability is not None
    # An inference-only export leaves out the mask encoder, segments identically, and refuses to start training.
    slim = tmp_path / "slim"
    assert training_main(["export", "--checkpoint", str(tmp_path / "ldm"), "--out", str(slim), "--inference-only"]) == 0
    slim_model = load_model(slim)
    assert not any(k.startswith("autoencoder.encoder.") for k in slim_model.tensors)
    assert len(slim_model.tensors) < len(loaded.tensors)
    again = segment(image=image, loaded=slim_model, samples=2)
    assert np.array_equal(again.probability.array, result.probability.array)
    with pytest.raises(InputError, match="inference-only"):
        build_recipe("sdseg", {"stage": "ldm", "architecture": MICRO_SDSEG, "init": str(slim)}).build_model()
    # ... unless the single step is trained through the frozen decoder only (no latent targets, no mask encoder).
    decoder_only = ["--set", "finetune=true", "--set", "last_step_fraction=1.0", "--set", "mask_loss_weight=1.0",
                    "--set", "latent_targets=false"]
    tuned = load_model(_train(tmp_path, "sdseg", "ldm", tmp_path / "tuned",
                              extra=[*common, "--set", f"init={slim}", *decoder_only]))
    for name, value in slim_model.tensors.items():
        changed = not torch.equal(tuned.tensors[name].float(), value.float())
        trained = name.startswith(("denoiser.", "vision_encoder."))
        assert changed == trained or (trained and "bias" in name) or name.endswith("num_batches_tracked"), name
    assert torch.equal(tuned.tensors["latent_scale"], slim_model.tensors["latent_scale"])  # kept: no latents measured
    assert segment(image=image, loaded=tuned).labels.shape == image.shape
    # Trained at the last timestep alone (last_step_fraction 1), its card says so; the paper's uniform draw does not.
    assert tuned.card.sampling.single_step_only and not loaded.card.sampling.single_step_only
    with pytest.raises(InputError, match="latent_targets=false"):
        build_recipe("sdseg", {"stage": "ldm", "architecture": MICRO_SDSEG, "latent_targets": False})
    # train_mask_decoder=true: the single step end to end, the mask decoder trained with it (the encoder still absent).
    end_to_end = load_model(_train(tmp_path, "sdseg", "ldm", tmp_path / "end-to-end",
                                   extra=[*common, "--set", f"init={slim}", *decoder_only,
                                          "--set", "train_mask_decoder=true"]))
    for name, value in slim_model.tensors.items():
        changed = not torch.equal(end_to_end.tensors[name].float(), value.float())
        trained = name.startswith(("denoiser.", "vision_encoder.", "autoencoder.decoder."))
        assert changed == trained or (trained and "bias" in name) or name.endswith("num_batches_tracked"), name
    with pytest.raises(InputError, match="train_mask_decoder"):
        build_recipe("sdseg", {"stage": "ldm", "architecture": MICRO_SDSEG, "train_mask_decoder": True})


MICRO_SEGUNET = {"image_size": 32, "unet": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                            "attention_levels": [], "mid_attention": False, "num_heads": 1, "dropout": 0.0}}
EVERY_STAGE = [
    ("cdm", "mrm", MICRO_CDM, {}), ("cdm", "mdn", MICRO_CDM, {}), ("cdm", "mdn", MICRO_CDM, {"mdn_source_condition": True}),
    ("cdm", "cunet", MICRO_CDM, {}), ("cdm", "unet", MICRO_CDM, {}),
    ("sdseg", "autoencoder", MICRO_SDSEG, {}), ("sdseg", "ldm", MICRO_SDSEG, {}), ("sdseg", "segunet", MICRO_SEGUNET, {}),
    ("sdseg", "autoencoder", MICRO_SDSEG, {"organs": [1, 6, 7]}),
    ("sdseg", "autoencoder", MICRO_SDSEG, {"organs": [1, 6, 7], "mask_encoding": "analog_bits"}),
    ("sdseg", "ldm", MICRO_SDSEG, {"organs": [1, 6, 7]}),
    ("sdseg", "ldm", MICRO_SDSEG, {"organs": [1, 6, 7], "mask_loss_weight": 1.0}),
    ("sdseg", "ldm", MICRO_SDSEG, {"finetune": True, "last_step_fraction": 1.0, "mask_loss_weight": 1.0,
                                   "latent_targets": False}),
    ("sdseg", "ldm", MICRO_SDSEG, {"finetune": True, "last_step_fraction": 1.0, "mask_loss_weight": 1.0,
                                   "latent_targets": False, "train_mask_decoder": True}),
    ("sdseg", "segunet", MICRO_SEGUNET, {"organs": [1, 6, 7]}),
    ("edts", "regn", MICRO_EDTS, {}), ("edts", "refiner", MICRO_EDTS, {}), ("edts", "joint", MICRO_EDTS, {}),
    ("edts", "unet", MICRO_EDTS, {}),
]


@pytest.mark.parametrize("name, stage, architecture, extra", EVERY_STAGE,
                         ids=[f"{n}-{s}{'-' + '-'.join(map(str, e.values())) if e else ''}" for n, s, _, e in EVERY_STAGE])
def test_every_trainable_parameter_of_every_stage_gets_a_gradient(name, stage, architecture, extra):
    """DistributedDataParallel stops at its second iteration when a trainable parameter gets no gradient (CDM's
    stage 1 trained the MRM projection head, which its loss never reaches)."""
    recipe = build_recipe(name, {"stage": stage, "architecture": architecture, **extra})
    torch.manual_seed(0)
    model = recipe.build_model()
    chosen = {id(p) for p in recipe.trainable_parameters(model)}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in chosen)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 4, 32, 32, generator=generator).clamp(-1, 1)
    batch = ({"sources": images[:, :2], "targets": images[:, 2:]} if name == "cdm"
             else {"image": images[:, :1], "mask": (images[:, 1:2] > 0).float()})
    if name == "edts":  # T1 -> T2
        batch = {"sources": images[:, :1], "targets": images[:, 1:2]}
    if "organs" in extra:
        batch["classes"] = torch.randint(0, len(extra["organs"]) + 1, (2, 1, 32, 32), generator=generator)
    loss, _ = recipe.loss(model, batch, generator)
    loss.backward()
    assert chosen and not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_the_mask_loss_adds_the_codec_reconstruction_of_the_decoded_one_step_estimate():
    """mask_loss_weight w adds w x (cross-entropy + soft Dice) of the decoded z0 estimate to the paper's latent loss;
    the same draws otherwise (one generator seed) give the same latent terms."""
    organs = {"organs": [1, 6, 7], "architecture": MICRO_SDSEG, "stage": "ldm"}
    torch.manual_seed(0)
    model = build_recipe("sdseg", organs).build_model().eval()
    generator = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(2, 1, 32, 32, generator=generator) * 2 - 1,
             "classes": torch.randint(0, 4, (2, 1, 32, 32), generator=generator)}
    batch["mask"] = (batch["classes"] > 0).float()
    losses = {}
    for weight in (0.0, 0.5):
        recipe = build_recipe("sdseg", {**organs, "mask_loss_weight": weight})
        losses[weight] = recipe.loss(model, batch, torch.Generator().manual_seed(2))
    (plain, plain_logs), (weighted, logs) = losses[0.0], losses[0.5]
    assert "mask_ce" not in plain_logs and torch.equal(plain_logs["l_z0"], logs["l_z0"])
    reconstruction = logs["mask_ce"] + logs["mask_dice_loss"]
    assert reconstruction > 0
    assert torch.isclose(weighted - plain, 0.5 * reconstruction, rtol=1e-5)


def test_last_step_fraction_trains_that_share_of_a_batch_at_the_single_step_timestep():
    """last_step_fraction f puts about f of the training draws at T-1 (where single-step inference starts) and
    leaves the rest uniform; 0 keeps the paper's uniform draw exactly."""
    seen = {}
    for fraction in (0.0, 0.5):
        recipe = build_recipe("sdseg", {"architecture": MICRO_SDSEG, "stage": "ldm", "last_step_fraction": fraction})
        torch.manual_seed(0)
        model = recipe.build_model().eval()
        drawn = []
        original = model.predict_noise
        model.predict_noise = lambda z_t, t, condition: (drawn.append(t.clone()), original(z_t, t, condition))[1]
        generator = torch.Generator().manual_seed(3)
        batch = {"image": torch.rand(64, 1, 32, 32, generator=generator) * 2 - 1}
        batch["mask"] = (batch["image"] > 0).float()
        with torch.no_grad():
            recipe.loss(model, batch, torch.Generator().manual_seed(4))
        seen[fraction] = drawn[0]
    last = recipe.schedule.num_steps - 1
    moved = seen[0.5] == last
    assert (seen[0.0] == last).sum() <= 1
    assert 20 <= moved.sum() <= 44
    # The same seed draws the same uniform timesteps first; only the chosen share is moved to T-1.
    assert torch.equal(seen[0.5][~moved], seen[0.0][~moved])
    with pytest.raises(InputError, match="last_step_fraction"):
        build_recipe("sdseg", {"architecture": MICRO_SDSEG, "stage": "ldm", "last_step_fraction": 1.5})


def test_the_m1_unet_continues_from_an_exported_unet(tmp_path, brats_root):
    """stage=unet with init starts from that exported M1 UNet (how a baseline is trained on beside a CDM stage),
    and without init from a fresh one."""
    common = ["--set", f"data_root={brats_root}", "--set", f"cache_dir={tmp_path / 'cache'}",
              "--set", f"architecture={json.dumps(MICRO_CDM)}"]
    first = _train(tmp_path, "cdm", "unet", tmp_path / "unet", extra=common)
    exported = load_file(str(first / "model.safetensors"))
    config = {"stage": "unet", "architecture": MICRO_CDM}
    continued = build_recipe("cdm", {**config, "init": str(first)}).build_model().state_dict()
    assert all(torch.equal(continued[k], exported[k].to(continued[k].dtype)) for k in exported)
    torch.manual_seed(1)
    fresh = build_recipe("cdm", config).build_model().state_dict()
    assert any(not torch.equal(fresh[k], exported[k].to(fresh[k].dtype)) for k in exported)
