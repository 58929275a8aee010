"""The EDTS-Trans evaluation's tables (Markdown README + results.json summary) from the per-case scores of edts.py."""

from __future__ import annotations

import platform

import numpy as np

from MedDiffusionExtension.pipelines.edts import MIN_TEXTURED_FRACTION

from .common import markdown_table, measured_on, update_card_metrics
from .edts_scores import HIGH_PASS_SIGMA, TABLE_I_SCALE
from .translation import MIN_FOREGROUND


class ROWS:
    """Row names, shared by the runs that fill them and the tables that show them."""

    copy = "Copy T1 (normalized)"
    regn = "RegN only (T2_bar)"
    tilde = "Refiner output T2_tilde (with M, before fusion)"
    without_mask = "Refiner only, w/o M (M = 1: the refiner's output alone)"
    threshold = "Th-0.4 (M binarized at 0.4)"
    fused = "EDTS-Trans, fused (every slice refined, as published)"
    default = "EDTS-Trans, fused, mask-skipping (the pipeline's default)"
    speed_every_slice = "every slice refined, all steps (the paper's inference)"
    speed_default = f"mask-skipping (default): windows with < {MIN_TEXTURED_FRACTION:.0%} textured pixels get T2_bar"

    @staticmethod
    def baseline(name: str) -> str:
        return f"Plain UNet T1→T2 ({name})"

    @staticmethod
    def compared(loaded) -> str:
        """A compared EDTS-Trans model, named by what its training changed (the loss its card records)."""
        loss = loaded.card.data["loss"] if "loss" in loaded.card.data else {}
        weight = loss.get("ssim_weight") if isinstance(loss, dict) else None
        if weight == 0:
            return f"w/o L_ssim ({loaded.card.name})"
        return loaded.card.name if not isinstance(weight, (int, float)) else f"{loaded.card.name} (SSIM weight {weight:g})"

    @staticmethod
    def strength(strength: float, timesteps: list[int], total: int) -> str:
        """timesteps: the ones a refinement of this strength runs, of `total` (pipelines/edts.refined_timesteps)."""
        if len(timesteps) == total:  # rounds to the whole chain: the usual start from pure noise
            return f"every slice, refine strength {strength:g}: all {total} steps, from pure noise"
        return (f"every slice, refine strength {strength:g}: the last {len(timesteps)} of {total} steps, from T2_bar "
                f"noised to t = {timesteps[0]}")


def _mean(values) -> float:
    return float(np.mean(values))


def _averages(entries: list[dict]) -> dict:
    return {key: _mean([e[key] for e in entries]) for key in entries[0]}


def _table1(statistics: dict, scores: dict) -> list[list]:
    reference = _averages(statistics["reference"])
    names = {"t1": "MRI T1 (input)", "reference": "MRI T2 (reference)", "t2_bar": "Regression result T2_bar (RegN)",
             "t2_tilde": "Diffusion result T2_tilde (refiner)", "t2_out": "Fused output T2_out"}
    rows_of = {"t2_bar": ROWS.regn, "t2_tilde": ROWS.tilde, "t2_out": ROWS.fused}
    table = []
    for key, label in names.items():
        stats = _averages(statistics[key])
        row = [label, stats["mean"], stats["variance"]]
        if key in ("t1", "reference"):
            row += ["", "", "", ""]
        else:
            quality = _averages(scores[rows_of[key]])
            row += [stats["mean"] - reference["mean"], stats["variance"] - reference["variance"], quality["psnr"],
                    quality["ssim"]]
        table.append(row)
    return table


def _quality_rows(names: list[str], scores: dict, seconds: dict, labels: dict | None = None) -> list[list]:
    table = []
    for name in names:
        if name not in scores:
            continue
        quality = _averages(scores[name])
        timing = _mean(seconds[name]) if name in seconds else ""
        table.append([(labels or {}).get(name, name), quality["psnr"], quality["ssim"], quality["mae"],
                      quality["sharpness"], timing])
    return table


def _speed_rows(scores: dict, seconds: dict, strength_rows: list[str]) -> list[list]:
    names = [ROWS.speed_every_slice, ROWS.speed_default] + strength_rows
    if ROWS.speed_every_slice not in scores:
        return []
    full = _averages(scores[ROWS.speed_every_slice])
    full_seconds = _mean(seconds[ROWS.speed_every_slice])
    table = []
    for name in names:
        quality, elapsed = _averages(scores[name]), _mean(seconds[name])
        table.append([name, elapsed, full_seconds / elapsed, quality["psnr"], quality["psnr"] - full["psnr"],
                      quality["ssim"]])
    return table


