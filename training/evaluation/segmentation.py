"""SDSeg evaluation: Dice / IoU / HD95 per volume at the original resolution; single step vs 10-step DDIM vs a
5-sample ensemble (Table 4 analogue), the plain UNet baseline and any --compare models (their single step);
stability across seeds (Table 5 analogue).
A multi-organ model (more than one segment on its card) is evaluated per organ in the BTCV protocol (organs.py)."""

from __future__ import annotations

import argparse
import itertools
import platform

import numpy as np

from MedDiffusionExtension import metrics
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import AxialReorientation, read_volume
from MedDiffusionExtension.weights import load_model

from ..data import btcv_split, read_btcv
from .common import limit, markdown_table, measured_on, run_model, timed, update_card_metrics
from .figures import segmentation_figure
from .organs import evaluate_organs

STABILITY_SEEDS = (0, 1, 2, 3, 4)
OUTSIDE_BODY_ROW = "SDSeg single step, labels outside the body kept (`--outside-body`)"


def evaluate_segmentation(args: argparse.Namespace) -> dict:
    cases = read_btcv(args.data_root)
    if args.split == "test":
        cases = btcv_split(cases)[1]
    cases = limit([c for c in cases if "label" in c.paths], args.max_cases)
    model = load_model(args.model, task="segmentation")
    if len(model.card.segments) > 1:
        return evaluate_organs(args, cases, model)
    # (row, model, steps, samples, task options); every row but the last named keeps labels inside the body only.
    variants = [("SDSeg single step", model, 1, 1, {})]
    if not args.core:
        variants += [("SDSeg 10-step DDIM", model, 10, 1, {}),
                     (f"SDSeg single step, {args.samples}-sample ensemble", model, 1, args.samples, {})]
    if args.baseline:
        variants.append(("UNet (non-diffusion baseline)", load_model(args.baseline, task="segmentation"), None, 1, {}))
    for other in filter(None, getattr(args, "compare", "").split(",")):
        compared = load_model(other, task="segmentation")
        if len(compared.card.segments) > 1:
            raise InputError(f"--compare {other} is a multi-organ model; compare binary models with a binary one")
        variants.append((f"{compared.card.name} {compared.card.version} (`{other}`), single step", compared, 1, 1, {}))
    if getattr(args, "outside_body_row", False):
        variants.append((OUTSIDE_BODY_ROW, model, 1, 1, {"body_only": False}))
    scores = {name: [] for name, *_ in variants}
    seconds_per_slice = {name: [] for name, *_ in variants}
    stability = {"pairwise_dice": [], "dice_std": []}
    for number, case in enumerate(cases):
        image = read_volume(case.paths["image"])
        reference = read_volume(case.paths["label"]).array > 0
        spacing = image.spacing[::-1]  # metrics take (k, j, i) spacing like the arrays
        for name, loaded, steps, samples, task_options in variants:
            seconds, result = timed(run_model, loaded, {"image": image}, device=args.device, batch_size=args.batch_size,
                                    steps=steps, samples=samples, **task_options)
            prediction = result["labels"].array > 0
            scores[name].append(metrics.segmentation_metrics(prediction, reference, spacing))
            seconds_per_slice[name].append(seconds / image.shape[0])
            if number == 0 and name == variants[0][0]:
                axial = AxialReorientation.for_volume(image).apply
                segmentation_figure(args.figure or args.out / "case.png", axial(image.array.astype(np.float32)),
                                    axial(prediction), axial(reference), case.case_id, scores[name][-1]["dice"])
        if args.core:
            continue
        runs = [run_model(model, {"image": image}, device=args.device, batch_size=args.batch_size, seed=seed, steps=1)
                for seed in STABILITY_SEEDS]
        runs = [run["labels"].array > 0 for run in runs]
        stability["pairwise_dice"].append(float(np.mean([metrics.dice(a, b) for a, b in itertools.combinations(runs, 2)])))
        stability["dice_std"].append(float(np.std([metrics.dice(r, reference) for r in runs])))
    return _report(args, model, cases, scores, seconds_per_slice, stability)


