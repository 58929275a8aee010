"""`python -m training bench` (`make bench`): speed and memory of the bundled models on phantom-sized volumes.

Each measurement runs in its own Python process (`python -m training.bench TASK DEVICE`) so that its peak RSS is
its own. Numbers go to a JSON file, from which docs/benchmarks.md's table is written; nothing here is asserted:
benchmarks are measurements, not tests. On CUDA the clock is read only after the device has finished its queue.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .cli import Command

TASKS = ("engine_overhead", "cdm_volume", "cdm_parts", "sdseg_volume", "sdseg_steps", "sdseg_large")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _brain_like(shape, seed=0) -> np.ndarray:
    """A smooth positive head-like volume with zero background (phantom generators make better ones; speed only).
    Built slice by slice so that the benchmark's own input does not inflate the peak memory it measures."""
    j, i = np.meshgrid(np.linspace(-1, 1, shape[1], dtype=np.float32), np.linspace(-1, 1, shape[2], dtype=np.float32),
                       indexing="ij")
    rng = np.random.default_rng(seed)
    out = np.empty(shape, np.float32)
    for index, k in enumerate(np.linspace(-1, 1, shape[0], dtype=np.float32)):
        inside = (k / 0.8) ** 2 + (j / 0.9) ** 2 + (i / 0.75) ** 2 < 1
        out[index] = np.where(inside, 300 + 100 * np.cos(6 * i) * np.sin(5 * j) + rng.normal(0, 10, inside.shape), 0)
    return out


def _ct_like(shape, dtype=np.float32, seed=0) -> np.ndarray:
    j, i = np.meshgrid(np.linspace(-1, 1, shape[1], dtype=np.float32), np.linspace(-1, 1, shape[2], dtype=np.float32),
                       indexing="ij")
    body = (j / 0.7) ** 2 + (i / 0.9) ** 2 < 1
    organ = ((j + 0.1) / 0.3) ** 2 + ((i + 0.3) / 0.35) ** 2 < 1
    base = np.where(body, np.where(organ, 60.0, 20.0), -1000.0)
    rng = np.random.default_rng(seed)
    out = np.empty(shape, dtype)
    for index in range(shape[0]):
        out[index] = base + rng.normal(0, 15, base.shape)
    return out


def _write(array, spacing, path):
    from MedDiffusionExtension.volume import Volume, write_volume

    return write_volume(Volume(array, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])), path)


