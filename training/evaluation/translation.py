"""CDM evaluation: Table 1 (copy / M1 / upper bound / CDM), Table 4 (sampling steps), 2D and 3D metrics,
inter-slice consistency (per-slice vs per-volume representation), and a case figure with uncertainty. An EDTS-Trans
model (T1 -> T2) is evaluated by edts.py instead."""

from __future__ import annotations

import argparse
import platform

import numpy as np
from MedDiffusionExtension import metrics
from MedDiffusionExtension.device import resolve_device
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.pipelines.common import build_network
from MedDiffusionExtension.tasks import is_spread
from MedDiffusionExtension.volume import AxialReorientation, read_volume, scaling_from_card
from MedDiffusionExtension.pipelines.common import model_grid
from MedDiffusionExtension.volume.engine import EngineInput, RunOptions, fit_scaling, run_slicewise
from MedDiffusionExtension.volume.normalize import foreground_mask
from MedDiffusionExtension.weights import ModelRegistry, load_model

from ..data import read_mri_cases, split_by_volume
from .common import limit, markdown_table, measured_on, run_model, timed, update_card_metrics
from .figures import translation_figure

TARGETS = ("t1c", "t2f")
SOURCES_OF = {"t1c": "t1n", "t2f": "t2w"}  # the copy baseline
MIN_FOREGROUND = 0.05  # same slice filter as training: near-empty slices are not averaged in 2D metrics


def _unit(volume_array: np.ndarray, card) -> np.ndarray:
    """A reference or source MRI volume on the metric scale [0, 1]: the card's normalization, then (x + 1) / 2."""
    return (scaling_from_card(card.normalization, volume_array).forward(volume_array) + 1.0) / 2.0


def _synthesize(loaded, volumes, options, **request) -> dict:
    """{output: Volume on the metric scale [0, 1]}: the task layer's outputs, as the CLI writes them, mapped back."""
    out = run_model(loaded, {"t1": volumes["t1n"], "t2": volumes["t2w"]}, device=options.device,
                    batch_size=options.batch_size, targets=TARGETS, **request)
    scale = loaded.card.output_range
    return {name: volume.with_array(scale.to_unit(volume.array, is_spread=is_spread(name))) for name, volume in out.items()}


def _scores(prediction: np.ndarray, reference: np.ndarray, counted: np.ndarray) -> dict[str, float]:
    per_slice = [metrics.image_metrics(prediction[k], reference[k]) for k in np.flatnonzero(counted)]
    volume = metrics.image_metrics(prediction, reference)
    return {
        "psnr_2d": float(np.mean([m["psnr"] for m in per_slice])), "ssim_2d": float(np.mean([m["ssim"] for m in per_slice])),
        "mae_2d": float(np.mean([m["mae"] for m in per_slice])),
        "psnr_3d": volume["psnr"], "ssim_3d": volume["ssim"], "mae_3d": volume["mae"],
    }


