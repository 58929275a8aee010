"""Spacing invariance: one sample case resampled to the grids scanners produce, scored on each grid.

The bundled sample case (Resources/SampleData; for CT also the first case of a BTCV-layout root) is resampled with
SimpleITK, an implementation independent of the engine: in-plane to finer and coarser pixels and to thick slices,
each coarser axis first blurred to the new voxel size (a Gaussian of FWHM sqrt(new^2 - old^2), as a scanner's larger
voxel averages the anatomy), label maps with nearest neighbour. The model runs on every grid through the task layer
and is scored against the reference resampled to that grid; the same model with the engine's legacy fit by matrix
size (card geometry without a spacing) gives the comparison row.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedDiffusionExtension import metrics
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import read_volume
from MedDiffusionExtension.weights import load_model
from MedDiffusionExtension.weights.card import Geometry

from .common import current_precision, markdown_table, run_model, timed
from .translation import _unit

FWHM_PER_SIGMA = 2.3548
CT_GRIDS = {"0.6 mm": (0.6, None), "0.8 mm": (0.8, None), "1.5 mm": (1.5, None), "3.0 mm": (3.0, None),
            "5 mm slices": (None, 5.0)}
MR_GRIDS = {"1.0 mm": (1.0, None), "1.2 mm": (1.2, None), "3.0 mm": (3.0, None), "5 mm slices": (None, 5.0)}


def resample_like_a_scanner(image: sitk.Image, in_plane_mm: float | None, slice_mm: float | None, label: bool) -> sitk.Image:
    """`image` on a grid of the same extent with the given in-plane / slice spacing (None: unchanged)."""
    old = np.array(image.GetSpacing())
    new = np.array([in_plane_mm or old[0], in_plane_mm or old[1], slice_mm or old[2]])
    size = [max(1, int(round(image.GetSize()[i] * old[i] / new[i]))) for i in range(3)]
    if not label:
        sigma = np.sqrt(np.clip(new ** 2 - old ** 2, 0.0, None)) / FWHM_PER_SIGMA
        if sigma.max() > 0:
            image = sitk.SmoothingRecursiveGaussian(image, [float(max(s, 1e-3)) for s in sigma])
    # The new grid covers the old extent: its first voxel centre moves by half the change of voxel size.
    origin = image.TransformContinuousIndexToPhysicalPoint([(new[i] / old[i] - 1.0) / 2.0 for i in range(3)])
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, size, sitk.Transform(), interpolator, origin, tuple(float(s) for s in new),
                         image.GetDirection(), float(np.min(sitk.GetArrayViewFromImage(image))) if not label else 0.0)


def _legacy(loaded):
    """The same weights with the engine's previous fit by matrix size (card geometry without a spacing)."""
    card = dataclasses.replace(loaded.card, geometry=Geometry(None))
    return dataclasses.replace(loaded, card=card)


def _grids(paths: dict[str, Path], grids: dict, folder: Path, labels: tuple[str, ...]):
    """{grid name: {key: Volume}} with the native grid first."""
    images = {key: sitk.ReadImage(str(path)) for key, path in paths.items()}
    spacing = images[next(iter(images))].GetSpacing()
    out = {f"native {spacing[0]:.3g} x {spacing[1]:.3g} x {spacing[2]:.3g} mm": {k: read_volume(p) for k, p in paths.items()}}
    for name, (in_plane, thickness) in grids.items():
        out[name] = {}
        for key, image in images.items():
            path = folder / f"{name.replace(' ', '_')}-{key}.nii.gz"
            sitk.WriteImage(resample_like_a_scanner(image, in_plane, thickness, key in labels), str(path))
            out[name][key] = read_volume(path)
    return out


def _ct_case(root: Path) -> dict[str, Path]:
    """The bundled sample CT when `root` is Resources/SampleData, else the first case of a BTCV-layout root."""
    sample = {"image": root / "PhantomAbdomenCT.nii.gz", "label": root / "PhantomAbdomenCT-label.nii.gz"}
    if all(path.is_file() for path in sample.values()):
        return sample
    from ..data.layouts import read_btcv

    first = read_btcv(root)[0]
    if "label" not in first.paths:
        raise InputError(f"case {first.case_id} under {root} has no label file to score against")
    return {"image": first.paths["image"], "label": first.paths["label"]}


def evaluate_spacing(args: argparse.Namespace) -> dict:
    model = load_model(args.model)
    task = model.card.task
    rows, results = [], {"model": f"{model.card.name} {model.card.version}", "task": task, "grids": {}}
    with tempfile.TemporaryDirectory() as folder:
        if task == "segmentation":
            grids = _grids(_ct_case(Path(args.data_root)), CT_GRIDS, Path(folder), ("label",))
        else:
            paths = {m: args.data_root / f"PhantomBrainMR-{m}.nii.gz" for m in ("t1n", "t2w", "t1c", "t2f")}
            grids = _grids(paths, MR_GRIDS, Path(folder), ())
        for name, volumes in grids.items():
            entry = {"shape": list(volumes[next(iter(volumes))].shape[::-1])}
            for engine, loaded in (("spacing-aware", model), ("legacy matrix fit", _legacy(model))):
                seconds, score = timed(_score, loaded, volumes, args)
                entry[engine] = {**score, "seconds": round(seconds, 2)}
            results["grids"][name] = entry
            key = "dice" if task == "segmentation" else "psnr"
            rows.append([name, "x".join(map(str, entry["shape"])), entry["spacing-aware"][key],
                         entry["legacy matrix fit"][key], entry["spacing-aware"]["seconds"]])
            print(f"{name}: {key} {entry['spacing-aware'][key]:.4f} (legacy {entry['legacy matrix fit'][key]:.4f})")
    key = "dice" if task == "segmentation" else "psnr"
    for engine in ("spacing-aware", "legacy matrix fit"):
        values = [g[engine][key] for g in results["grids"].values()]
        results[f"{engine} spread"] = float(max(values) - min(values))
    header = ["grid", "matrix (i x j x k)", f"{key} (spacing-aware)", f"{key} (legacy matrix fit)", "seconds"]
    text = [f"# Spacing invariance: {results['model']}", "", (__doc__ or "").strip(), "",
            markdown_table(header, rows), "",
            f"Spread over the grids: spacing-aware {results['spacing-aware spread']:.4f}, "
            f"legacy {results['legacy matrix fit spread']:.4f}.", "",
            f"Command: `python -m training evaluate spacing --data-root {args.data_root} --model {args.model} --out {args.out}"
            f"{_precision_option()}`"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    return results


def _precision_option() -> str:
    precision = current_precision()
    return "" if precision == "auto" else f" --precision {precision}"


def _score(loaded, volumes: dict, args) -> dict:
    if loaded.card.task == "segmentation":
        result = run_model(loaded, {"image": volumes["image"]}, device=args.device, batch_size=args.batch_size)
        return {"dice": metrics.dice(result["labels"].array > 0, volumes["label"].array > 0)}
    result = run_model(loaded, {"t1": volumes["t1n"], "t2": volumes["t2w"]}, device=args.device,
                       batch_size=args.batch_size, targets=("t1c", "t2f"))
    scores = {}
    for target in ("t1c", "t2f"):
        prediction = loaded.card.output_range.to_unit(result[target].array)
        scores[target] = metrics.image_metrics(prediction, _unit(volumes[target].array, loaded.card))
    return {"psnr": float(np.mean([s["psnr"] for s in scores.values()])),
            "ssim": float(np.mean([s["ssim"] for s in scores.values()])), "per_target": scores}
