"""Multi-organ segmentation models: mask encodings, the K-class SDSeg and UNet, and the pipeline's arg-max on the
input grid (organ subsets, background, label values from the card)."""

import numpy as np
import pytest
import torch

from MedDiffusionExtension.models import SDSEG_CONFIGS, build_model
from MedDiffusionExtension.models.mask_codecs import AnalogBitsCodec, BinaryCodec, MaskCodec, OneHotCodec
from MedDiffusionExtension.pipelines.segment import segment
from MedDiffusionExtension.volume import Volume
from MedDiffusionExtension.volume.engine import BatchReduction, EngineInput, RunOptions, run_slicewise
from MedDiffusionExtension.volume.slices import ModelGrid
from MedDiffusionExtension.weights import load_model
from tiny_models import MICRO_SDSEG, write_micro_model


def _labels(classes: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, classes + 1, (2, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("codec, channels", [(BinaryCodec(), 3), (OneHotCodec(13), 14), (AnalogBitsCodec(13), 4),
                                             (AnalogBitsCodec(1), 1), (AnalogBitsCodec(15), 4), (AnalogBitsCodec(16), 5)])
def test_codec_images_have_the_documented_channels_and_range(codec, channels):
    image = codec.to_image(_labels(codec.classes))
    assert image.shape == (2, channels, 8, 8)
    assert set(image.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("codec", [OneHotCodec(13), AnalogBitsCodec(13), AnalogBitsCodec(5)])
def test_a_perfect_reconstruction_decodes_to_the_same_classes(codec):
    labels = _labels(codec.classes, seed=1)
    decoded = codec.to_image(labels) * (8.0 if codec.kind == "onehot" else 1.0)  # logits for one-hot
    probabilities = codec.probabilities(decoded)
    assert probabilities.shape == (2, codec.classes + 1, 8, 8)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2, 8, 8))
    assert torch.equal(probabilities.argmax(dim=1, keepdim=True), labels)


def test_analog_bits_probabilities_are_the_product_of_digit_probabilities():
    codec = AnalogBitsCodec(3)  # 2 digits, 4 valid codes: the product needs no renormalisation
    decoded = torch.tensor([0.5, -0.2]).view(1, 2, 1, 1)  # P(d0 = 1) = 0.75, P(d1 = 1) = 0.4
    expected = torch.tensor([0.25 * 0.6, 0.25 * 0.4, 0.75 * 0.6, 0.75 * 0.4])  # codes 00, 01, 10, 11
    torch.testing.assert_close(codec.probabilities(decoded).flatten(), expected)


def test_analog_bits_renormalise_over_valid_codes_only():
    probabilities = AnalogBitsCodec(2).probabilities(torch.zeros(1, 2, 1, 1))  # 3 valid of 4 codes, all equal
    torch.testing.assert_close(probabilities.flatten(), torch.full((3,), 1 / 3))


def test_binary_codec_keeps_the_papers_mask_and_probability():
    codec = MaskCodec.from_config(None)
    mask = _labels(1)
    assert torch.equal(codec.to_image(mask), (mask.float() * 2 - 1).expand(-1, 3, -1, -1))
    assert torch.equal(codec.probabilities(codec.to_image(mask)), mask.float())
    with pytest.raises(ValueError, match="unknown mask_encoding"):
        MaskCodec.from_config({"kind": "rgb"})


@pytest.mark.parametrize("kind", ["onehot", "analog_bits"])
def test_multi_organ_sdseg_encodes_and_decodes_k_plus_one_classes(kind):
    torch.manual_seed(0)
    model = build_model("sdseg", {**MICRO_SDSEG, "mask_encoding": {"kind": kind, "classes": 13}}).eval()
    labels = _labels(13)
    labels = torch.nn.functional.interpolate(labels.float(), size=(32, 32)).long()
    with torch.no_grad():
        latent = model.encode_labels(labels, sample=False)
        probabilities = model.decode_probabilities(latent)
        foreground = model.decode_mask(latent)
    assert latent.shape == (2, 4, 16, 16)
    assert probabilities.shape == (2, 14, 32, 32) and model.classes == 13
    torch.testing.assert_close(foreground, 1 - probabilities[:, :1])


def test_the_binary_sdseg_is_unchanged_by_the_codec():
    """The bundled union model's tensors load into the default (binary) SDSeg: same names and shapes."""
    binary = build_model("sdseg", SDSEG_CONFIGS["tiny"])
    assert binary.autoencoder.encoder.layers[0].weight.shape[1] == 3 and binary.classes == 1
    loaded = load_model("sdseg-tiny-phantom")
    missing, unexpected = binary.load_state_dict(loaded.tensors, strict=False)
    assert not unexpected and all(key.startswith("autoencoder.encoder.") for key in missing)


def test_batch_reduction_keeps_only_the_reduced_channels():
    volume = Volume(np.random.default_rng(0).normal(size=(3, 10, 12)).astype(np.float32), np.eye(4))
    three = lambda batch: torch.cat([batch.images, -batch.images, batch.images * 0], dim=1)  # noqa: E731
    reduce = BatchReduction(1, lambda p: p.argmax(axis=1)[:, None].astype(np.float32))
    out = run_slicewise([EngineInput(volume, "x")], three, 3, ModelGrid(16, 1.0), RunOptions(device="cpu"), reduce=reduce)
    assert out.shape == (1, 3, 10, 12)
    expected = np.argmax(np.stack([volume.array, -volume.array, 0 * volume.array]), axis=0)
    assert np.mean(out[0] == expected) > 0.99  # equal up to resampling ties at zero
    with pytest.raises(RuntimeError, match="expected 2 channels"):
        run_slicewise([EngineInput(volume, "x")], three, 3, ModelGrid(16, 1.0), RunOptions(device="cpu"),
                      reduce=BatchReduction(2, lambda p: p[:, :1]))


@pytest.fixture(scope="module")
def organ_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("organ-models")
    return {method: load_model(write_micro_model(root, method, organs=[1, 6, 7])) for method in ("sdseg", "segunet")}


def _ct(seed=0):
    return Volume(np.random.default_rng(seed).normal(0, 300, (4, 40, 48)).astype(np.float32),
                  np.diag([-5.0, -5.0, 5.0, 1.0]))


@pytest.mark.parametrize("method", ["sdseg", "segunet"])
def test_organ_labels_come_from_the_card_and_a_subset_only_drops_organs(organ_models, method):
    loaded = organ_models[method]
    assert [(s.name, s.label) for s in loaded.card.segments] == [("spleen", 1), ("liver", 6), ("stomach", 7)]
    options = RunOptions(device="cpu")
    every = segment(image=_ct(), loaded=loaded, options=options)
    assert set(np.unique(every.labels.array)) <= {0, 1, 6, 7} and len(np.unique(every.labels.array)) >= 2
    assert every.labels.array.dtype == np.uint8 and every.probabilities == {}
    liver = segment(image=_ct(), loaded=loaded, organs=[6], options=options)
    # The arg-max is taken over every class: a voxel is liver in the subset exactly where it was liver before.
    assert np.array_equal(liver.labels.array == 6, every.labels.array == 6)
    assert set(np.unique(liver.labels.array)) <= {0, 6}


def test_several_samples_give_one_probability_map_per_kept_organ(organ_models):
    result = segment(image=_ct(), loaded=organ_models["sdseg"], samples=2, organs=[1, 7], options=RunOptions(device="cpu"))
    assert sorted(result.probabilities) == ["spleen", "stomach"] and result.probability is None
    for volume in result.probabilities.values():
        assert volume.shape == (4, 40, 48) and 0.0 <= volume.array.min() and volume.array.max() <= 1.0


def test_a_card_whose_segments_do_not_match_the_classes_is_refused(organ_models, tmp_path):
    from dataclasses import replace

    loaded = organ_models["sdseg"]
    broken = replace(loaded, card=replace(loaded.card, segments=loaded.card.segments[:2]))
    with pytest.raises(Exception, match="has 3 classes but its card names 2 segments"):
        segment(image=_ct(), loaded=broken, options=RunOptions(device="cpu"))


def test_a_v_prediction_card_samples_with_the_cores_v():
    """Cards may say v as diffusers does ("v_prediction"); the sampler only knows "v"."""
    from MedDiffusionExtension.weights.card import Sampling

    data = {"schedule": {"kind": "linear", "num_steps": 10}, "prediction_type": "v_prediction", "steps": 2}
    assert Sampling.parse(data, "test").prediction_type == "v"


def test_the_bundled_organ_model_is_offered_beside_the_default_union_model(tmp_path, monkeypatch):
    """The union model stays the default until the organ model beats it on the union Dice (docs/evaluation)."""
    from MedDiffusionExtension import tasks

    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(tmp_path))  # bundled models only
    cards = {card.name: card for card in tasks.models_for("segmentation", "sdseg")}
    assert tasks.choose_model("segmentation").name == "sdseg-tiny-phantom"
    organs = cards["sdseg-organs-tiny-phantom"]
    assert [s.label for s in organs.segments] == list(range(1, 14))
    assert organs.architecture["mask_encoding"] == {"kind": "onehot", "classes": 13}
