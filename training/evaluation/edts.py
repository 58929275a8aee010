"""EDTS-Trans evaluation (T1 -> T2): analogues of the paper's Table I (intensity statistics of the regression, the
diffusion output and the fused output), Table II (against copying T1 and a plain UNet), Table IV (ablations), a
speed study of this project's refiner shortcuts (mask-skipping, partial-noise start), and a case figure.

`python -m training evaluate translation --model <an EDTS-Trans model>` lands here (translation.py dispatches on the
card's method). The product's rows go through the task layer like every front end; the rows the product does not
offer (RegN alone, the ablations, the intermediate images) run the pipeline's own EDTSInference through the same
engine with one option changed.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from MedDiffusionExtension.device import resolve_device
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.models.edts import EDTS
from MedDiffusionExtension.pipelines.common import build_network, make_sampler, model_grid
from MedDiffusionExtension.pipelines.edts import EDTSInference, refined_timesteps
from MedDiffusionExtension.pipelines.registry import build_slice_model
from MedDiffusionExtension.volume import AxialReorientation, read_volume
from MedDiffusionExtension.volume.engine import EngineInput, RunOptions, fit_scaling, run_slicewise
from MedDiffusionExtension.volume.normalize import foreground_mask
from MedDiffusionExtension.weights import LoadedModel, load_model

from ..data import read_mri_cases, split_by_volume
from .common import limit, run_model, timed
from .edts_report import ROWS, write_report
from .edts_scores import image_scores, intensity_statistics
from .figures import edts_figure
from .translation import MIN_FOREGROUND, _unit

# The partial-noise starts measured against full sampling, and how many cases the speed study runs on (each strength
# is one more refiner run per case; speed and its PSNR cost show on a couple of volumes).
STRENGTHS = (0.75, 0.5, 0.25)
SPEED_STUDY_CASES = 2
FIXED_THRESHOLD = 0.4  # the paper's Th-0.4 ablation


def _check_models(model: LoadedModel, baseline, compared) -> None:
    if model.card.method != "edts":
        raise InputError(f"{model.card.name} is a {model.card.method} model, not EDTS-Trans")
    if baseline is not None and (tuple(baseline.card.input_names) != ("t1",) or "t2w" not in baseline.card.output_names):
        raise InputError(f"--baseline {baseline.card.name} takes {', '.join(baseline.card.input_names)} and makes "
                         f"{', '.join(baseline.card.output_names)}; a T1 -> T2 baseline takes t1 and makes t2w")
    for other in compared:
        if other.card.method != "edts":
            raise InputError(f"--compare {other.card.name} is not an EDTS-Trans model; compare EDTS-Trans variants "
                             "(e.g. the one trained without the SSIM loss)")
        if other.card.directory == model.card.directory:
            raise InputError(f"--compare names {other.card.name}, the model being evaluated; compare other models")


def _engine_run(loaded: LoadedModel, t1, options: RunOptions, make_slice_model, channels: int, background):
    """run_slicewise over the T1 with a slice model made from a fresh inference network (as the pipeline builds it)."""
    card = loaded.card
    grid = model_grid(card)
    network = build_network(loaded, resolve_device(options.device))
    inputs = [EngineInput(t1, "T1", fit_scaling(card.normalization, t1, grid))]
    return run_slicewise(inputs, make_slice_model(network), channels, grid, options, background)


def _to_unit(loaded: LoadedModel, model_units: np.ndarray) -> np.ndarray:
    scale = loaded.card.output_range
    return scale.to_unit(scale.from_model(model_units))


def regression_only(loaded: LoadedModel, t1, options: RunOptions) -> np.ndarray:
    """T2_bar on the metric scale [0, 1], in the T1's voxel order."""
    out = _engine_run(loaded, t1, options, lambda network: lambda batch: network.regress(batch.images).float(), 1, -1.0)
    return _to_unit(loaded, out[0])


def ablation(loaded: LoadedModel, t1, options: RunOptions, **slice_options) -> np.ndarray:
    """The pipeline's EDTS slice model with an ablation option (full_mask, mask_threshold), every slice refined."""
    out = _engine_run(loaded, t1, options, lambda network: build_slice_model(
        network, loaded.card, steps=None, samples=1, channels=[0], refine_every_slice=True, **slice_options), 1, -1.0)
    return _to_unit(loaded, out[0])


def intermediates(loaded: LoadedModel, t1, options: RunOptions) -> dict:
    """T2_bar, M, T2_tilde and T2_out of one sample with every slice refined (the paper's inference), on [0, 1] (M as
    is), plus how many model windows the default mask-skipping would refine ("refined" of "items")."""
    counts = {"refined": 0, "items": 0}

    def make(network):
        inference = EDTSInference.for_card(network, loaded.card)

        def slice_model(batch):
            t2_bar, mask = inference.regress_and_mask(batch.images)
            counts["refined"] += int(inference.needs_refiner(mask).sum())
            counts["items"] += len(t2_bar)
            tilde = inference.refine(batch, torch.arange(len(t2_bar), device=t2_bar.device), t2_bar, mask, sample=0)
            return torch.cat([t2_bar, mask, tilde, EDTS.fuse(tilde, t2_bar, mask)], dim=1)

        return slice_model

    out = _engine_run(loaded, t1, options, make, 4, [-1.0, 0.0, -1.0, -1.0])
    return {"t2_bar": _to_unit(loaded, out[0]), "mask": out[1], "t2_tilde": _to_unit(loaded, out[2]),
            "t2_out": _to_unit(loaded, out[3]), **counts}


