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


def sdseg_volume(device: str, slices: int = 100, spacing_mm: float = 2.5, model: str = "",
                 output: str = "seg.nii.gz") -> dict:
    from ..cli import main

    with tempfile.TemporaryDirectory() as tmp:
        ct = synthetic.write(synthetic.ct_like((slices, 512, 512), dtype=np.int16), (0.8, 0.8, spacing_mm),
                             Path(tmp) / "ct.nii.gz")
        seconds, code = time_call(main, ["segment", "--image", str(ct), "--out", f"{tmp}/{output}", "--device", device,
                                         "--quiet"] + (["--model", model] if model else []))
    what = f"model {model}, " if model else ""
    return {"volume": f"512x512x{slices} CT int16, {what}single step, NIfTI in, {output.split('.', 1)[1]} out "
                      "(CLI end to end)", "seconds": seconds, "exit_code": code}


def sdseg_large(device: str) -> dict:
    return sdseg_volume(device, slices=300, spacing_mm=1.0)


def organ_model() -> str:
    """The first installed SDSeg model with several organs ("" when none is)."""
    from ..tasks import models_for

    return next((card.name for card in models_for("segmentation", "sdseg") if len(card.segments) > 1), "")


def _organs(device: str, slices: int, spacing_mm: float) -> dict:
    model = organ_model()
    if not model:
        raise SystemExit("no multi-organ SDSeg model is installed")
    return sdseg_volume(device, slices, spacing_mm, model=model, output="seg.seg.nrrd")


def sdseg_organs_volume(device: str) -> dict:
    """The multi-organ model on the same CT as sdseg_volume, into a Slicer segmentation file."""
    return _organs(device, 100, 2.5)


def sdseg_organs_large(device: str) -> dict:
    return _organs(device, 300, 1.0)


JOBS = {"engine_overhead": engine_overhead, "cdm_volume": cdm_volume, "sdseg_volume": sdseg_volume,
        "sdseg_large": sdseg_large, "sdseg_organs_volume": sdseg_organs_volume, "sdseg_organs_large": sdseg_organs_large}
