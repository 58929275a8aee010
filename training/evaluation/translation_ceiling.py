"""What a perfect translator scores on a phantom test set: each reference T1c, T2-FLAIR and T2 against the same case
rendered without its scanner noise, and without its noise and bias field. Neither is shared between one case's
sequences (each sequence draws its own), so no model can predict them from the inputs. A prediction of the clean
image, exact in everything else, scores these rows; a smoother one that hedges against the unknown bias field can
score a little higher in PSNR (the mean-squared-error optimum is the conditional mean), so they are a level, not a
strict bound. Phantom sets only (their acquisitions.json names each case's seed and acquisition profile); every case
is first rendered in full and must equal its files voxel for voxel.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.volume import AxialReorientation, Volume, read_volume
from MedDiffusionExtension.volume.normalize import foreground_mask
from MedDiffusionExtension.weights import load_model

from ..data import read_mri_cases, split_by_volume
from ..phantoms.brain import simulate_brain
from ..phantoms.layouts import ACQUISITIONS_JSON
from .common import limit, markdown_table
from .translation import MIN_FOREGROUND, TARGETS, _scores, _unit

# CDM's targets (T1c, T2-FLAIR) and EDTS-Trans's (T2); the averages are over CDM's, as its reports average.
SCORED = (*TARGETS, "t2w")

ROWS = {"noise": "Reference without its noise", "noise+bias": "Reference without its noise and bias field"}


def _records(root: Path) -> dict:
    path = root / ACQUISITIONS_JSON
    if not path.is_file():
        raise InputError(f"{root} has no {ACQUISITIONS_JSON}: the ceiling needs a phantom set written by "
                         "`python -m training phantoms brats`")
    return json.loads(path.read_text(encoding="utf-8"))["cases"]


def _render(record: dict, shape, **ideal) -> dict[str, np.ndarray]:
    profile = record.get("acquisition", {}).get("profile", "fixed")
    return simulate_brain(int(record["seed"]), shape, acquisition=profile, sequences=SCORED, **ideal).images


def _matching_render(record: dict, files: dict[str, Volume], case_id: str) -> tuple[object, dict[str, np.ndarray]]:
    """The shape argument that reproduces the case (None: its drawn grid; else the stored shape) and that render."""
    for shape in (None, tuple(record["shape"])):
        images = _render(record, shape)
        if all(images[t].shape == files[t].array.shape and np.array_equal(images[t], files[t].array) for t in SCORED):
            return shape, images
    raise InputError(f"{case_id}: re-rendering its seed does not reproduce the files; was the set written by this "
                     "version of `python -m training phantoms`?")


def evaluate_translation_ceiling(args: argparse.Namespace) -> dict:
    records = _records(args.data_root)
    cases = read_mri_cases(args.data_root, args.layout)
    if args.split == "test":
        cases = split_by_volume(cases, 0.7, 0)[1]
    cases = limit([c for c in cases if {"t1n", *SCORED} <= set(c.paths)], args.max_cases)
    card = load_model(args.model, task="translation").card  # its normalization is the metric scale
    rows: dict[str, list[dict]] = {}
    per_case = []
    for case in cases:
        if case.case_id not in records:
            raise InputError(f"{case.case_id} is not in {args.data_root / ACQUISITIONS_JSON}")
        files = {m: read_volume(case.paths[m]) for m in ("t1n", *SCORED)}
        axial = AxialReorientation.for_volume(files["t1n"]).apply
        brain = axial(foreground_mask(files["t1n"].array))
        counted = brain.reshape(brain.shape[0], -1).mean(1) >= MIN_FOREGROUND
        shape, _ = _matching_render(records[case.case_id], files, case.case_id)
        ideals = {"noise": _render(records[case.case_id], shape, scanner_noise=False),
                  "noise+bias": _render(records[case.case_id], shape, scanner_noise=False, bias_field=False)}
        entry = {"case": case.case_id}
        for key, images in ideals.items():
            for target in SCORED:
                scores = _scores(axial(_unit(images[target], card)), axial(_unit(files[target].array, card)), counted)
                rows.setdefault(key, []).append({"target": target, **scores})
                entry[f"{key} {target} psnr_2d"] = scores["psnr_2d"]
        per_case.append(entry)
    return _report(args, card, cases, rows, per_case)


def _mean(entries: list[dict], key: str, target: str | None = None) -> float:
    return float(np.mean([e[key] for e in entries if target is None or e["target"] == target]))


def _report(args, card, cases, rows, per_case) -> dict:
    def cdm_mean(entries, metric):
        return _mean([e for e in entries if e["target"] in TARGETS], metric)

    table = [[ROWS[key], *[_mean(entries, m, t) for t in SCORED for m in ("psnr_2d", "ssim_2d")],
              cdm_mean(entries, "psnr_2d"), cdm_mean(entries, "ssim_2d")] for key, entries in rows.items()]
    header = ["Level", "T1c PSNR", "T1c SSIM", "T2f PSNR", "T2f SSIM", "T2w PSNR", "T2w SSIM", "Avg PSNR", "Avg SSIM"]
    case_header = ["Case", *[f"{ROWS[k].split(' without ')[1]}: {t} PSNR" for k in ROWS for t in SCORED]]
    case_rows = [[e["case"], *[e[f"{k} {t} psnr_2d"] for k in ROWS for t in SCORED]] for e in per_case]
    lines = [
        f"# What a perfect translator scores: {args.data_root}", "",
        f"{len(cases)} cases ({args.split} split): {', '.join(c.case_id for c in cases)}.", "",
        "Each reference T1c, T2-FLAIR and T2 against the same case rendered again without its scanner noise, and "
        "without its noise and bias field. Each sequence of a case draws its own noise and bias field, so neither "
        "can be predicted from the other sequences: a translator that predicted the clean image exactly would score "
        "these numbers. A smoother prediction that hedges against the unknown bias field can score a little higher "
        "in PSNR (the mean-squared-error optimum is the conditional mean): a level, not a strict bound.", "",
        f"Same scale and slices as the translation evaluation: {card.name}'s normalization of each volume, "
        f"(x + 1) / 2, data range 1; 2D means over axial slices with ≥ {MIN_FOREGROUND:.0%} brain; Avg over T1c and "
        "T2f, CDM's targets (T2 is EDTS-Trans's). Every case was "
        "first rendered in full and equals its files voxel for voxel.", "",
        f"Made with: `{getattr(args, 'command_line', '')}`", "", *([args.command_note, ""] if args.command_note else []),
        markdown_table(header, table), "", "## Per case (2D PSNR, dB)", "", markdown_table(case_header, case_rows),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return {"data_root": str(args.data_root), "split": args.split, "cases": [c.case_id for c in cases],
            "metric_scale": card.name, "rows": {ROWS[k]: v for k, v in rows.items()}, "per_case": per_case,
            "table": {row[0]: dict(zip(header[1:], row[1:])) for row in table}}