def _synchronize() -> None:
    """Wait for queued CUDA work: kernels run asynchronously, so without this the clock stops before they do."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _time(function, *args, **kwargs):
    _synchronize()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    _synchronize()
    return time.perf_counter() - start, result


def task_engine_overhead(device: str) -> dict:
    from MedDiffusionExtension.volume import Volume
    from MedDiffusionExtension.volume.engine import EngineInput, RunOptions, run_slicewise
    from MedDiffusionExtension.volume.normalize import fit_mri_scaling
    from MedDiffusionExtension.volume.slices import ModelGrid

    array = _brain_like((155, 240, 240))
    volume = Volume(array, np.diag([-1.0, -1.0, 1.0, 1.0]))
    inputs = [EngineInput(volume, "T1", fit_mri_scaling(array)), EngineInput(volume, "T2", fit_mri_scaling(array))]
    grid = ModelGrid(256, 1.0)  # 1 mm slices of 240 mm: resampling is the identity, one window per slice
    seconds, _ = _time(run_slicewise, inputs, lambda b: b.images, 2, grid, RunOptions(device=device, batch_size=8),
                       background=-1.0)
    return {"volume": "240x240x155, 2 inputs, identity model, one 256 window at 1 mm", "seconds": seconds,
            "ms_per_slice": 1000 * seconds / 155}


def task_cdm_volume(device: str) -> dict:
    from MedDiffusionExtension.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        t1 = _write(_brain_like((155, 240, 240)), (1, 1, 1), Path(tmp) / "t1.nii.gz")
        t2 = _write(_brain_like((155, 240, 240), seed=1), (1, 1, 1), Path(tmp) / "t2.nii.gz")
        seconds, code = _time(main, ["translate", "--t1", str(t1), "--t2", str(t2), "--out-dir", f"{tmp}/out",
                                     "--device", device, "--quiet"])
    return {"volume": "240x240x155 T1 + T2 -> T1c + T2f, NIfTI in and out (CLI end to end)", "seconds": seconds,
            "exit_code": code}


def task_cdm_parts(device: str) -> dict:
    """Where the CDM time goes, and what a same-backbone 30-step pixel-space diffusion would cost."""
    import torch

    from MedDiffusionExtension.models.blocks import UNet
    from MedDiffusionExtension import tasks
    from MedDiffusionExtension.pipelines.common import build_network, make_sampler

    loaded = tasks.load(tasks.TranslateRequest(method="cdm"))
    device_ = torch.device(device)
    network = build_network(loaded, device_)
    sampler = make_sampler(loaded.card.sampling, None)
    size = loaded.card.image_size
    slices, batch = 155, 8
    with torch.inference_mode():
        dim = network.mdn.representation_dim
        noise = torch.randn(slices, dim, device=device_)
        # A source-conditioned MDN also needs the pooled source encoding: one MRM pass per slice, counted here.
        conditioned = network.mdn.source_mlp is not None

        encode_seconds, source = 0.0, None
        if conditioned:
            encode_seconds, source = _time(network.mrm.represent, torch.randn(slices, 2, size, size, device=device_))
        mdn_seconds, _ = _time(sampler.sample, lambda r, t: network.mdn(r, t, source), noise,
                               loaded.card.sampling.prediction_type)
        images = torch.randn(batch, 2, size, size, device=device_)
        representation = torch.randn(batch, dim, device=device_)
        network.cunet(images, representation)  # warm-up
        cunet_batch, _ = _time(network.cunet, images, representation)
        # Pixel-space conditional diffusion with the same backbone: a timestep UNet on (x_t || T1 || T2), 30 passes.
        arch = dict(loaded.card.architecture["cunet"])
        for key in ("conditioned", "fusion", "output_activation"):
            arch.pop(key, None)
        baseline = UNet(4, 2, time_embedding=True, **arch).eval().to(device_)
        t = torch.full((batch,), 500, dtype=torch.long, device=device_)
        x = torch.randn(batch, 4, size, size, device=device_)
        baseline(x, t)
        pass_seconds, _ = _time(baseline, x, t)
    per_slice_cunet = cunet_batch / batch
    pixel_volume = pass_seconds / batch * 30 * slices
    return {
        "mdn_30_steps_155_slices_seconds": mdn_seconds,
        "mdn_source_encoding_155_slices_seconds": encode_seconds,
        "cunet_seconds_per_slice": per_slice_cunet,
        "cdm_network_seconds_155_slices": encode_seconds + mdn_seconds + per_slice_cunet * slices,
        "pixel_space_30_step_seconds_155_slices_extrapolated": pixel_volume,
        "pixel_space_pass_seconds_per_slice": pass_seconds / batch,
        "speedup_vs_pixel_space": pixel_volume / (encode_seconds + mdn_seconds + per_slice_cunet * slices),
        "image_size": size,
    }


def task_sdseg_volume(device: str) -> dict:
    from MedDiffusionExtension.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        ct = _write(_ct_like((100, 512, 512)).astype(np.int16), (0.8, 0.8, 2.5), Path(tmp) / "ct.nii.gz")
        seconds, code = _time(main, ["segment", "--image", str(ct), "--out", f"{tmp}/seg.nii.gz", "--device", device, "--quiet"])
    return {"volume": "512x512x100 CT int16, single step, NIfTI in and out (CLI end to end)", "seconds": seconds,
            "exit_code": code}


def task_sdseg_steps(device: str) -> dict:
    """Single step vs 10-step DDIM vs a 5-sample ensemble on the same 16 slices."""
    from MedDiffusionExtension import tasks
    from MedDiffusionExtension.volume import Volume

    loaded = tasks.load(tasks.SegmentRequest(method="sdseg"))
    volume = {"image": Volume(_ct_like((16, 512, 512)), np.diag([-0.8, -0.8, 2.5, 1.0]))}

    def run(steps: int, samples: int):
        request = tasks.SegmentRequest(settings=tasks.RunSettings(steps=steps, samples=samples, device=device))
        return request.run(volume, loaded, request.settings.run_options())

    run(1, 1)  # warm-up
    results = {}
    for label, steps, samples in (("single_step", 1, 1), ("ddim_10", 10, 1), ("ensemble_5", 1, 5)):
        seconds, _ = _time(run, steps, samples)
        results[f"{label}_seconds_per_slice"] = seconds / 16
    results["ddim10_over_single_step"] = results["ddim_10_seconds_per_slice"] / results["single_step_seconds_per_slice"]
    return results


def task_sdseg_large(device: str) -> dict:
    from MedDiffusionExtension.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        ct = _write(_ct_like((300, 512, 512), dtype=np.int16), (0.8, 0.8, 1.0), Path(tmp) / "ct.nii.gz")
        seconds, code = _time(main, ["segment", "--image", str(ct), "--out", f"{tmp}/seg.nii.gz", "--device", device, "--quiet"])
    return {"volume": "512x512x300 CT int16, single step (CLI end to end)", "seconds": seconds, "exit_code": code}


def run_task(name: str, device: str) -> dict:
    result = globals()[f"task_{name}"](device)
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def run_benchmarks(out: Path, device: str, log, tasks=TASKS) -> dict:
    import torch

    results = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
                           "platform": platform.platform(), "torch": torch.__version__}}
    for name in tasks:
        log(f"bench: {name} ...")
        process = subprocess.run([sys.executable, "-m", "training.bench", name, device],
                                 capture_output=True, text=True)
        if process.returncode != 0:
            results[name] = {"error": process.stderr.strip().splitlines()[-1] if process.stderr.strip() else "failed"}
        else:
            results[name] = json.loads(process.stdout.strip().splitlines()[-1])
        log(f"bench: {name}: {json.dumps(results[name])}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.json"), help="JSON file of the measurements")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--task", dest="tasks", action="append", choices=TASKS,
                        help="measure only this (repeatable; default: all)")


def _run(args: argparse.Namespace) -> int:
    run_benchmarks(args.out, args.device, lambda message: print(message, file=sys.stderr), tuple(args.tasks or TASKS))
    print(args.out)
    return 0


COMMAND = Command("measure speed and memory of the bundled models on phantom-sized volumes (docs/benchmarks.md)",
                  _add_arguments, _run)


if __name__ == "__main__":
    print(json.dumps(run_task(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cpu")))