def _summary(entries: list[dict], key: str) -> tuple[float, float]:
    values = np.array([e[key] for e in entries], dtype=np.float64)
    finite = values[np.isfinite(values)]
    return (float(finite.mean()) if finite.size else float("nan"), float(finite.std()) if finite.size else float("nan"))


def _report(args, model, cases, scores, seconds_per_slice, stability) -> dict:
    rows = []
    for name, entries in scores.items():
        dice, dice_sd = _summary(entries, "dice")
        iou, _ = _summary(entries, "iou")
        hd95, hd_sd = _summary(entries, "hd95")
        empty = sum(1 for e in entries if not np.isfinite(e["hd95"]))
        hd95_text = f"{hd95:.2f} ± {hd_sd:.2f}" + (f" ({empty} empty)" if empty else "")
        rows.append([name, f"{dice:.4f} ± {dice_sd:.4f}", iou, hd95_text,
                     float(np.mean(seconds_per_slice[name]))])
    single = float(np.mean(seconds_per_slice[rows[0][0]]))
    ddim = float(np.mean(seconds_per_slice["SDSeg 10-step DDIM"])) if "SDSeg 10-step DDIM" in seconds_per_slice else None
    text = [
        f"# SDSeg evaluation: {model.card.name} {model.card.version}", "",
        f"{len(cases)} held-out cases ({args.split} split of `{args.data_root}`): {', '.join(c.case_id for c in cases)}. "
        f"Device: {args.device} on {platform.machine()}. {args.command_note}", "",
        f"Made with: `{getattr(args, 'command_line', '')}`", "",
        "Target: union of all labelled organs (the paper's BTCV setting). Dice, IoU and HD95 (mm, with the CT's "
        "voxel spacing) per 3D volume at the original resolution, then mean ± std over volumes. Empty-mask "
        "convention: both empty → Dice 1, HD95 0; one empty → Dice 0, HD95 ∞ (excluded from the HD95 mean, counted). "
        "Every row keeps labels inside the patient's body only (the default), unless it says otherwise.", "",
        "## Table 4 analogue: sampling strategies and the non-diffusion baseline", "",
        markdown_table(["Method", "Dice", "IoU", "HD95 (mm)", "s / slice"], rows), "",
    ]
    if ddim is not None:
        text += [
            f"10-step DDIM costs {ddim / single:.1f}× the single step here (paper, V100: 4.2×).", "",
            "## Table 5 analogue: stability across seeds", "",
            f"Single-step inference repeated with seeds {', '.join(map(str, STABILITY_SEEDS))} (fresh noise per slice):", "",
            markdown_table(["pairwise Dice between runs", "std of Dice to reference across runs"],
                           [[float(np.mean(stability["pairwise_dice"])), float(np.mean(stability["dice_std"]))]]), ""]
    else:
        text += ["Core run (`--core`): no DDIM, ensemble or stability rows.", ""]
    text += [f"Figure: `{(args.figure or args.out / 'case.png')}`.", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text("\n".join(text), encoding="utf-8")
    summary = {"cases": [c.case_id for c in cases], "rows": rows,
               "per_case_dice": {name: [float(e["dice"]) for e in entries] for name, entries in scores.items()},
               "stability": {k: float(np.mean(v)) for k, v in stability.items() if v},
               "ddim10_over_single_step": ddim / single if ddim else None}
    if args.update_card:
        dice, _ = _summary(scores[rows[0][0]], "dice")
        iou, _ = _summary(scores[rows[0][0]], "iou")
        hd95, _ = _summary(scores[rows[0][0]], "hd95")
        update_card_metrics(args.model, {
            "measured_on": measured_on(len(cases), args, "abdominal CT"),
            "single_step": {"dice": dice, "iou": iou, "hd95_mm": hd95},
            **({"stability_pairwise_dice": float(np.mean(stability["pairwise_dice"]))} if stability["pairwise_dice"] else {}),
            **_baseline_metrics(scores),
            "convention": "per 3D volume at original resolution, union of organs",
            "report": str(args.out / "README.md"),
        }, args.card_key)
    return summary


def _baseline_metrics(scores: dict) -> dict:
    name = "UNet (non-diffusion baseline)"
    return {"baseline_unet_dice": _summary(scores[name], "dice")[0]} if name in scores else {}
