"""The shared trainer on a toy recipe: learning, logs, EMA, LR schedule, clipping, exact resume (1 and 2 processes),
time budget, max steps, CLI and export."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from MedDiffusionExtension.errors import InputError  # noqa: E402
from MedDiffusionExtension.weights import load_model, read_card  # noqa: E402
from Testing.toy_recipe import ToyRecipe  # noqa: E402
from training.checkpoint import checkpoint_path, export, list_checkpoints, load_checkpoint  # noqa: E402
from training.ema import warmed_up_decay  # noqa: E402
from training.cli import main as cli_main  # noqa: E402
from training.schedules import lr_factor  # noqa: E402
from training.trainer import Trainer, TrainConfig  # noqa: E402

TOY = "Testing.toy_recipe:ToyRecipe"


def run(out_dir: Path, recipe_config: dict | None = None, clock=None, **overrides):
    settings = dict(max_steps=6, batch_size=8, lr=1e-2, log_every=1, ckpt_every=100, device="cpu", progress=False)
    settings.update(overrides)
    trainer = Trainer(ToyRecipe(recipe_config, name=TOY), TrainConfig(out_dir=str(out_dir), **settings))
    if clock is not None:
        trainer.clock = clock
    return trainer, trainer.fit()


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        assert_same_state(a["state"][index], b["state"][index])


def test_loss_decreases_and_logs_are_written(tmp_path):
    trainer, result = run(tmp_path, max_steps=40, log_every=10, val_every=20)
    rows = read_rows(tmp_path / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    assert list(rows[0])[:6] == ["step", "loss", "lr", "items", "seconds", "grad_norm"]
    assert "rmse" in rows[0]
    assert [int(r["items"]) for r in rows] == [80, 160, 240, 320]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.6 * losses[0]
    val = read_rows(tmp_path / "val_log.csv")
    assert [int(r["step"]) for r in val] == [20, 40] and float(val[1]["loss"]) < float(val[0]["loss"])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert result.stopped_by == "max_steps" and result.step == 40
    assert result.checkpoint == checkpoint_path(tmp_path, 40) and result.checkpoint.is_file()
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))


def test_ema_follows_its_formula_with_warm_up(tmp_path):
    decay = warmed_up_decay(0.9, 1)  # the second update: min(0.9, 2 / 11)
    assert decay == pytest.approx(2 / 11) and warmed_up_decay(0.9, 1000) == 0.9
    one, _ = run(tmp_path / "one", max_steps=1, ema_decay=0.9)
    two, _ = run(tmp_path / "two", max_steps=2, ema_decay=0.9)
    weights_1, weights_2 = one.model.state_dict(), two.model.state_dict()
    ema_1, ema_2 = one.ema.module.state_dict(), two.ema.module.state_dict()
    for key in weights_1:
        assert torch.equal(ema_1[key], weights_1[key])  # first update copies
        expected = decay * weights_1[key] + (1 - decay) * weights_2[key]
        torch.testing.assert_close(ema_2[key], expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(ema_2[key], weights_2[key])


def test_lr_warmup_then_cosine_and_linear():
    cosine = dict(schedule="cosine", warmup_steps=4, total_steps=20, min_ratio=0.1)
    assert lr_factor(0, **cosine) == pytest.approx(0.25)
    assert lr_factor(3, **cosine) == pytest.approx(1.0)
    assert lr_factor(4, **cosine) == pytest.approx(1.0)
    assert lr_factor(8, **cosine) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(12, **cosine) == pytest.approx(0.55)
    assert lr_factor(20, **cosine) == pytest.approx(0.1) and lr_factor(30, **cosine) == pytest.approx(0.1)
    assert lr_factor(8, **dict(cosine, schedule="linear")) == pytest.approx(0.775)
    assert lr_factor(8, **dict(cosine, schedule="constant")) == 1.0


def test_trainer_logs_the_scheduled_lr(tmp_path):
    run(tmp_path, max_steps=6, warmup_steps=2, lr_schedule="cosine", min_lr=1e-3)
    logged = [float(r["lr"]) for r in read_rows(tmp_path / "train_log.csv")]
    expected = [1e-2 * lr_factor(s, schedule="cosine", warmup_steps=2, total_steps=6, min_ratio=0.1) for s in range(6)]
    assert logged == pytest.approx(expected)
    assert logged[:3] == pytest.approx([5e-3, 1e-2, 1e-2])


def test_gradient_clipping_caps_the_norm(tmp_path):
    trainer, _ = run(tmp_path, max_steps=1, grad_clip=1e-3)
    before = float(read_rows(tmp_path / "train_log.csv")[0]["grad_norm"])
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
    assert before > 0.1
    assert float(after) == pytest.approx(1e-3, rel=1e-4)


def test_exact_resume_matches_straight_run(tmp_path):
    # 40 items / batch 8 = 5 batches per epoch: the resume lands mid-epoch and the run crosses an epoch.
    options = dict(warmup_steps=2, lr_schedule="cosine", schedule_steps=6, ema_decay=0.9)
    straight, _ = run(tmp_path / "straight", max_steps=6, **options)
    run(tmp_path / "split", max_steps=3, **options)
    resumed, result = run(tmp_path / "split", max_steps=6, resume="auto", **options)
    assert result.step == 6 and resumed.epoch == straight.epoch == 1
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert_same_state(straight.ema.state_dict(), resumed.ema.state_dict())
    assert_same_optimizer(straight.optimizer.state_dict(), resumed.optimizer.state_dict())
    assert straight.scheduler.state_dict() == resumed.scheduler.state_dict()
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    split_rows = read_rows(tmp_path / "split" / "train_log.csv")
    assert [int(r["step"]) for r in split_rows] == [1, 2, 3, 4, 5, 6]
    straight_losses = [r["loss"] for r in read_rows(tmp_path / "straight" / "train_log.csv")]
    assert [r["loss"] for r in split_rows] == straight_losses


def test_resume_without_generator_state_would_differ(tmp_path):
    """Guards the test above: the loss really uses the generator, so a different noise stream changes the weights."""
    a, _ = run(tmp_path / "a", max_steps=2)
    b, _ = run(tmp_path / "b", max_steps=2, seed=1)
    assert not torch.equal(a.model[0].weight, b.model[0].weight)


def test_time_budget_stops_with_a_checkpoint_and_resume_finishes(tmp_path):
    ticks = iter(range(10_000))
    clock = lambda: float(next(ticks))  # noqa: E731  one second per reading
    _, stopped = run(tmp_path, max_steps=50, time_budget=4.5, clock=clock)
    assert stopped.stopped_by == "time_budget" and 0 < stopped.step < 50
    assert stopped.checkpoint == checkpoint_path(tmp_path, stopped.step)
    assert load_checkpoint(stopped.checkpoint)["step"] == stopped.step
    _, finished = run(tmp_path, max_steps=8, resume="auto")
    assert finished.stopped_by == "max_steps" and finished.step == 8


def test_fit_to_budget_ends_the_cosine_with_the_time_budget(tmp_path):
    ticks = iter(range(10_000))
    clock = lambda: float(next(ticks))  # noqa: E731  one second per reading (2.5 readings a step here)
    _, result = run(tmp_path, max_steps=1000, time_budget=40, fit_to_budget=4, lr_schedule="cosine", min_lr=1e-4,
                    clock=clock)
    # Steps 3 and 4 took 5 s: 0.4 steps/s; 95% of the 30 s left is 11 more steps. The run ends by its (fitted) step
    # count inside the budget, the cosine decayed to its floor over those 15 steps, not over 1000.
    assert result.stopped_by == "max_steps" and result.step == 15 and result.wall_seconds <= 40
    logged = [float(r["lr"]) for r in read_rows(tmp_path / "train_log.csv")]
    expected = [1e-2 * lr_factor(s, schedule="cosine", warmup_steps=0, total_steps=15, min_ratio=0.01) for s in range(15)]
    assert logged[4:] == pytest.approx(expected[4:]) and logged[-1] < 0.025 * 1e-2  # decayed to near its floor
    assert load_checkpoint(result.checkpoint)["train_config"]["max_steps"] == 15


def test_fit_to_budget_never_raises_max_steps_and_needs_a_budget(tmp_path):
    _, result = run(tmp_path / "short", max_steps=6, time_budget=3600, fit_to_budget=2)
    assert result.step == 6 and result.stopped_by == "max_steps"
    with pytest.raises(InputError, match="--fit-to-budget needs a --time-budget"):
        run(tmp_path / "none", fit_to_budget=2)
    with pytest.raises(InputError, match="--fit-to-budget must be 0"):
        run(tmp_path / "one", time_budget=60, fit_to_budget=1)


def test_a_resumed_fitted_run_ends_the_decay_it_was_fitted_to(tmp_path):
    settings = dict(max_steps=1000, time_budget=40, fit_to_budget=4, lr_schedule="cosine", warmup_steps=2)
    first = Trainer(ToyRecipe(None, name=TOY), TrainConfig(out_dir=str(tmp_path), batch_size=8, lr=1e-2, log_every=1,
                                                           device="cpu", progress=False, **settings))
    # Two seconds a step; after step 10 the clock jumps past the budget (a pre-emption, as far as the run knows).
    first.clock = lambda: 2.0 * first.step + (1000.0 if first.step >= 10 else 0.0)
    stopped = first.fit()
    # Steps 3-4: 0.5 steps/s; 95% of the 32 s left is 15 more steps.
    assert stopped.stopped_by == "time_budget" and stopped.step == 10 and first.config.max_steps == 19
    resumed = Trainer(ToyRecipe(None, name=TOY), TrainConfig(out_dir=str(tmp_path), batch_size=8, lr=1e-2, log_every=1,
                                                             device="cpu", progress=False, resume="auto", **settings))
    resumed.clock = lambda: 2.0 * resumed.step
    finished = resumed.fit()
    assert finished.stopped_by == "max_steps" and finished.step == 19 and resumed.config.max_steps == 19
    logged = [float(r["lr"]) for r in read_rows(tmp_path / "train_log.csv")]
    expected = [1e-2 * lr_factor(s, schedule="cosine", warmup_steps=2, total_steps=19) for s in range(19)]
    assert len(logged) == 19 and logged[4:] == pytest.approx(expected[4:])  # one decay across the resume


def test_fit_to_budget_shortens_a_warm_up_longer_than_the_fitted_run(tmp_path, capsys):
    ticks = iter(range(10_000))
    trainer, result = run(tmp_path, max_steps=1000, time_budget=40, fit_to_budget=4, lr_schedule="cosine",
                          warmup_steps=50, clock=lambda: float(next(ticks)))
    assert result.step == 15 and trainer.config.warmup_steps == 3
    logged = [float(r["lr"]) for r in read_rows(tmp_path / "train_log.csv")]
    assert logged[-1] < 0.02 * 1e-2  # decayed: a 50-step warm-up would have ended this run at 30% of the peak
    assert "warm-up shortened to 3 steps" in capsys.readouterr().err


def test_a_budget_that_runs_out_before_the_fit_says_so(tmp_path, capsys):
    ticks = iter(range(10_000))
    _, result = run(tmp_path, max_steps=1000, time_budget=10, fit_to_budget=100, clock=lambda: float(next(ticks)))
    assert result.stopped_by == "time_budget" and result.step < 100
    assert "ran out before step 100 of --fit-to-budget" in capsys.readouterr().err


def test_a_fresh_run_refuses_a_folder_with_an_earlier_runs_checkpoints(tmp_path):
    run(tmp_path, max_steps=2)
    with pytest.raises(InputError, match="already holds an earlier run's checkpoints.*--resume auto"):
        run(tmp_path, max_steps=4)
    _, resumed = run(tmp_path, max_steps=4, resume="auto")
    assert resumed.step == 4


def test_on_start_values_are_recorded_and_survive_resume(tmp_path):
    trainer, result = run(tmp_path, {"measure_scale": True}, max_steps=2)
    scale = trainer.recipe.config["target_scale"]
    assert scale > 0 and load_checkpoint(result.checkpoint)["recipe"]["config"]["target_scale"] == scale
    resumed, _ = run(tmp_path, {"measure_scale": True}, max_steps=3, resume="auto")
    assert resumed.recipe.config["target_scale"] == scale


def test_cli_respects_max_steps_and_keeps_newest_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = cli_main([
        "train", "--recipe", TOY, "--out-dir", str(tmp_path), "--max-steps", "5", "--ckpt-every", "2",
        "--keep-checkpoints", "2", "--batch-size", "4", "--device", "cpu", "--no-progress", "--set", "hidden=8",
    ])
    assert code == 0
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004.pt", "step_00000005.pt"]
    state = load_checkpoint(tmp_path)
    assert state["step"] == 5 and state["recipe"]["config"]["hidden"] == 8
    assert state["train_config"]["batch_size"] == 4 and state["command"].startswith("python -m training train")
    assert state["model"]["0.weight"].shape == (8, 4)


def test_cli_reports_bad_recipe_option(tmp_path, capsys):
    code = cli_main(["train", "--recipe", TOY, "--out-dir", str(tmp_path), "--set", "hiden=8"])
    assert code == 2 and capsys.readouterr().err.startswith("error: recipe")


def test_export_writes_a_loadable_model_folder(tmp_path):
    trainer, result = run(tmp_path / "run", max_steps=3, ema_decay=0.5)
    folder = export(result.checkpoint, tmp_path / "model", extra_card={"metrics": {"rmse": 0.1}}, name="toy-test")
    tensors = load_file(str(folder / "model.safetensors"))
    assert_same_state(tensors, trainer.ema.module.state_dict())
    card = read_card(folder).data
    assert card["name"] == "toy-test" and card["method"] == "toy" and card["metrics"] == {"rmse": 0.1}
    assert card["recipe"] == {"name": TOY, "config": trainer.recipe.config}
    assert card["training"]["steps"] == 3 and card["training"]["weights"] == "ema"
    assert card["training"]["world_size"] == 1 and card["training"]["data"] == {"dataset": "LinearMapData", "items": 40}
    assert_same_state(load_model(folder).tensors, tensors)  # sha256 verified on load
    raw = export(tmp_path / "run", tmp_path / "raw", use_ema=False, name="toy-raw")
    assert_same_state(load_file(str(raw / "model.safetensors")), trainer.model.state_dict())
    half = export(tmp_path / "run", tmp_path / "half", use_ema=False, name="toy-half", dtype="float16")
    stored = load_file(str(half / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert read_card(half).data["training"]["stored_dtype"] == "float16"
    model = trainer.recipe.build_model()
    model.load_state_dict(stored)  # float32 parameters take float16 weights
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_two_process_torchrun_resumes_exactly(tmp_path):
    def torchrun(out_dir: Path, *extra: str) -> None:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training",
            "train", "--recipe", TOY, "--out-dir", str(out_dir), "--max-steps", "6", "--batch-size", "4",
            "--lr", "1e-2", "--ema-decay", "0.9", "--lr-schedule", "cosine", "--warmup-steps", "2",
            "--log-every", "1", "--no-progress", "--device", "cpu", *extra,
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]

    # One launch checkpoints at 3 and runs on to 6; a second launch resumes from 3 (20 items per rank / 4 = 5 batches
    # per epoch: mid-epoch resume, then an epoch boundary).
    torchrun(tmp_path / "straight", "--ckpt-every", "3", "--keep-checkpoints", "0")
    torchrun(tmp_path / "resumed", "--resume", str(checkpoint_path(tmp_path / "straight", 3)))
    straight, resumed = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert straight["step"] == resumed["step"] == 6 and straight["world_size"] == 2 and straight["epoch"] == 1
    assert_same_state(straight["model"], resumed["model"])
    assert_same_state(straight["ema"], resumed["ema"])
    assert_same_optimizer(straight["optimizer"], resumed["optimizer"])
    assert len(straight["rng"]) == 2 and not torch.equal(straight["rng"][0]["generator"], straight["rng"][1]["generator"])
    # A single writer: one CSV with each step once, only the expected checkpoints, one TensorBoard file.
    assert sorted(p.name for p in (tmp_path / "straight").glob("*.csv")) == ["train_log.csv"]
    assert [int(r["step"]) for r in read_rows(tmp_path / "straight" / "train_log.csv")] == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in list_checkpoints(tmp_path / "straight")] == ["step_00000003.pt", "step_00000006.pt"]
    assert len(list((tmp_path / "straight" / "tensorboard").iterdir())) == 1
    assert [int(r["step"]) for r in read_rows(tmp_path / "resumed" / "train_log.csv")] == [4, 5, 6]


class LoudToy(ToyRecipe):
    """Loss x100: GradScaler's initial scale (65536) overflows fp16 gradients for several steps, as it is designed to
    on a fresh run, before it settles."""

    def loss(self, model, batch, generator):
        loss, metrics = super().loss(model, batch, generator)
        return loss * 100, metrics


def test_fp16_survives_the_scalers_first_overflows(tmp_path):
    settings = dict(max_steps=8, batch_size=8, lr=1e-2, log_every=4, ckpt_every=100, device="cpu", progress=False,
                    amp="fp16", warmup_steps=4, lr_schedule="linear")
    trainer = Trainer(LoudToy(None, name="loud"), TrainConfig(out_dir=str(tmp_path), **settings))
    result = trainer.fit()
    rows = read_rows(tmp_path / "train_log.csv")
    skipped = [int(r["skipped_steps"]) for r in rows]
    assert result.step == 8 and skipped[0] > 0 and trainer.scaler.get_scale() < 65536
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    # The schedule counts updates made: warm-up is not used up by steps the scaler skipped.
    updates = 8 - sum(skipped)
    assert trainer.scheduler.last_epoch == updates
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
        1e-2 * lr_factor(updates, schedule="linear", warmup_steps=4, total_steps=8, min_ratio=0.0))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    if skipped[0] == 4:
        assert math.isnan(float(rows[0]["grad_norm"]))  # no update in the window, no gradient norm to report
    assert math.isfinite(float(rows[-1]["grad_norm"]))


def test_no_collective_per_step_without_a_time_budget(tmp_path, monkeypatch):
    import training.trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "any_rank", lambda ctx, flag: calls.append(flag) or flag)
    run(tmp_path / "free", max_steps=5)
    assert calls == []
    run(tmp_path / "budget", max_steps=5, time_budget=3600)
    assert len(calls) == 5


class _OnDevice(torch.Tensor):
    """A CPU tensor standing for one on a device without float64 (Apple MPS)."""


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class _NoFloat64OnDevice(torch.overrides.TorchFunctionMode):
    """Fails any operation that makes a float64 tensor out of a device tensor; `.cpu()` leaves the device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.Tensor.cpu:
            return out.as_subclass(torch.Tensor) if isinstance(out, _OnDevice) else out
        if any(isinstance(t, _OnDevice) for t in _tensors((args, kwargs))):
            if any(t.dtype == torch.float64 for t in _tensors(out)):
                raise TypeError(f"{getattr(func, '__name__', func)} made a float64 tensor on the device")
        return out


