"""The fast inference path: channels_last networks and batches (lossless), training-only parts left out, the
card's inference section, `--batch-size auto`, `--compile` (torch.compile faked: a real compile takes minutes on
2 cores), and the CLI and job forms of the new settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MedDiffusionExtension import tasks
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.pipelines import common
from MedDiffusionExtension.pipelines.batch_size import choose_batch_size
from MedDiffusionExtension.volume.engine import EngineInput, RunOptions, run_slicewise
from MedDiffusionExtension.volume.slices import ModelGrid
from MedDiffusionExtension.weights import LoadedModel, load_model
from MedDiffusionExtension.weights.card import CardError, parse_card

from conftest import axial_volume

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sdseg(models_dir):
    return load_model(models_dir / "sdseg-micro-test")


@pytest.fixture(scope="module")
def cdm(models_dir):
    return load_model(models_dir / "cdm-micro-test")


def _with_card(loaded, **fields):
    return LoadedModel(parse_card(dict(loaded.card.data, **fields), loaded.card.directory), loaded.tensors)


def test_networks_run_channels_last_on_the_cpu_and_match_the_contiguous_layout(cdm):
    network = common.build_network(cdm, CPU)
    conv = network.cunet.unet.input
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    images, representation = torch.randn(3, 2, 32, 32), torch.randn(3, 16)
    seen = []
    hook = network.cunet.unet.output.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.inference_mode():
        fast = network.cunet(images.contiguous(memory_format=torch.channels_last), representation)
        hook.remove()
        plain = network.to(memory_format=torch.contiguous_format).cunet(images, representation)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)  # the whole path, not only the first conv
    assert torch.allclose(fast, plain, atol=1e-4) and (fast - plain).abs().max() <= 1e-4


def test_batches_reach_the_model_channels_last_and_results_come_back_in_the_plain_layout():
    layouts = []

    def model(batch):
        layouts.append(batch.images.is_contiguous(memory_format=torch.channels_last))
        return (batch.images * 2).contiguous(memory_format=torch.channels_last)

    volume = axial_volume(shape=(5, 16, 16))
    out = run_slicewise([EngineInput(volume, "x")], model, 1, ModelGrid(None, None), RunOptions(device="cpu", batch_size=2))
    assert layouts == [True, True, True]  # 5 slices in batches of 2
    reference = run_slicewise([EngineInput(volume, "x")], lambda b: b.images * 2, 1, ModelGrid(None, None),
                              RunOptions(device="cpu", batch_size=5))
    np.testing.assert_array_equal(out, reference)


def test_the_inference_copy_leaves_out_training_only_parts_and_still_segments(sdseg):
    network = common.build_network(sdseg, CPU)
    assert network.autoencoder.encoder is None  # the mask encoder only makes training targets
    assert network.autoencoder.decoder is not None
    with torch.inference_mode():
        latent = network.encode_image(torch.randn(2, 1, 32, 32))
        probability = network.decode_mask(latent)
    assert probability.shape == (2, 1, 32, 32) and 0 <= float(probability.min()) <= float(probability.max()) <= 1


def test_a_segmentation_is_the_same_in_either_layout(sdseg, monkeypatch):
    ct = axial_volume(shape=(4, 48, 48))
    # fp32 on any CPU: `auto` would be bf16 where the CPU has native units, and the layouts then round differently.
    request = tasks.SegmentRequest(settings=tasks.RunSettings(device="cpu", samples=2, batch_size=2, precision="fp32"))
    fast = request.run({"image": ct}, sdseg, request.settings.run_options(model=sdseg))
    for module in ("MedDiffusionExtension.pipelines.common", "MedDiffusionExtension.volume.engine"):
        monkeypatch.setattr(f"{module}.uses_channels_last", lambda device: False)
    plain = request.run({"image": ct}, sdseg, request.settings.run_options(model=sdseg))
    assert np.abs(fast["probability"].array - plain["probability"].array).max() <= 1e-4


def test_card_inference_section_is_optional_and_strict(cdm):
    assert cdm.card.inference.cpu_bf16 is True and cdm.card.inference.batch_size_for("cpu") is None  # old cards
    card = _with_card(cdm, inference={"cpu_bf16": False, "batch_size": {"cpu": 2, "cuda": 32}}).card
    assert card.inference.cpu_bf16 is False
    assert (card.inference.batch_size_for("cpu"), card.inference.batch_size_for("cuda"), card.inference.batch_size_for("mps")) \
        == (2, 32, None)
    for bad, message in (({"cpu_bf16": "no"}, "inference.cpu_bf16 must be bool"),
                         ({"batch": 3}, "unknown field.*batch"),
                         ({"batch_size": {"tpu": 4}}, "names 'tpu'"),
                         ({"batch_size": {"cpu": 0}}, "batch_size.cpu must be positive"),
                         ([], "inference must be dict")):
        with pytest.raises(CardError, match=message):
            _with_card(cdm, inference=bad)


def test_batch_size_auto_follows_the_card_then_the_measured_rule(cdm):
    stated = _with_card(cdm, inference={"batch_size": {"cpu": 3, "cuda": 24}}).card
    assert choose_batch_size(stated, CPU, parameters=1) == 3
    assert choose_batch_size(stated, torch.device("cuda"), parameters=1) == 24
    assert choose_batch_size(cdm.card, CPU, parameters=3_900_000) == 4  # the tiny models' size
    assert choose_batch_size(cdm.card, CPU, parameters=78_500_000) == 1  # the paper's
    assert choose_batch_size(cdm.card, torch.device("cuda"), parameters=78_500_000) == 8
    assert choose_batch_size(None, CPU) == 1  # nothing to size the network by
    options = tasks.RunSettings(device="cpu").run_options(model=cdm)
    assert options.batch_size == 4
    assert tasks.RunSettings(device="cpu", batch_size=6).run_options(model=cdm).batch_size == 6


def test_the_new_settings_are_validated_and_survive_the_job_form():
    request = tasks.SegmentRequest(settings=tasks.RunSettings(batch_size="auto", compile=True))
    job = json.loads(json.dumps(request.to_job()))
    assert job["batch_size"] == "auto" and job["compile"] is True
    assert tasks.request_from_job(job) == request
    for bad, message in ((dict(batch_size="big"), "batch_size"), (dict(batch_size=0), "batch_size"),
                         (dict(compile="yes"), "compile")):
        with pytest.raises(InputError, match=message):
            tasks.RunSettings(**bad)


def test_cli_takes_batch_size_auto_or_a_number_and_compile():
    from MedDiffusionExtension.cli import UsageError, build_parser
    from MedDiffusionExtension.commands import _settings

    parser = build_parser()
    args = parser.parse_args(["segment", "--image", "ct.nii.gz", "--out", "seg.nii.gz"])
    assert (args.batch_size, args.compile) == ("auto", False)
    args = parser.parse_args(["segment", "--image", "ct.nii.gz", "--out", "s.nii.gz", "--batch-size", "3", "--compile"])
    settings = _settings(args)
    assert (settings.batch_size, settings.compile) == (3, True)
    with pytest.raises(UsageError, match="batch-size"):
        parser.parse_args(["segment", "--batch-size", "0"])


def test_compile_wraps_each_network_and_reports_its_first_call(cdm, monkeypatch):
    compiled = []

    def fake_compile(function):
        compiled.append(function)
        return function

    monkeypatch.setattr(torch, "compile", fake_compile)
    messages = []
    network = common.build_network(cdm, CPU, RunOptions(device="cpu", compile=True,
                                                        progress=lambda fraction, message: messages.append(message)))
    assert len(compiled) == 3  # the MRM's transformer, the MDN, the C-UNet's UNet: each outermost network once
    with torch.inference_mode():
        first = network.cunet(torch.zeros(1, 2, 32, 32), torch.zeros(1, 16))
        again = network.cunet(torch.zeros(1, 2, 32, 32), torch.zeros(1, 16))
    assert torch.equal(first, again)
    assert len(messages) == 1 and messages[0].startswith("compiled cunet.unet in ") and "compile included" in messages[0]
    assert common.build_network(cdm, CPU, RunOptions(device="cpu")) is not None and len(compiled) == 3  # off: untouched
