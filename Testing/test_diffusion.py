"""Tests of the shared diffusion core against diffusers' schedulers, closed forms and exact-model round trips."""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from MedDiffusionExtension.diffusion import (
    DDIMSampler,
    NoiseSchedule,
    ddim_timesteps,
    single_step_x0,
    training_target,
    v_from_x0_and_eps,
    x0_and_eps_from_output,
)

SDSEG_BETAS = dict(beta_start=0.0015, beta_end=0.0155)
DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "sample": "sample", "v": "v_prediction"}


def fake_model(x, t):
    """A fixed, smooth function of (x, t) standing in for a trained denoiser."""
    t = t.float().reshape(-1, *([1] * (x.ndim - 1)))
    return 0.7 * torch.tanh(x) * torch.cos(t / 700.0) + 0.2 * torch.sin(t / 90.0 + x)


# ---------------------------------------------------------------- schedules

@pytest.mark.parametrize("kind, diffusers_name, betas", [
    ("linear", "linear", dict(beta_start=1e-4, beta_end=0.02)),
    ("linear", "linear", dict(beta_start=0.0015, beta_end=0.0195)),
    ("scaled_linear", "scaled_linear", SDSEG_BETAS),
    ("scaled_linear", "scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
    ("cosine", "squaredcos_cap_v2", {}),
])
def test_alphas_cumprod_match_diffusers(kind, diffusers_name, betas):
    ours = NoiseSchedule(kind, 1000, **betas)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name, **betas)
    assert ours.alphas_cumprod.dtype == torch.float64 and ours.betas.dtype == torch.float64
    # diffusers builds its tables in float32.
    np.testing.assert_allclose(ours.betas.numpy(), reference.betas.double().numpy(), rtol=1e-5)
    ours_abar, reference_abar = ours.alphas_cumprod.numpy(), reference.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(ours_abar[:-1], reference_abar[:-1], rtol=1e-5)
    # The capped last cosine beta: 1 - 0.999 in float32 is off by ~1e-5 relative.
    np.testing.assert_allclose(ours_abar[-1], reference_abar[-1], rtol=1e-5 if kind != "cosine" else 1e-4)


def test_default_beta_ranges():
    linear, scaled = NoiseSchedule("linear"), NoiseSchedule("scaled_linear")
    assert (float(linear.betas[0]), float(linear.betas[-1])) == pytest.approx((1e-4, 0.02), rel=1e-12)
    assert (float(scaled.betas[0]), float(scaled.betas[-1])) == pytest.approx((0.00085, 0.012), rel=1e-12)


def test_scaled_linear_is_squared_linspace_of_roots():
    schedule = NoiseSchedule("scaled_linear", 1000, **SDSEG_BETAS)
    roots = np.linspace(math.sqrt(0.0015), math.sqrt(0.0155), 1000)
    np.testing.assert_allclose(schedule.betas.numpy(), roots ** 2, rtol=1e-14)
    # SDSeg's alpha-bar at its last step t = 999, where its single step starts (docs/decisions.md, Diffusion core).
    assert float(schedule.alphas_cumprod[-1]) == pytest.approx(6.687e-4, rel=1e-3)


def test_cosine_matches_closed_form():
    T = 1000
    schedule = NoiseSchedule("cosine", T)

    def f(step):
        return math.cos((step / T + 0.008) / 1.008 * math.pi / 2) ** 2

    closed_form = np.array([f(i + 1) / f(0) for i in range(T)])
    # Only the last beta (1 - f(T)/f(T-1) = 1) is capped at 0.999.
    np.testing.assert_allclose(schedule.alphas_cumprod[:-1].numpy(), closed_form[:-1], rtol=1e-10)
    assert float(schedule.betas[-1]) == 0.999
    assert float(schedule.alphas_cumprod[-1]) == pytest.approx(closed_form[-2] * 0.001, rel=1e-10)
    assert float(schedule.betas[:-1].max()) < 0.999


