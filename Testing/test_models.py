"""Tests of the networks (MedDiffusionExtension.models) on tiny configs and small images."""

import copy
import json

import pytest
import torch

from MedDiffusionExtension.models import (CDM, CDM_CONFIGS, CUNET_CONFIGS, MDN, SDSEG_CONFIGS, SEGUNET_CONFIGS,
                                         CUNet, DiagonalGaussian, SDSeg, SelfAttention, build_model,
                                         timestep_embedding)


def small_cdm_config() -> dict:
    config = copy.deepcopy(CDM_CONFIGS["tiny"])
    config["image_size"] = 32
    config["mrm"].update(patch_size=4, mask_patch_size=8)
    return config


def small_sdseg_config() -> dict:
    config = copy.deepcopy(SDSEG_CONFIGS["tiny"])
    config["image_size"] = 32  # f = 4 -> 8x8 latents
    config["denoiser"]["attention_resolutions"] = [4]
    return config


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter (zero-initialised ones included) so that all paths carry signal."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def cdm() -> CDM:
    torch.manual_seed(0)
    return CDM.from_config(small_cdm_config()).eval()


@pytest.fixture(scope="module")
def sdseg() -> SDSeg:
    torch.manual_seed(0)
    return SDSeg.from_config(small_sdseg_config()).eval()


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0, 3, 999])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8)
    assert torch.allclose(emb[:, 0], torch.cos(t.float()))  # frequency 1 comes first in each half
    assert torch.allclose(emb[:, 4], torch.sin(t.float()))
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_self_attention_matches_naive_softmax_attention():
    torch.manual_seed(0)
    attention = SelfAttention(8, num_heads=2)
    randomize(attention)
    x = torch.randn(2, 8, 3, 3)
    q, k, v = attention.qkv(attention.norm(x)).reshape(2, 3, 2, 4, 9).unbind(1)  # (B, heads, dim, pixels)
    weights = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / 2.0, dim=-1)
    y = torch.einsum("bhij,bhdj->bhdi", weights, v).reshape(2, 8, 3, 3)
    assert torch.allclose(attention(x), x + attention.out(y), atol=1e-5)


# --- CDM ---

def test_cdm_output_shapes(cdm):
    targets, sources = torch.randn(3, 2, 32, 32), torch.randn(3, 2, 32, 32)
    r = cdm.mrm.represent(targets)
    assert r.shape == (3, 64)
    assert cdm.mdn(r, torch.tensor([0, 10, 999])).shape == (3, 64)
    assert cdm.cunet(sources, r).shape == (3, 2, 32, 32)
    assert cdm.mrm.reconstruct(targets).shape == (3, 2, 32, 32)
    assert cdm.mrm.loss(targets, torch.Generator().manual_seed(0)).shape == ()


def test_cdm_state_dict_has_one_prefix_per_network(cdm):
    prefixes = {key.split(".")[0] for key in cdm.state_dict()}
    assert prefixes == {"mrm", "mdn", "cunet"}


def test_mrm_mask_has_exact_ratio_and_independent_modalities(cdm):
    mask = cdm.mrm.random_mask(5, 32, 32, torch.Generator().manual_seed(1))
    assert mask.shape == (5, 2, 4, 4) and mask.dtype == torch.bool
    assert (mask.flatten(2).sum(-1) == round(0.6 * 16)).all()  # 10 of 16 mask patches, per sample and modality
    assert not torch.equal(mask[:, 0], mask[:, 1])  # each modality masked separately (paper)
    again = cdm.mrm.random_mask(5, 32, 32, torch.Generator().manual_seed(1))
    assert torch.equal(mask, again)
    shared = copy.deepcopy(cdm.mrm)
    shared.independent_masks = False
    mask = shared.random_mask(5, 32, 32, torch.Generator().manual_seed(1))
    assert torch.equal(mask[:, 0], mask[:, 1])


def test_mrm_loss_counts_masked_pixels_only(cdm):
    torch.manual_seed(0)
    targets = torch.randn(2, 2, 32, 32)
    mask = cdm.mrm.random_mask(2, 32, 32, torch.Generator().manual_seed(2))
    visible = ~cdm.mrm.pixel_mask(mask)
    assert visible.float().mean().item() == pytest.approx(6 / 16)
    garbage = torch.randn_like(targets) * 5
    perfect_where_masked = torch.where(visible, garbage, targets)
    assert cdm.mrm.masked_loss(perfect_where_masked, targets, mask).item() == 0.0
    prediction = torch.randn_like(targets)
    other_visible = torch.where(visible, garbage, prediction)
    expected = ((prediction - targets)[~visible] ** 2).mean()
    assert torch.allclose(cdm.mrm.masked_loss(prediction, targets, mask), expected)
    assert torch.allclose(cdm.mrm.masked_loss(other_visible, targets, mask), expected)


