"""The bundled models (their trained weights) through the CLI, end to end: read NIfTI, run, write NIfTI, on
volumes of clinical size; and the volume engine alone around an identity model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from . import inputs as synthetic
from .timing import time_call


def engine_overhead(device: str) -> dict:
    from ..volume.engine import EngineInput, RunOptions, run_slicewise
    from ..volume.normalize import fit_mri_scaling
    from ..volume.slices import ModelGrid

    array = synthetic.brain_like((155, 240, 240))
    volume = synthetic.volume(array, (1, 1, 1))
    inputs = [EngineInput(volume, "T1", fit_mri_scaling(array)), EngineInput(volume, "T2", fit_mri_scaling(array))]
    grid = ModelGrid(256, 1.0)  # 1 mm slices of 240 mm: resampling is the identity, one window per slice
    seconds, _ = time_call(run_slicewise, inputs, lambda b: b.images, 2, grid, RunOptions(device=device, batch_size=8),
                           background=-1.0)
    return {"volume": "240x240x155, 2 inputs, identity model, one 256 window at 1 mm", "seconds": seconds,
            "ms_per_slice": 1000 * seconds / 155}


def cdm_volume(device: str) -> dict:
    from ..cli import main

    with tempfile.TemporaryDirectory() as tmp:
        t1 = synthetic.write(synthetic.brain_like((155, 240, 240)), (1, 1, 1), Path(tmp) / "t1.nii.gz")
        t2 = synthetic.write(synthetic.brain_like((155, 240, 240), seed=1), (1, 1, 1), Path(tmp) / "t2.nii.gz")
        seconds, code = time_call(main, ["translate", "--t1", str(t1), "--t2", str(t2), "--out-dir", f"{tmp}/out",
                                         "--device", device, "--quiet"])
    return {"volume": "240x240x155 T1 + T2 -> T1c + T2f, NIfTI in and out (CLI end to end)", "seconds": seconds,
            "exit_code": code}


def sdseg_volume(device: str, slices: int = 100, spacing_mm: float = 2.5) -> dict:
    from ..cli import main

    with tempfile.TemporaryDirectory() as tmp:
        ct = synthetic.write(synthetic.ct_like((slices, 512, 512), dtype=np.int16), (0.8, 0.8, spacing_mm),
                             Path(tmp) / "ct.nii.gz")
        seconds, code = time_call(main, ["segment", "--image", str(ct), "--out", f"{tmp}/seg.nii.gz", "--device", device,
                                         "--quiet"])
    return {"volume": f"512x512x{slices} CT int16, single step, NIfTI in and out (CLI end to end)", "seconds": seconds,
            "exit_code": code}


def sdseg_large(device: str) -> dict:
    return sdseg_volume(device, slices=300, spacing_mm=1.0)


JOBS = {"engine_overhead": engine_overhead, "cdm_volume": cdm_volume, "sdseg_volume": sdseg_volume,
        "sdseg_large": sdseg_large}