def test_add_noise_images_and_vectors():
    schedule = NoiseSchedule("scaled_linear", 1000, **SDSEG_BETAS)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 500, 999])
    abar = schedule.alphas_cumprod[t]
    for shape in [(3, 2, 5, 4), (3, 16)]:
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        x_t = schedule.add_noise(x0, noise, t)
        assert x_t.dtype == torch.float32 and x_t.shape == x0.shape
        broadcast = abar.reshape(-1, *([1] * (len(shape) - 1)))
        expected = broadcast.sqrt() * x0.double() + (1 - broadcast).sqrt() * noise.double()
        np.testing.assert_allclose(x_t.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    # A scalar timestep applies to the whole batch.
    x0, noise = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    per_sample = schedule.add_noise(x0, noise, torch.tensor([500, 500]))
    torch.testing.assert_close(schedule.add_noise(x0, noise, 500), per_sample)


def test_alpha_bar_shapes_and_dtypes():
    schedule = NoiseSchedule("linear")
    t = torch.tensor([1, 2])
    assert schedule.alpha_bar(t).dtype == torch.float64
    images = torch.zeros(2, 1, 4, 4)
    assert schedule.alpha_bar(t, like=images).shape == (2, 1, 1, 1)
    assert schedule.alpha_bar(t, like=images).dtype == torch.float32
    assert schedule.alpha_bar(t, like=torch.zeros(2, 7, dtype=torch.float16)).dtype == torch.float16
    assert schedule.alpha_bar(3, like=images).shape == ()


def test_sample_timesteps_uniform_range():
    schedule = NoiseSchedule("linear", 10)
    t = schedule.sample_timesteps(2000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) == 0 and int(t.max()) == 9
    assert torch.bincount(t, minlength=10).min() > 150


# ---------------------------------------------------------------- prediction types

@pytest.mark.parametrize("shape", [(4, 2, 6, 6), (4, 32)])
def test_v_round_trip(shape):
    schedule = NoiseSchedule("cosine")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.tensor([0, 1, 500, 998])
    x_t = schedule.add_noise(x0, eps, t)
    v = v_from_x0_and_eps(schedule, x0, eps, t)
    x0_back, eps_back = x0_and_eps_from_output(schedule, x_t, t, v, "v")
    torch.testing.assert_close(x0_back, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps_back, eps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v"])
@pytest.mark.parametrize("shape", [(3, 1, 5, 5), (3, 12)])
def test_exact_model_recovers_x0_and_eps(prediction_type, shape):
    schedule = NoiseSchedule("scaled_linear", 1000, **SDSEG_BETAS)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.tensor([3, 420, 999])
    x_t = schedule.add_noise(x0, eps, t)
    exact_output = training_target(schedule, x0, eps, t, prediction_type)
    x0_hat, eps_hat = x0_and_eps_from_output(schedule, x_t, t, exact_output, prediction_type)
    # float32 rounding of x_t is amplified by 1/sqrt(abar) (~39 at t=999) for x0 and 1/sqrt(1-abar) at small t.
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-4)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-4)


def test_training_targets():
    schedule = NoiseSchedule("linear")
    x0, noise = torch.ones(2, 3), torch.full((2, 3), 2.0)
    t = torch.tensor([10, 900])
    assert torch.equal(training_target(schedule, x0, noise, t, "epsilon"), noise)
    assert torch.equal(training_target(schedule, x0, noise, t, "sample"), x0)
    abar = schedule.alphas_cumprod[t].reshape(2, 1)
    expected_v = (abar.sqrt() * 2.0 - (1 - abar).sqrt() * 1.0).expand(2, 3).float()
    torch.testing.assert_close(training_target(schedule, x0, noise, t, "v"), expected_v)


# ---------------------------------------------------------------- DDIM vs diffusers

def diffusers_ddim(prediction_type, S, spacing="leading", steps_offset=1, clip=None):
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", **SDSEG_BETAS, clip_sample=clip is not None,
        clip_sample_range=clip or 1.0, set_alpha_to_one=False, steps_offset=steps_offset,
        timestep_spacing=spacing, prediction_type=DIFFUSERS_PREDICTION[prediction_type])
    scheduler.set_timesteps(S)
    return scheduler