def test_mrm_loss_is_deterministic_given_a_generator(cdm):
    targets = torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(3))
    a = cdm.mrm.loss(targets, torch.Generator().manual_seed(4))
    b = cdm.mrm.loss(targets, torch.Generator().manual_seed(4))
    c = cdm.mrm.loss(targets, torch.Generator().manual_seed(5))
    assert a.item() == b.item() and a.item() != c.item() and a.item() > 0


def test_mrm_masking_changes_the_encoding(cdm):
    targets = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(6))
    mask = cdm.mrm.random_mask(1, 32, 32, torch.Generator().manual_seed(7))
    assert not torch.allclose(cdm.mrm.encode(targets, mask), cdm.mrm.encode(targets))


def test_represent_is_standardized_per_sample(cdm):
    targets = torch.randn(4, 2, 32, 32, generator=torch.Generator().manual_seed(8)) * 3 + 1
    r = cdm.mrm.represent(targets)
    assert torch.allclose(r.mean(dim=1), torch.zeros(4), atol=1e-5)
    assert torch.allclose(r.std(dim=1), torch.ones(4), atol=1e-4)
    assert torch.equal(r, cdm.mrm.represent(targets))  # no masking, no randomness
    assert torch.allclose(r[:1], cdm.mrm.represent(targets[:1]), atol=1e-5)  # per sample, not per batch


@pytest.mark.parametrize("decoupled", [True, False])
def test_mdn_output_is_zero_at_init(decoupled):
    torch.manual_seed(0)
    mdn = MDN(representation_dim=16, hidden=32, depth=2, decoupled_input=decoupled)
    out = mdn(torch.randn(3, 16), torch.tensor([1, 500, 999]))
    assert torch.equal(out, torch.zeros(3, 16))
    assert all(torch.count_nonzero(block.out[-1].weight) == 0 for block in mdn.blocks)


def test_mdn_decoupled_input_projects_each_half_separately():
    torch.manual_seed(0)
    mdn = MDN(representation_dim=16, hidden=32, depth=2, decoupled_input=True)
    assert [p[0].in_features for p in mdn.half_projections] == [8, 8]
    randomize(mdn)
    r, t = torch.randn(2, 16), torch.tensor([5, 5])
    changed = r.clone()
    changed[:, 8:] += 1.0
    assert not torch.allclose(mdn(r, t), mdn(changed, t))
    assert not torch.allclose(mdn(r, t), mdn(r, torch.tensor([900, 900])))


def test_mdn_source_condition_is_used_and_required():
    torch.manual_seed(0)
    mdn = MDN(representation_dim=16, hidden=32, depth=1, source_condition_dim=6)
    randomize(mdn)
    r, t = torch.randn(2, 16), torch.tensor([3, 3])
    assert not torch.allclose(mdn(r, t, torch.zeros(2, 6)), mdn(r, t, torch.ones(2, 6)))
    with pytest.raises(ValueError):
        mdn(r, t)


@pytest.mark.parametrize("fusion", ["add", "film"])
def test_cunet_depends_on_representation_only_when_conditioned(fusion):
    config = small_cdm_config()
    config["cunet"]["fusion"] = fusion
    torch.manual_seed(0)
    cunet = CUNet.from_config(config).eval()
    sources = torch.randn(2, 2, 32, 32)
    r1, r2 = torch.randn(2, 64), torch.randn(2, 64)
    assert (cunet(sources, r1) - cunet(sources, r2)).abs().max() > 1e-4
    with pytest.raises(ValueError):
        cunet(sources)

    config["cunet"]["conditioned"] = False
    torch.manual_seed(0)
    plain = CUNet.from_config(config).eval()
    assert count(plain) < count(cunet)
    assert torch.equal(plain(sources, r1), plain(sources, r2))
    assert torch.equal(plain(sources, r1), plain(sources))


def test_cunet_tanh_output_is_bounded():
    config = small_cdm_config()
    config["cunet"]["output_activation"] = "tanh"
    cunet = CUNet.from_config(config)
    randomize(cunet)
    y = cunet(torch.randn(2, 2, 32, 32) * 10, torch.randn(2, 64))
    assert y.abs().max() <= 1.0


def test_cdm_from_config_round_trips_through_json():
    config = small_cdm_config()
    torch.manual_seed(0)
    model = build_model("cdm", config)
    again = build_model("cdm", json.loads(json.dumps(model.config)))
    assert again.config == json.loads(json.dumps(config))
    again.load_state_dict(model.state_dict())  # strict: same keys and shapes
    sources, r = torch.randn(1, 2, 32, 32), torch.randn(1, 64)
    assert torch.equal(model.cunet(sources, r), again.cunet(sources, r))


# --- SDSeg ---

def test_sdseg_shapes_and_ranges(sdseg):
    mask = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    z = sdseg.encode_mask(mask, generator=torch.Generator().manual_seed(1))
    assert z.shape == (2, 4, 8, 8)
    z_c = sdseg.encode_image(torch.randn(2, 1, 32, 32))
    assert z_c.shape == (2, 4, 8, 8)
    eps = sdseg.predict_noise(torch.randn_like(z), torch.tensor([0, 999]), z_c)
    assert eps.shape == (2, 4, 8, 8)
    probability = sdseg.decode_mask(torch.randn(2, 4, 8, 8) * 5)
    assert probability.shape == (2, 1, 32, 32)
    assert probability.min() >= 0.0 and probability.max() <= 1.0


