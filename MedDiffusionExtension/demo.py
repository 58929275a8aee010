"""`meddiffusion demo` / `make demo`: the bundled models on the bundled sample cases, with a short report.

The sample cases are synthetic phantoms that ship with the extension (Resources/SampleData), so the demo also
prints how close the outputs are to the phantoms' own reference sequences and labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from . import metrics
from .errors import InputError
from .pipelines import segment, translate
from .progress import CancelToken
from .volume import read_volume, write_volumes
from .volume.engine import RunOptions
from .volume.normalize import fit_mri_scaling
from .weights import ModelRegistry, load_model

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"


def _one(pattern: str) -> Path:
    found = sorted(SAMPLE_DATA.rglob(pattern))
    if not found:
        raise InputError(f"no sample file matching {pattern} in {SAMPLE_DATA}; regenerate with `python -m MedDiffusionExtension.data samples`")
    return found[0]


def _progress(label: str, log: Callable[[str], None]):
    state = {"last": -1}

    def report(fraction: float, message: str) -> None:
        tenth = int(fraction * 10)
        if tenth != state["last"]:
            state["last"] = tenth
            log(f"  {label}: {message}")

    return report


def run_demo(out_dir: Path, device: str, cancel: CancelToken, log: Callable[[str], None]) -> None:
    out_dir = Path(out_dir)
    registry = ModelRegistry()

    t1_path, t2_path = _one("*-t1n.nii.gz"), _one("*-t2w.nii.gz")
    cdm = load_model(registry.default_for("cdm").directory)
    log(f"translate: {t1_path.name} + {t2_path.name} with {cdm.card.name} {cdm.card.version} (synthetic phantom case)")
    t1, t2 = read_volume(t1_path), read_volume(t2_path)
    options = RunOptions(device=device, seed=0, cancel=cancel, progress=_progress("translate", log))
    synthetic = translate(t1, t2, cdm, ["t1c", "t2f"], samples=2, options=options)
    files = {out_dir / f"{name}.nii.gz": (volume, np.float32) for name, volume in synthetic.items()}
    for target in ("t1c", "t2f"):
        reference = read_volume(_one(f"*-{target}.nii.gz")).array
        unit = (fit_mri_scaling(reference).forward(reference) + 1) / 2
        scores = metrics.image_metrics(synthetic[target].array / 1000.0, unit)
        log(f"  {target}: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}, MAE {scores['mae']:.4f} vs the phantom's own {target}")

    ct_path = _one("PhantomAbdomenCT.nii.gz")
    sdseg = load_model(registry.default_for("sdseg").directory)
    log(f"segment: {ct_path.name} with {sdseg.card.name} {sdseg.card.version} (single step)")
    ct = read_volume(ct_path)
    result = segment(ct, sdseg, options=RunOptions(device=device, seed=0, cancel=cancel, progress=_progress("segment", log)))
    files[out_dir / "segmentation.nii.gz"] = (result.labels, np.uint8)
    label_path = _one("PhantomAbdomenCT-label.nii.gz")
    reference = read_volume(label_path).array > 0
    scores = metrics.segmentation_metrics(result.labels.array > 0, reference, ct.spacing[::-1])
    log(f"  organs (union): Dice {scores['dice']:.3f}, IoU {scores['iou']:.3f}, HD95 {scores['hd95']:.1f} mm vs {label_path.name}")

    for path in write_volumes(files):
        print(path)
    log("demo outputs are synthetic images from models trained on phantoms: not for clinical use")