def test_nothing_float64_is_made_on_the_device(tmp_path, monkeypatch):
    """Training on MPS failed at the first log step: the log window and validation went through float64 there."""
    import training.trainer as trainer_module

    def on_device(batch, device):
        return {k: v.as_subclass(_OnDevice) for k, v in batch.items()}

    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(trainer_module, "to_device", on_device)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: clip(*a, **k).as_subclass(_OnDevice))
    with _NoFloat64OnDevice():
        trainer, result = run(tmp_path, max_steps=3, log_every=1, val_every=2)
    rows = read_rows(tmp_path / "train_log.csv")
    assert result.step == 3 and len(rows) == 3 and all(math.isfinite(float(r["grad_norm"])) for r in rows)
    assert len(read_rows(tmp_path / "val_log.csv")) == 1


class _Unused(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.extra = net, nn.Linear(4, 4)

    def forward(self, x):
        return self.net(x)


class ToyWithUnusedLayer(ToyRecipe):
    def build_model(self):
        return _Unused(super().build_model())


def test_trainable_parameters_without_gradient_are_named_at_the_first_step(tmp_path):
    """Under DistributedDataParallel such parameters stop the run at the second iteration; say which at the first."""
    trainer = Trainer(ToyWithUnusedLayer(None, name="unused"),
                      TrainConfig(out_dir=str(tmp_path), max_steps=2, device="cpu", progress=False))
    with pytest.raises(RuntimeError, match=r"extra\.weight, extra\.bias got no gradient"):
        trainer.fit()
    ToyWithUnusedLayer.find_unused_parameters = True
    try:
        ok = Trainer(ToyWithUnusedLayer(None, name="unused"),
                     TrainConfig(out_dir=str(tmp_path / "ok"), max_steps=2, device="cpu", progress=False))
        assert ok.fit().step == 2
    finally:
        ToyWithUnusedLayer.find_unused_parameters = False