def synthesize(loaded: LoadedModel, t1, options: RunOptions, **request) -> np.ndarray:
    """The task layer's T2 (as the CLI writes it) mapped back to [0, 1]."""
    out = run_model(loaded, {"t1": t1}, device=options.device, batch_size=options.batch_size, targets=("t2w",),
                    **request)
    return loaded.card.output_range.to_unit(out["t2w"].array)


def _warm_up(model: LoadedModel, baseline, t1, options: RunOptions) -> None:
    """One cheap untimed pass of each network (one refiner step), so that the first timed row does not also pay for
    the CPU kernels' first-call setup."""
    regression_only(model, t1, options)
    synthesize(model, t1, options, steps=1)
    if baseline is not None:
        synthesize(baseline, t1, options)


def evaluate_edts(args: argparse.Namespace) -> dict:
    cases = read_mri_cases(args.data_root, args.layout)
    if args.split == "test":
        cases = split_by_volume(cases, 0.7, 0)[1]
    cases = limit([c for c in cases if {"t1n", "t2w"} <= set(c.paths)], args.max_cases)
    if not cases:
        raise InputError(f"no case with a T1 (t1n) and a T2 (t2w) in the {args.split} split of {args.data_root}")
    model = load_model(args.model, task="translation")
    baseline = load_model(args.baseline, task="translation") if args.baseline else None
    compared = [load_model(name, task="translation") for name in args.compare.split(",") if name]
    _check_models(model, baseline, compared)
    options = RunOptions(device=args.device, batch_size=args.batch_size, seed=0)
    sampler = make_sampler(model.card.sampling, None)
    strength_rows = {s: ROWS.strength(s, refined_timesteps(sampler, s), len(sampler.timesteps)) for s in STRENGTHS}
    scores: dict[str, list[dict]] = {}
    seconds: dict[str, list[float]] = {}
    statistics: dict[str, list[dict]] = {}
    refined = {"refined": 0, "items": 0}

    def record(row, prediction, reference, brain, counted, elapsed=None):
        scores.setdefault(row, []).append(image_scores(prediction, reference, brain, counted))
        if elapsed is not None:
            seconds.setdefault(row, []).append(elapsed)

    _warm_up(model, baseline, read_volume(cases[0].paths["t1n"]), options)
    for number, case in enumerate(cases):
        t1, t2 = read_volume(case.paths["t1n"]), read_volume(case.paths["t2w"])
        axial = AxialReorientation.for_volume(t1).apply  # metrics slice along the patient's axial plane
        reference, source = axial(_unit(t2.array, model.card)), axial(_unit(t1.array, model.card))
        brain = axial(foreground_mask(t1.array))
        counted = brain.reshape(brain.shape[0], -1).mean(1) >= MIN_FOREGROUND

        def row(names, function, *arguments, **keywords):
            """Time function(*arguments, **keywords) -> a volume in the T1's voxel order; score it under each name."""
            elapsed, volume = timed(function, *arguments, **keywords)
            for name in names:
                record(name, axial(volume), reference, brain, counted, elapsed)
            return volume

        speed_study = not args.core and number < SPEED_STUDY_CASES
        record(ROWS.copy, source, reference, brain, counted)
        row([ROWS.regn], regression_only, model, t1, options)
        elapsed, parts = timed(intermediates, model, t1, options)
        record(ROWS.fused, axial(parts["t2_out"]), reference, brain, counted, elapsed)
        record(ROWS.tilde, axial(parts["t2_tilde"]), reference, brain, counted)
        refined = {key: refined[key] + parts[key] for key in refined}
        for name, volume in (("reference", reference), ("t1", source), ("t2_bar", axial(parts["t2_bar"])),
                             ("t2_tilde", axial(parts["t2_tilde"])), ("t2_out", axial(parts["t2_out"]))):
            statistics.setdefault(name, []).append(intensity_statistics(volume, brain))
        row([ROWS.default] + ([ROWS.speed_default] if speed_study else []), synthesize, model, t1, options)
        if baseline is not None:
            row([ROWS.baseline(baseline.card.name)], synthesize, baseline, t1, options)
        for other in compared:
            row([ROWS.compared(other)], synthesize, other, t1, options, refine_every_slice=True)
        if not args.core:
            row([ROWS.without_mask], ablation, model, t1, options, full_mask=True)
            row([ROWS.threshold], ablation, model, t1, options, mask_threshold=FIXED_THRESHOLD)
        if speed_study:
            row([ROWS.speed_every_slice], synthesize, model, t1, options, refine_every_slice=True)
            for strength in STRENGTHS:
                row([strength_rows[strength]], synthesize, model, t1, options, refine_every_slice=True,
                    refine_strength=strength)
        if number == 0:
            edts_figure(args.figure or args.out / "case.png", source,
                        {k: axial(parts[k]) for k in ("t2_bar", "mask", "t2_tilde", "t2_out")}, reference, brain,
                        case.case_id)

    return write_report(args, model, baseline, compared, cases, scores, seconds, statistics, refined,
                        list(strength_rows.values()), SPEED_STUDY_CASES)