def test_sdseg_mask_encoding_sample_mode_and_scale(sdseg):
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 10:24] = 1.0
    a = sdseg.encode_mask(mask, generator=torch.Generator().manual_seed(3))
    b = sdseg.encode_mask(mask, generator=torch.Generator().manual_seed(3))
    mode = sdseg.encode_mask(mask, sample=False)
    assert torch.equal(a, b) and not torch.equal(a, mode)
    model = copy.deepcopy(sdseg)
    model.latent_scale.fill_(2.5)
    assert torch.allclose(model.encode_mask(mask, sample=False), 2.5 * mode)
    assert torch.allclose(model.decode_mask(2.5 * mode), sdseg.decode_mask(mode))
    assert "latent_scale" in model.state_dict()


def test_sdseg_zero_initialised_layers(sdseg):
    weight = sdseg.denoiser.input.weight
    assert weight.shape[1] == 8
    assert torch.count_nonzero(weight[:, 4:]) == 0 and torch.count_nonzero(weight[:, :4]) > 0
    z_t, z_c = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    assert torch.equal(sdseg.predict_noise(z_t, torch.tensor([500]), z_c), torch.zeros(1, 4, 8, 8))


def test_sdseg_denoiser_uses_time_image_latent_and_attention_levels(sdseg):
    assert any(isinstance(m, SelfAttention) for m in sdseg.denoiser.encoder[1].modules())  # 4x4 latents
    assert not any(isinstance(m, SelfAttention) for m in sdseg.denoiser.encoder[0].modules())
    denoiser = copy.deepcopy(sdseg)
    randomize(denoiser.denoiser)
    z_t, z_c = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    out = denoiser.predict_noise(z_t, torch.tensor([10]), z_c)
    assert not torch.allclose(out, denoiser.predict_noise(z_t, torch.tensor([900]), z_c))
    assert not torch.allclose(out, denoiser.predict_noise(z_t, torch.tensor([10]), z_c + 1))


def test_vision_encoder_starts_as_the_autoencoder_encoder(sdseg):
    ae, vision = sdseg.autoencoder.encoder.state_dict(), sdseg.vision_encoder.encoder.state_dict()
    assert ae.keys() == vision.keys()
    assert all(torch.equal(ae[k], vision[k]) for k in ae)
    assert sdseg.vision_encoder.project.out_channels == 4


def test_diagonal_gaussian_kl_matches_torch_distributions():
    torch.manual_seed(0)
    moments = torch.randn(2, 8, 3, 3)
    posterior = DiagonalGaussian(moments)
    normal = torch.distributions.Normal(posterior.mean, posterior.std)
    expected = torch.distributions.kl_divergence(normal, torch.distributions.Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    assert torch.allclose(posterior.kl(), expected, atol=1e-5)
    assert torch.allclose(DiagonalGaussian(torch.zeros(1, 8, 2, 2)).kl(), torch.zeros(1))


def test_sdseg_from_config_round_trips_through_json(sdseg):
    again = build_model("sdseg", json.loads(json.dumps(sdseg.config)))
    again.load_state_dict(sdseg.state_dict())
    assert again.config == sdseg.config


def test_segunet_outputs_one_logit_channel():
    config = copy.deepcopy(SEGUNET_CONFIGS["tiny"])
    config["unet"]["channels"] = 8
    model = build_model("segunet", json.loads(json.dumps(config)))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def test_build_model_rejects_unknown_methods():
    with pytest.raises(ValueError, match="unknown model method"):
        build_model("gan", {})


def test_tiny_parameter_counts():
    counts = {
        "cdm": {name: count(net) for name, net in build_model("cdm", CDM_CONFIGS["tiny"]).named_children()},
        "cunet_m1": count(build_model("cunet", CUNET_CONFIGS["tiny"])),
        "sdseg": {name: count(net) for name, net in build_model("sdseg", SDSEG_CONFIGS["tiny"]).named_children()},
        "segunet": count(build_model("segunet", SEGUNET_CONFIGS["tiny"])),
    }
    print(json.dumps(counts))
    assert sum(counts["cdm"].values()) < 5_000_000
    assert counts["cunet_m1"] < counts["cdm"]["cunet"]
    sdseg_total = sum(counts["sdseg"].values())
    assert 0.7 < counts["segunet"] / sdseg_total < 1.3  # baseline of similar size
    assert counts["sdseg"]["vision_encoder"] < counts["sdseg"]["autoencoder"]


def test_configs_reject_image_sizes_the_networks_cannot_halve():
    config = small_sdseg_config()
    config["image_size"] = 24  # latent 6 cannot be halved twice
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model("sdseg", config)
    config = small_cdm_config()
    config["image_size"] = 36
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model("cdm", config)
