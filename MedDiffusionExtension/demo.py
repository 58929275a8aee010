"""`meddiffusion demo` / `make demo`: the bundled models on the bundled sample cases, with a short report.

The sample cases are synthetic phantoms that ship with the extension (Resources/SampleData), so the demo also
prints how close the outputs are to the phantoms' own reference sequences and labels, and draws one overview figure
(overview.png: inputs, synthetic contrasts, segmentation against the reference) to look at before opening a viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import metrics, tasks
from .demo_figure import write_overview
from .errors import InputError
from .progress import CancelToken
from .volume import read_volume, scaling_from_card, write_volumes

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"


def _one(pattern: str) -> Path:
    found = sorted(SAMPLE_DATA.rglob(pattern))
    if not found:
        raise InputError(f"no sample file matching {pattern} in {SAMPLE_DATA}; "
                         "regenerate with `python -m training phantoms samples`")
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
    t1_path, t2_path = _one("*-t1n.nii.gz"), _one("*-t2w.nii.gz")
    translation = tasks.TranslateRequest(method="cdm", targets=("t1c", "t2f"),
                                         settings=tasks.RunSettings(samples=2, device=device))
    cdm = tasks.load(translation)
    log(f"translate: {t1_path.name} + {t2_path.name} with {cdm.card.name} {cdm.card.version} (synthetic phantom case)")
    t1, t2 = read_volume(t1_path), read_volume(t2_path)
    options = translation.settings.run_options(_progress("translate", log), cancel, cdm)
    synthetic = translation.run({"t1": t1, "t2": t2}, cdm, options)
    files = {path: (synthetic[name], translation.output_dtype(name))
             for name, path in translation.output_files(cdm.card, out_dir).items()}
    references, mri_scores = {}, {}
    for target in ("t1c", "t2f"):
        references[target] = read_volume(_one(f"*-{target}.nii.gz"))
        reference = references[target].array
        unit = (scaling_from_card(cdm.card.normalization, reference).forward(reference) + 1) / 2
        prediction = cdm.card.output_range.to_unit(synthetic[target].array)
        mri_scores[target] = scores = metrics.image_metrics(prediction, unit)
        log(f"  {target}: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}, MAE {scores['mae']:.4f} "
            f"vs the phantom's own {target}")

    ct_path = _one("PhantomAbdomenCT.nii.gz")
    segmentation = tasks.SegmentRequest(method="sdseg", settings=tasks.RunSettings(device=device))
    sdseg = tasks.load(segmentation)
    log(f"segment: {ct_path.name} with {sdseg.card.name} {sdseg.card.version} (single step)")
    ct = read_volume(ct_path)
    options = segmentation.settings.run_options(_progress("segment", log), cancel, sdseg)
    labels = segmentation.run({"image": ct}, sdseg, options)["labels"]
    files[out_dir / "segmentation.nii.gz"] = (labels, segmentation.output_dtype("labels"))
    label_path = _one("PhantomAbdomenCT-label.nii.gz")
    label = read_volume(label_path)
    scores = metrics.segmentation_metrics(labels.array > 0, label.array > 0, ct.spacing[::-1])
    log(f"  organs (union): Dice {scores['dice']:.3f}, IoU {scores['iou']:.3f}, HD95 {scores['hd95']:.1f} mm "
        f"vs {label_path.name}")

    for path in write_volumes(files):
        print(path)
    mri = {"T1 (input)": t1, "T2 (input)": t2, "synthetic T1c": synthetic["t1c"], "reference T1c": references["t1c"],
           "synthetic FLAIR": synthetic["t2f"], "reference FLAIR": references["t2f"]}
    tumour = sorted(SAMPLE_DATA.rglob("*-seg.nii.gz"))
    overview = write_overview(out_dir / "overview.png", mri, mri_scores, ct, labels, label, scores["dice"],
                              read_volume(tumour[0]) if tumour else None)
    print(overview)
    log(f"overview figure: {overview} (look at it first; the NIfTI files open in any viewer)")
    log("demo outputs are synthetic images from models trained on phantoms: not for clinical use")