def _through_plane_energy(volume: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared difference between neighbouring axial slices inside the brain (first array axis is axial)."""
    both = mask[1:] & mask[:-1]
    return float(((volume[1:] - volume[:-1]) ** 2)[both].mean())


def _upper_bound(loaded, case_volumes, options) -> dict[str, np.ndarray]:
    """C-UNet driven by the ground-truth representation MRM(T1c, T2f): what a perfect MDN would give."""
    card = loaded.card
    network = build_network(loaded, resolve_device(options.device))
    grid = model_grid(card)
    inputs = [EngineInput(case_volumes[m], m, fit_scaling(card.normalization, case_volumes[m], grid))
              for m in ("t1n", "t2w", "t1c", "t2f")]

    def slice_model(batch):
        representation = network.mrm.represent(batch.images[:, 2:])
        return network.cunet(batch.images[:, :2], representation)

    out = run_slicewise(inputs, slice_model, 2, grid, options, background=-1.0)
    return {t: card.output_range.to_unit(card.output_range.from_model(out[i])) for i, t in enumerate(TARGETS)}


def evaluate_translation(args: argparse.Namespace) -> dict:
    if ModelRegistry().find(args.model, task="translation").method == "edts":  # T1 -> T2: its own tables
        from .edts import evaluate_edts

        return evaluate_edts(args)
    cases = read_mri_cases(args.data_root, args.layout)
    if args.split == "test":
        cases = split_by_volume(cases, 0.7, 0)[1]
    cases = limit([c for c in cases if {"t1n", "t2w", "t1c", "t2f"} <= set(c.paths)], args.max_cases)
    model = load_model(args.model, task="translation")
    baseline = load_model(args.baseline, task="translation") if args.baseline else None
    compared = [load_model(name, task="translation") for name in args.compare.split(",") if name]
    options = RunOptions(device=args.device, batch_size=args.batch_size, seed=0)
    default_steps = model.card.sampling.steps
    model_row = _row_name(model, default_steps)
    if any(_row_name(other, other.card.sampling.steps) == model_row for other in compared):
        raise InputError(f"--compare names {model_row}, the model being evaluated; compare other models")
    rows: dict[str, list[dict]] = {}
    sweep: dict[int, list[dict]] = {}
    consistency = {"reference": [], "per_slice": [], "per_volume": []}
    timings: dict[str, list[float]] = {}

    def record(name, target, prediction, reference, counted, seconds=None):
        rows.setdefault(name, []).append({"target": target, **_scores(prediction, reference, counted)})
        if seconds is not None:
            timings.setdefault(name, []).append(seconds)

    for number, case in enumerate(cases):
        volumes = {m: read_volume(case.paths[m]) for m in ("t1n", "t2w", "t1c", "t2f")}
        # Metrics slice along the patient's axial plane, as the model does, whatever the storage order.
        axial = AxialReorientation.for_volume(volumes["t1n"]).apply
        reference = {t: axial(_unit(volumes[t].array, model.card)) for t in TARGETS}
        brain = axial(foreground_mask(volumes["t1n"].array))
        counted = brain.reshape(brain.shape[0], -1).mean(1) >= MIN_FOREGROUND
        for target in TARGETS:
            record("Copy source (T1→T1c, T2→T2f)", target, axial(_unit(volumes[SOURCES_OF[target]].array, model.card)),
                   reference[target], counted)
        if baseline is not None:
            seconds, out = timed(_synthesize, baseline, volumes, options)
            for target in TARGETS:
                record("UNet (M1, no condition)", target, axial(out[target].array), reference[target], counted, seconds)
        for other in compared:
            seconds, out = timed(_synthesize, other, volumes, options)
            for target in TARGETS:
                record(_row_name(other, other.card.sampling.steps), target,
                       axial(out[target].array), reference[target], counted, seconds)
        if not args.core:
            bound = _upper_bound(model, volumes, options)
            for target in TARGETS:
                record("C-UNet + ground-truth representation (upper bound)", target, axial(bound[target]),
                       reference[target], counted)
        for steps in sorted({default_steps} if args.core else {10, 20, 30, 40, default_steps}):
            seconds, out = timed(_synthesize, model, volumes, options, steps=steps)
            scores = [dict(target=t, **_scores(axial(out[t].array), reference[t], counted)) for t in TARGETS]
            sweep.setdefault(steps, []).append({"scores": scores, "seconds": seconds})
            if steps == default_steps:
                for target in TARGETS:
                    record(model_row, target, axial(out[target].array), reference[target], counted, seconds)
                per_slice = out
        for count in args.sample_means:
            # The mean of K drawn representations' outputs: the PSNR-minded estimate (a single sample is sharp but
            # pays in PSNR for what the inputs cannot tell).
            seconds, out = timed(_synthesize, model, volumes, options, samples=count)
            for target in TARGETS:
                record(f"{model_row}, mean of {count} samples", target, axial(out[target].array), reference[target],
                       counted, seconds)
        per_volume = per_slice if args.core else _synthesize(model, volumes, options, per_volume_representation=True)
        for target in TARGETS:
            consistency["reference"].append(_through_plane_energy(reference[target], brain))
            consistency["per_slice"].append(_through_plane_energy(axial(per_slice[target].array), brain))
            consistency["per_volume"].append(_through_plane_energy(axial(per_volume[target].array), brain))
        if number == 0:
            uncertain = _synthesize(model, volumes, options, samples=args.samples)
            figure = args.figure or args.out / "case.png"
            translation_figure(figure, {m: axial(v.array) for m, v in volumes.items()}, reference,
                               {k: axial(v.array) for k, v in uncertain.items()}, brain, case.case_id)

    return _report(args, model, model_row, cases, rows, sweep, consistency, timings)


def _baseline_average(table1: list) -> dict:
    row = next((r for r in table1 if r[0] == "UNet (M1, no condition)"), None)
    return {} if row is None else {"baseline_unet_average": {"psnr": row[7], "ssim": row[8], "mae": row[9]}}


def _row_name(loaded, steps: int) -> str:
    return f"{loaded.card.name} ({steps} steps)"


def _average(entries: list[dict], key: str, target: str | None = None) -> float:
    values = [e[key] for e in entries if target is None or e["target"] == target]
    return float(np.mean(values))


def _report(args, model, model_row, cases, rows, sweep, consistency, timings) -> dict:
    table1 = []
    for name, entries in rows.items():
        line = [name]
        for target in TARGETS:
            line += [_average(entries, key, target) for key in ("psnr_2d", "ssim_2d", "mae_2d")]
        line += [_average(entries, "psnr_2d"), _average(entries, "ssim_2d"), _average(entries, "mae_2d")]
        table1.append(line)
    table3d = [[name, _average(e, "psnr_3d"), _average(e, "ssim_3d"), _average(e, "mae_3d")] for name, e in rows.items()]
    table4 = []
    for steps, runs in sorted(sweep.items()):
        scores = [s for run in runs for s in run["scores"]]
        table4.append([steps, _average(scores, "psnr_2d"), _average(scores, "ssim_2d"), _average(scores, "mae_2d"),
                       float(np.mean([r["seconds"] for r in runs]))])
    energy = {k: float(np.mean(v)) for k, v in consistency.items()}
    header = ["Method", "T1c PSNR", "T1c SSIM", "T1c MAE", "T2f PSNR", "T2f SSIM", "T2f MAE", "Avg PSNR", "Avg SSIM", "Avg MAE"]
    text = [
        f"# CDM evaluation: {model.card.name} {model.card.version}", "",
        f"{len(cases)} held-out cases ({args.split} split of `{args.data_root}`, layout {args.layout}): "
        f"{', '.join(c.case_id for c in cases)}. Device: {args.device} on {platform.machine()}. {args.command_note}", "",
        f"Made with: `{getattr(args, 'command_line', '')}`", "",
        "Metrics on [0, 1] (each volume normalized by its own 0.5/99.5 foreground percentiles, as the model sees it; "
        f"data range 1). 2D: mean over axial slices with ≥ {MIN_FOREGROUND:.0%} brain; 3D: whole volume.", "",
        "## Table 1 analogue (2D slice averages)", "", markdown_table(header, table1), "",
        "## Whole-volume (3D) metrics, averaged over both targets", "",
        markdown_table(["Method", "PSNR", "SSIM", "MAE"], table3d), "",
        "## Table 4 analogue: MDN sampling steps", "",
        markdown_table(["N_sampling", "Avg PSNR", "Avg SSIM", "Avg MAE", "seconds / case"], table4), "",
        "## Inter-slice consistency", "",
        "Slices are generated one by one. Through-plane gradient energy = mean squared difference of neighbouring "
        "axial slices inside the brain (lower = smoother across slices).", "",
        markdown_table(["Volume", "through-plane energy", "ratio to reference"],
                       [[k.replace("_", " "), v, v / energy["reference"]] for k, v in energy.items()]), "",
        "`per slice`: one MDN representation drawn per slice (default); `per volume`: one representation for the "
        "whole volume (`--per-volume-representation`).", "",
        "Seconds per case (end to end in the pipeline): " + ", ".join(f"{k}: {np.mean(v):.1f}" for k, v in timings.items()),
        "", f"Figure: `{(args.figure or args.out / 'case.png')}`.", "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text("\n".join(text), encoding="utf-8")
    summary = {"cases": [c.case_id for c in cases], "table1": table1, "table3d": table3d, "table4": table4,
               "consistency": energy, "timings": {k: float(np.mean(v)) for k, v in timings.items()}}
    if args.update_card:
        cdm_row = next(r for r in table1 if r[0] == model_row)  # not a compared model whose name begins alike
        update_card_metrics(args.model, {
            "measured_on": measured_on(len(cases), args, "brain MRI"),
            "t1c": {"psnr": cdm_row[1], "ssim": cdm_row[2], "mae": cdm_row[3]},
            "t2f": {"psnr": cdm_row[4], "ssim": cdm_row[5], "mae": cdm_row[6]},
            "average": {"psnr": cdm_row[7], "ssim": cdm_row[8], "mae": cdm_row[9]},
            "convention": "2D slice averages on [0, 1], data range 1, slices with >= 5% brain",
            "report": str(args.out / "README.md"),
            **_baseline_average(table1),
        }, args.card_key)
    return summary
