"""On a real CUDA GPU (marker `gpu`; skipped with the reason elsewhere): the seam reads the real device, every
inference precision gives the float32 result within its rounding, training runs in each AMP mode, and with two
or more GPUs DDP over NCCL and cohort ranks each get their own GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "Testing"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from MedDiffusionExtension import device as devices  # noqa: E402
from MedDiffusionExtension.models import build_model  # noqa: E402
from MedDiffusionExtension.volume.engine import EngineInput, RunOptions, run_slicewise  # noqa: E402
from MedDiffusionExtension.volume.slices import ModelGrid  # noqa: E402
from conftest import axial_volume  # noqa: E402
from tiny_models import MICRO_CDM  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "Testing")]))


def test_the_seam_reads_the_real_gpu():
    gpu = torch.device("cuda", 0)
    capability = torch.cuda.get_device_capability(0)
    assert devices.CUDA.capability(0) == tuple(capability)
    assert devices.autocast_dtype(gpu) == (torch.bfloat16 if capability >= (8, 0) else torch.float16)
    assert devices.resolve_device("auto").type == "cuda"


def test_every_precision_gives_the_fp32_result_on_the_gpu():
    torch.manual_seed(0)
    network = build_model("cunet", {"image_size": 32, "cunet": {**MICRO_CDM["cunet"], "conditioned": False}})
    network = network.to("cuda").eval()
    volume = axial_volume(shape=(12, 40, 36))
    inputs = [EngineInput(volume, "t1"), EngineInput(volume, "t2")]

    def run(precision):
        return run_slicewise(inputs, lambda batch: network(batch.images), 2, ModelGrid(32, None),
                             RunOptions(device="cuda", precision=precision))
    reference = run("fp32")
    precisions = ["auto", "fp16"] + (["bf16"] if devices.has_native_bf16(torch.device("cuda", 0)) else [])
    spread = float(np.abs(reference).max())
    for precision in precisions:
        result = run(precision)
        assert np.isfinite(result).all(), precision
        # bf16 keeps 8 bits of mantissa, fp16 11: both well inside 2% of the output range for a small network.
        assert float(np.abs(result - reference).max()) < 0.02 * spread, precision


@pytest.mark.parametrize("amp", ["off", "auto", "fp16"])
def test_training_runs_on_the_gpu_in_each_amp_mode(tmp_path, amp):
    from Testing.toy_recipe import ToyRecipe
    from training.checkpoint import load_checkpoint
    from training.trainer import Trainer, TrainConfig

    trainer = Trainer(ToyRecipe(None, name="toy"), TrainConfig(
        out_dir=str(tmp_path), max_steps=6, batch_size=8, lr=1e-2, log_every=2, device="cuda", amp=amp, progress=False))
    result = trainer.fit()
    assert result.step == 6 and trainer.scaler.is_enabled() == (trainer.amp_dtype == torch.float16)
    assert load_checkpoint(result.checkpoint)["device"].startswith("cuda (")


@two_gpus
def test_ddp_over_nccl_on_two_gpus(tmp_path):
    from training.checkpoint import load_checkpoint

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training",
               "train", "--recipe", "Testing.toy_recipe:ToyRecipe", "--out-dir", str(tmp_path), "--max-steps", "4",
               "--batch-size", "4", "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(tmp_path)
    assert state["world_size"] == 2 and state["device"].startswith("cuda (")


@two_gpus
def test_cohort_ranks_each_get_their_own_gpu(tmp_path):
    script = ("from MedDiffusionExtension.device import resolve_device; import torch; "
              "print(resolve_device('auto'), torch.cuda.current_device(), flush=True)")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--no-python", sys.executable, "-c", script]
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cuda:0 0" in done.stdout and "cuda:1 1" in done.stdout
