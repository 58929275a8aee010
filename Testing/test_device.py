"""Device and precision choice with CUDA faked through its one seam (device.CUDA): the GPU of each torchrun rank,
native bf16 only from compute capability 8.0 on, the device that is asked about being the chosen one, fp16
inference that falls back to fp32 when it overflows, and the process group's options on a GPU."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedDiffusionExtension import device as devices
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume.engine import EngineInput, RunOptions, run_slicewise
from MedDiffusionExtension.volume.slices import ModelGrid

from conftest import axial_volume

AS_IS = ModelGrid(None, None)  # slices reach the model as they are


class FakeCuda(devices.CudaQueries):
    """GPUs with the given compute capabilities; records set_device."""

    def __init__(self, *capabilities: tuple[int, int], current: int = 0):
        self.capabilities = list(capabilities)
        self.current = current
        self.set_calls: list[int] = []

    def is_available(self) -> bool:
        return bool(self.capabilities)

    def device_count(self) -> int:
        return len(self.capabilities)

    def current_device(self) -> int:
        return self.current

    def capability(self, index: int) -> tuple[int, int]:
        return self.capabilities[index]

    def name(self, index: int) -> str:
        return f"Fake GPU sm{''.join(map(str, self.capabilities[index]))}"

    def set_device(self, index: int) -> None:
        self.set_calls.append(index)
        self.current = index


@pytest.fixture
def single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_gpus(monkeypatch, single_process):
    def install(*capabilities, current=0):
        fake = FakeCuda(*capabilities, current=current)
        monkeypatch.setattr(devices, "CUDA", fake)
        # If anything still asked torch directly, it would hear "bf16 everywhere" (what emulation reports).
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        return fake
    return install


def torchrun_env(monkeypatch, rank: int, world: int, local_rank: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))


def test_auto_and_cuda_mean_the_local_rank_gpu_under_torchrun(fake_gpus, monkeypatch):
    fake = fake_gpus((8, 0), (8, 0))
    assert devices.resolve_device("auto") == torch.device("cuda")  # one process: the current GPU, as before
    torchrun_env(monkeypatch, rank=3, world=4, local_rank=1)
    assert devices.resolve_device("auto") == torch.device("cuda", 1)
    assert devices.resolve_device("cuda") == torch.device("cuda", 1)
    assert fake.set_calls == [1, 1] and fake.current == 1  # nothing else in the process opens GPU 0
    assert devices.resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit GPU is kept
    assert devices.resolve_device("cpu") == torch.device("cpu")
    torchrun_env(monkeypatch, rank=2, world=4, local_rank=2)
    with pytest.raises(InputError, match="nproc_per_node 2"):
        devices.resolve_device("auto")


def test_without_cuda_torchrun_ranks_stay_on_the_cpu(fake_gpus, monkeypatch):
    fake_gpus()
    torchrun_env(monkeypatch, rank=1, world=2, local_rank=1)
    assert devices.resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(InputError, match="no CUDA GPU"):
        devices.resolve_device("cuda")


def test_precision_follows_the_capability_of_the_chosen_gpu(fake_gpus, fake_cpu):
    fake_cpu(native_bf16=True)  # an explicit bf16 on the CPU below: the emulation warning has its own test
    fake_gpus((8, 0), (7, 0), current=0)  # an A100 next to a V100; the current device is the A100
    a100, v100 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert devices.autocast_dtype(a100) == torch.bfloat16
    assert devices.autocast_dtype(v100) == torch.float16  # emulated bf16 is not native bf16
    assert devices.autocast_dtype(torch.device("cuda")) == torch.bfloat16  # bare cuda: the current GPU
    assert devices.autocast_dtype(v100, "fp16") == torch.float16
    assert devices.autocast_dtype(v100, "fp32") is None and devices.autocast_dtype(a100, "fp32") is None
    with pytest.raises(InputError, match="compute capability 7.0"):
        devices.autocast_dtype(v100, "bf16")
    assert devices.autocast_dtype(torch.device("cpu")) is None
    assert devices.autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(InputError, match="MPS"):
        devices.autocast_dtype(torch.device("mps"), "fp16")
    with pytest.raises(InputError, match="precision must be"):
        devices.autocast_dtype(a100, "fp8")


def test_training_amp_auto_uses_the_same_capability_rule(fake_gpus):
    from training.trainer import resolve_amp

    fake_gpus((7, 5), (9, 0), current=1)  # the current device is not the one training runs on
    assert resolve_amp("auto", torch.device("cuda", 0)) == torch.float16  # T4: fp16 (with GradScaler)
    assert resolve_amp("auto", torch.device("cuda", 1)) == torch.bfloat16
    assert resolve_amp("off", torch.device("cuda", 1)) is None
    assert resolve_amp("auto", torch.device("cpu")) is None


def test_device_menu_names_each_gpu_through_the_seam(fake_gpus):
    fake_gpus((8, 6), (7, 5))
    ids = [device_id for device_id, _ in devices.available_devices()]
    assert ids[:4] == ["auto", "cpu", "cuda:0", "cuda:1"]
    assert "sm75" in dict(devices.available_devices())["cuda:1"]


def test_the_task_layer_offers_the_precisions_the_backend_knows():
    from MedDiffusionExtension import tasks

    assert tasks.PRECISIONS is devices.PRECISIONS  # one list of names


def test_run_options_refuse_an_unknown_precision():
    with pytest.raises(InputError, match="precision"):
        RunOptions(precision="half")


def _loud_model(batch):
    """A convolution whose activations pass fp16's maximum (65504) but not float32's."""
    weight = torch.full((1, batch.images.shape[1], 3, 3), 3e4, device=batch.images.device)
    return F.conv2d(batch.images.abs() + 1, weight, padding=1) * 1e-4


def test_fp16_inference_that_overflows_is_redone_in_fp32():
    volume = axial_volume(shape=(6, 16, 16))
    inputs = [EngineInput(volume, "x")]
    messages = []
    reference = run_slicewise(inputs, _loud_model, 1, AS_IS, RunOptions(device="cpu", precision="fp32"))
    half = run_slicewise(inputs, _loud_model, 1, AS_IS,
                         RunOptions(device="cpu", precision="fp16", progress=lambda f, m: messages.append(m)))
    assert np.isfinite(half).all()
    np.testing.assert_allclose(half, reference, rtol=1e-5)
    assert any("fp16 overflowed" in m for m in messages)


def test_inference_runs_under_the_chosen_autocast_dtype(fake_cpu):
    fake_cpu(native_bf16=True)  # auto stays fp32 here: RunOptions built by hand are not resolved per model
    seen = []

    def record(batch):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return batch.images
    volume = axial_volume(shape=(4, 8, 8))
    for precision in ("fp32", "bf16", "auto"):
        run_slicewise([EngineInput(volume, "x")], record, 1, AS_IS, RunOptions(device="cpu", precision=precision))
    run_slicewise([EngineInput(volume, "x")], record, 1, AS_IS,
                  RunOptions(device="cpu", precision="bf16", mixed_precision=False))
    assert seen == [None, torch.bfloat16, None, None]


def test_process_group_on_a_gpu_gets_its_device_and_timeout(fake_gpus, monkeypatch):
    import training.distributed as distributed

    fake = fake_gpus((8, 0), (8, 0))
    torchrun_env(monkeypatch, rank=1, world=2, local_rank=1)
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    ctx = distributed.init_distributed("auto", timeout_minutes=45)
    assert ctx.device == torch.device("cuda", 1) and ctx.owns_group and fake.current == 1
    assert calls == [{"backend": "nccl", "timeout": timedelta(minutes=45), "device_id": torch.device("cuda", 1)}]
    with pytest.raises(InputError, match="cuda:LOCAL_RANK"):
        distributed.init_distributed("cuda:0")


def test_process_group_on_the_cpu_is_gloo_with_the_timeout(monkeypatch, single_process):
    import training.distributed as distributed

    torchrun_env(monkeypatch, rank=0, world=2, local_rank=0)
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    distributed.init_distributed("cpu")
    assert calls == [{"backend": "gloo", "timeout": timedelta(minutes=distributed.DEFAULT_TIMEOUT_MINUTES)}]


class FakeCpu(devices.CpuQueries):
    def __init__(self, native_bf16: bool):
        self.native_bf16 = native_bf16

    def has_native_bf16(self) -> bool:
        return self.native_bf16


@pytest.fixture
def fake_cpu(monkeypatch):
    def install(native_bf16: bool):
        fake = FakeCpu(native_bf16)
        monkeypatch.setattr(devices, "CPU", fake)
        return fake
    return install


def test_auto_on_a_cpu_is_bf16_only_with_native_bf16_and_the_models_consent(fake_cpu, fake_gpus):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    fake_gpus((8, 0))
    fake_cpu(native_bf16=True)
    assert devices.inference_precision(cpu) == "bf16"
    assert devices.inference_precision(cpu, "auto", cpu_bf16_allowed=False) == "fp32"  # the card's quality guard
    assert devices.inference_precision(cpu, "fp32") == "fp32" and devices.inference_precision(cpu, "fp16") == "fp16"
    assert devices.inference_precision(gpu, "auto", cpu_bf16_allowed=False) == "auto"  # a GPU decides as before
    fake_cpu(native_bf16=False)
    assert devices.inference_precision(cpu) == "fp32"
    with pytest.raises(InputError, match="precision must be"):
        devices.inference_precision(cpu, "half")


def test_explicit_bf16_on_a_cpu_without_native_bf16_runs_but_warns_once(fake_cpu, recwarn):
    fake_cpu(native_bf16=False)
    assert devices.autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert [str(w.message) for w in recwarn.list] == [
        "bf16 on this CPU (no AMX or AVX512-BF16) is emulated and runs slower than fp32; use --precision auto or fp32 "
        "for speed"]
    recwarn.clear()
    fake_cpu(native_bf16=True)
    assert devices.autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert not recwarn.list


def test_training_keeps_float32_on_a_cpu_even_with_native_bf16(fake_cpu):
    from training.trainer import resolve_amp

    fake_cpu(native_bf16=True)
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert devices.autocast_dtype(torch.device("cpu")) is None


def test_the_real_cpu_query_answers_without_raising():
    assert devices.CPU.has_native_bf16() in (True, False)
    assert "CPU" in devices.CPU.name()


def test_run_settings_resolve_auto_precision_with_the_cards_inference_section(fake_cpu, models_dir):
    from MedDiffusionExtension import tasks
    from MedDiffusionExtension.weights import LoadedModel, load_model
    from MedDiffusionExtension.weights.card import parse_card

    loaded = load_model(models_dir / "sdseg-micro-test")
    forbidding = LoadedModel(parse_card(dict(loaded.card.data, inference={"cpu_bf16": False}), models_dir),
                             loaded.tensors)
    settings = tasks.RunSettings(device="cpu")
    fake_cpu(native_bf16=True)
    assert settings.run_options(model=loaded).precision == "bf16"
    assert settings.run_options(model=forbidding).precision == "fp32"
    assert settings.run_options().precision == "bf16"  # no model known: nothing forbids it
    assert tasks.RunSettings(device="cpu", precision="fp32").run_options(model=loaded).precision == "fp32"
    fake_cpu(native_bf16=False)
    assert settings.run_options(model=loaded).precision == "fp32"