def compare_trajectories(ours, reference, prediction_type, eta, rtol, atol, shape=(2, 3, 6, 6)):
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(shape, generator=g)
    step_noise = [torch.randn(shape, generator=g) for _ in ours.timesteps]
    assert torch.equal(ours.timesteps, reference.timesteps)
    x_ours, x_ref = x_T, x_T.clone()
    for i, t in enumerate(ours.timesteps.tolist()):
        t_batch = torch.full((shape[0],), t, dtype=torch.long)
        ref_kwargs = dict(eta=eta, variance_noise=step_noise[i]) if eta > 0 else dict(eta=0.0)
        x_ref = reference.step(fake_model(x_ref, t_batch), t, x_ref, **ref_kwargs).prev_sample
        x_ours = ours.step(fake_model(x_ours, t_batch), t, x_ours, prediction_type,
                           noise=step_noise[i] if eta > 0 else None)
        torch.testing.assert_close(x_ours, x_ref, rtol=rtol, atol=atol, msg=lambda m: f"step {i} (t={t}): {m}")
    return x_ours


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("S", [10, 50])
def test_ddim_trajectory_matches_diffusers(prediction_type, eta, S):
    reference = diffusers_ddim(prediction_type, S)
    # Same float32 betas as diffusers: isolates the step rule.
    same_betas = NoiseSchedule.from_betas(reference.betas)
    ours = DDIMSampler(same_betas, S, eta=eta, steps_offset=1)
    compare_trajectories(ours, reference, prediction_type, eta, rtol=1e-5, atol=1e-5)
    # Our own float64 schedule (abar within ~1e-6 of diffusers' float32 one) holds the same tolerance.
    native = NoiseSchedule("scaled_linear", 1000, **SDSEG_BETAS)
    compare_trajectories(DDIMSampler(native, S, eta=eta, steps_offset=1), diffusers_ddim(prediction_type, S),
                         prediction_type, eta, rtol=1e-5, atol=1e-5)


def test_trailing_trajectory_and_clipping_match_diffusers():
    reference = diffusers_ddim("epsilon", 10, spacing="trailing", steps_offset=0, clip=1.0)
    ours = DDIMSampler(NoiseSchedule.from_betas(reference.betas), 10, eta=0.5, timestep_spacing="trailing",
                       clip_sample=1.0)
    assert ours.timesteps[0] == 999
    compare_trajectories(ours, reference, "epsilon", 0.5, rtol=1e-5, atol=1e-5, shape=(3, 16))


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("S", [1, 2, 3, 7, 10, 30, 50, 333, 999, 1000])
def test_timesteps_match_diffusers(spacing, S):
    offsets = [0, 1] if spacing == "leading" and S < 1000 else [0]
    for offset in offsets:
        reference = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
        reference.set_timesteps(S)
        ours = ddim_timesteps(1000, S, spacing, offset)
        assert ours.dtype == torch.long
        assert torch.equal(ours, reference.timesteps)
        assert len(ours.unique()) == S and bool((ours[:-1] > ours[1:]).all())