def write_report(args, model, baseline, compared, cases, scores, seconds, statistics, refined, strength_rows,
                 speed_cases: int) -> dict:
    table1 = _table1(statistics, scores)
    baseline_row = [ROWS.baseline(baseline.card.name)] if baseline is not None else []
    table2 = _quality_rows([ROWS.copy, ROWS.regn, ROWS.without_mask, ROWS.fused, ROWS.default] + baseline_row,
                           scores, seconds)
    compared_rows = [ROWS.compared(other) for other in compared]
    table4 = _quality_rows([ROWS.without_mask, ROWS.threshold] + compared_rows + [ROWS.fused], scores, seconds,
                           {ROWS.without_mask: "w/o M", ROWS.threshold: "Th-0.4", ROWS.fused: "Ours (EDTS-Trans, fused)"})
    speed = _speed_rows(scores, seconds, strength_rows)
    steps = model.card.sampling.steps
    quality_header = ["Method", "PSNR", "SSIM", "MAE", "sharpness (HF energy / reference's)", "seconds / volume"]
    text = [
        f"# EDTS-Trans evaluation: {model.card.name} {model.card.version}", "",
        f"{len(cases)} held-out cases ({args.split} split of `{args.data_root}`, layout {args.layout}): "
        f"{', '.join(c.case_id for c in cases)}. Device: {args.device} on {platform.machine()}, batch "
        f"{args.batch_size}, {steps} DDIM steps (the card's), seed 0. {args.command_note}", "",
        f"Made with: `{getattr(args, 'command_line', '')}`", "",
        "T1 → T2. Metrics on [0, 1] (each volume normalized by its own 0.5/99.5 foreground percentiles, as the model "
        f"sees it; data range 1), averaged over axial slices with ≥ {MIN_FOREGROUND:.0%} brain. LPIPS needs "
        "pretrained network weights that are not available here; in its place, **sharpness** = the high-frequency "
        f"energy (image minus its Gaussian blur, σ = {HIGH_PASS_SIGMA:g} pixel, squared, inside the brain) of the "
        "output over the reference T2's: 1 = as much fine detail as the reference, below 1 smoother, above 1 more "
        "high-frequency content (detail or noise). Seconds per volume: one end-to-end run of the pipeline each "
        "(model built, every slice, outputs in memory; after a warm-up run), on a machine other processes may share; "
        "the fused row's pass also returns T2_bar, M and T2_tilde.", "",
        "## Table I analogue: intensity statistics inside the brain", "",
        f"Mean and variance of the brain's voxels on a 0–{TABLE_I_SCALE:g} scale (the metric scale × "
        f"{TABLE_I_SCALE:g}, as the paper's 8-bit numbers), averaged over cases; Δ = difference from the reference "
        "T2 (smaller magnitude is closer). T2_tilde is the refiner's sample (conditioned on T2_bar and M) before "
        "fusion; one sample, every slice refined.", "",
        markdown_table(["", "Mean", "Var", "Δ Mean", "Δ Var", "PSNR", "SSIM"], table1), "",
        "## Table II analogue: against copying T1 and a plain UNet", "",
        markdown_table(quality_header, table2), "",
        "CDM's C-UNet is not in this table: the bundled `cdm-tiny-phantom` takes T1 **and** T2 and makes T1c and "
        "T2-FLAIR, so it is not a T1 → T2 model. The plain UNet row (when `--baseline` names one) is the T1 → T2 "
        "UNet trained with EDTS-Trans's loss for the time of RegN + refiner.", "",
        "## Table IV analogue: ablations", "",
        "w/o M: M = 1 as the refiner's condition and in the fusion (the output is the refiner's alone). Th-0.4: the "
        "dynamic mask binarized at 0.4, as condition and in the fusion. w/o L_ssim: the model trained without the "
        "SSIM loss (`--compare`). All refine every slice.", "",
        markdown_table(quality_header, table4) if table4 else "(not measured: `--core`)", "",
        "## Speed study: the refiner only where the mask asks for it", "",
        f"On the first {min(speed_cases, len(cases))} case(s), through the task layer as the CLI runs it. "
        f"Mask-skipping: of {refined['items']} model windows over all {len(cases)} cases, "
        f"{refined['refined']} ({refined['refined'] / max(refined['items'], 1):.1%}) have enough textured pixels "
        "to be refined; the others get T2_bar exactly, without sampling. A refine strength s < 1 starts the "
        "refiner from T2_bar noised to the timestep near s·T and runs the last round(s·S) of its S steps.", "",
        markdown_table(["Inference", "seconds / volume", "× faster than every slice", "PSNR", "Δ PSNR", "SSIM"], speed)
        if speed else "(not measured: `--core`)", "",
        f"Figure: `{(args.figure or args.out / 'case.png')}`: T1, T2_bar, M, T2_tilde, T2_out, the reference and "
        "|T2_out − reference| on the slice with the most brain.", "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text("\n".join(text), encoding="utf-8")
    summary = {"cases": [c.case_id for c in cases], "table1": table1, "table2": table2, "table4": table4,
               "speed": speed, "refined_windows": refined,
               "timings": {name: _mean(values) for name, values in seconds.items()}}
    if args.update_card:
        update_card_metrics(args.model, _card_metrics(args, cases, scores, baseline), args.card_key)
    return summary


def _card_metrics(args, cases, scores, baseline) -> dict:
    def entry(name):
        quality = _averages(scores[name])
        return {key: quality[key] for key in ("psnr", "ssim", "mae", "sharpness")}

    metrics = {"measured_on": measured_on(len(cases), args, "brain MRI"),
               "t2w": entry(ROWS.default), "t2w_every_slice": entry(ROWS.fused), "regn_only": entry(ROWS.regn),
               "convention": "2D slice averages on [0, 1], data range 1, slices with >= 5% brain; sharpness = "
                             "high-frequency energy over the reference's",
               "report": str(args.out / "README.md")}
    if baseline is not None:
        metrics["baseline_unet"] = entry(ROWS.baseline(baseline.card.name))
    return metrics