def test_documented_spacing_facts():
    assert ddim_timesteps(1000, 1, "trailing").tolist() == [999]
    assert ddim_timesteps(1000, 1, "leading").tolist() == [0]
    assert ddim_timesteps(1000, 1, "linspace").tolist() == [0]
    leading_30 = ddim_timesteps(1000, 30, "leading", steps_offset=1)
    compvis_uniform_30 = np.arange(0, 1000, 1000 // 30) + 1
    assert len(leading_30) == 30 and len(compvis_uniform_30) == 31
    assert leading_30.flip(0).tolist() == compvis_uniform_30[:30].tolist()


def test_sample_loop_equals_manual_steps():
    schedule = NoiseSchedule("linear", 1000, beta_start=0.0015, beta_end=0.0195)
    sampler = DDIMSampler(schedule, 8, eta=0.3, timestep_spacing="trailing")
    g = torch.Generator().manual_seed(4)
    x_T = torch.randn(2, 24, generator=g)
    noises = {t: torch.randn(2, 24, generator=g) for t in sampler.timesteps.tolist()}
    progress = []
    weight = torch.nn.Parameter(torch.tensor(0.5))

    def model_fn(x, t_batch):
        assert t_batch.shape == (2,) and t_batch.dtype == torch.long
        return weight * fake_model(x, t_batch)

    result = sampler.sample(model_fn, x_T, "sample", noise_fn=noises.__getitem__,
                            on_step=lambda done, total: progress.append((done, total)))
    x = x_T
    with torch.no_grad():
        for t in sampler.timesteps.tolist():
            x = sampler.step(model_fn(x, torch.full((2,), t)), t, x, "sample", noise=noises[t])
    torch.testing.assert_close(result, x, rtol=0, atol=0)
    assert not result.requires_grad
    assert progress == [(i, 8) for i in range(1, 9)]


def test_single_step_recovers_x0_from_true_noise():
    schedule = NoiseSchedule("scaled_linear", 1000, **SDSEG_BETAS)
    g = torch.Generator().manual_seed(5)
    z0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.full((2,), 999)
    z_T = schedule.add_noise(z0, noise, t)
    z0_hat = single_step_x0(schedule, noise, t, z_T, "epsilon")
    torch.testing.assert_close(z0_hat, z0, rtol=0, atol=1e-4)
    # A DDIM chain of one trailing step that ends at abar = 1 is the same single-step estimate.
    one_step = DDIMSampler(schedule, 1, timestep_spacing="trailing", set_alpha_to_one=True)
    torch.testing.assert_close(one_step.sample(lambda x, t: noise, z_T, "epsilon"), z0_hat, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(one_step.single_step_x0(noise, 999, z_T, "epsilon"), z0_hat)
    # An eps error is amplified by sqrt((1 - abar)/abar) ~ 38.7 at t = 999.
    abar = float(schedule.alphas_cumprod[999])
    shifted = single_step_x0(schedule, noise + 0.01, t, z_T, "epsilon")
    assert float((z0_hat - shifted).mean()) == pytest.approx(0.01 * math.sqrt((1 - abar) / abar), rel=1e-3)


# ---------------------------------------------------------------- argument errors

@pytest.mark.parametrize("make", [
    lambda s: DDIMSampler(s, 0),
    lambda s: DDIMSampler(s, 1001),
    lambda s: DDIMSampler(s, 2.0),
    lambda s: DDIMSampler(s, 10, eta=-0.1),
    lambda s: DDIMSampler(s, 10, eta=1.5),
    lambda s: DDIMSampler(s, 10, timestep_spacing="uniform"),
    lambda s: DDIMSampler(s, 10, timestep_spacing="trailing", steps_offset=1),
    lambda s: DDIMSampler(s, 1000, steps_offset=1),
    lambda s: DDIMSampler(s, 10, steps_offset=-1),
    lambda s: DDIMSampler(s, 10, clip_sample=0.0),
    lambda s: DDIMSampler("scaled_linear", 10),
    lambda s: NoiseSchedule("quadratic"),
    lambda s: NoiseSchedule("cosine", beta_start=0.001),
    lambda s: NoiseSchedule("linear", beta_start=0.02, beta_end=0.01),
    lambda s: NoiseSchedule("linear", num_steps=0),
    lambda s: NoiseSchedule.from_betas([0.1, 1.0]),
    lambda s: s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1000])),
    lambda s: s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([-1, 3])),
    lambda s: s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1.0, 3.0])),
    lambda s: s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1, 2, 3])),
    lambda s: s.add_noise(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([1, 2])),
    lambda s: training_target(s, torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1]), "x0"),
    lambda s: x0_and_eps_from_output(s, torch.zeros(1, 2), torch.tensor([1]), torch.zeros(1, 3), "epsilon"),
])
def test_argument_errors(make):
    schedule = NoiseSchedule("scaled_linear")
    with pytest.raises(ValueError):
        make(schedule)


def test_step_errors():
    sampler = DDIMSampler(NoiseSchedule("scaled_linear"), 10, eta=0.5)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="noise"):
        sampler.step(x, 900, x, "epsilon")
    with pytest.raises(ValueError, match="not one of"):
        sampler.step(x, 901, x, "epsilon", noise=x)
    with pytest.raises(ValueError, match="one integer timestep"):
        sampler.step(x, torch.tensor([900, 800]), x, "epsilon", noise=x)
    with pytest.raises(ValueError, match="noise_fn"):
        sampler.sample(lambda x, t: x, x, "epsilon")
    with pytest.raises(ValueError, match="prediction type"):
        DDIMSampler(NoiseSchedule("scaled_linear"), 10).sample(lambda x, t: x, x, "eps")
    # The whole-batch timestep may also come as the (B,) tensor the model received.
    sampler.step(x, torch.tensor([900, 900]), x, "epsilon", noise=x)


def test_backend_does_not_import_diffusers():
    package = Path(__file__).resolve().parents[1] / "MedDiffusionExtension" / "diffusion"
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "diffusers" for name in names), source.name
