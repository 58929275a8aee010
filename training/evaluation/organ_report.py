"""The multi-organ evaluation's report: Markdown tables (OUT/README.md), the content of results.json, and the
metrics --update-card writes into the model's card."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MedDiffusionExtension.weights.organs import TRANSUNET_EIGHT, organ_by_label

from .common import markdown_table, measured_on, update_card_metrics
from .organ_scores import MethodScores

DASH = "—"
# The targets: organs that must reach Dice >= 0.90 on the in-distribution set, and the speed ratios.
LARGE_ORGANS, LARGE_ORGAN_DICE = ("liver", "spleen", "left_kidney", "right_kidney"), 0.90
DDIM_SPEEDUP, MEDSEGDIFF_SPEEDUP, UNION_TIME_RATIO = 5.0, 50.0, 1.5


@dataclass
class OrganEvaluation:
    """Everything measured by training/evaluation/organs.py, in the order of its rows."""

    args: Any  # the evaluate command's arguments
    model: Any  # LoadedModel
    cases: list[str]
    organs: list[int]  # label values of the model's segments
    methods: list  # organs.Method, one per row
    scores: dict[str, MethodScores]
    seconds: dict[str, list[float]]  # per test volume
    slices: list[int]  # axial slices per test volume
    memory: dict[str, dict]  # per row (peak_memory.py); empty with --no-memory
    memory_case: str
    medsegdiff: Optional[dict]  # organs._medsegdiff_like
    figure: Path

    def _segment(self, label: int):
        return next(s for s in self.model.card.segments if s.label == label)

    def key(self, label: int) -> str:
        """The segment's key (liver, left_kidney): the card's, else the BTCV organ's of that label value."""
        return getattr(self._segment(label), "key", None) or organ_by_label(label).key

    def name(self, label: int) -> str:
        return self._segment(label).name

    @property
    def eight(self) -> list[int]:
        """The model's organs among the 8 of the TransUNet split, in that split's order."""
        labels = {self.key(label): label for label in self.organs}
        return [labels[key] for key in TRANSUNET_EIGHT if key in labels]

    @property
    def all_label(self) -> str:
        return f"mean {len(self.organs)}"

    def seconds_per_volume(self, name: str) -> float:
        return float(np.mean(self.seconds[name]))

    def seconds_per_slice(self, name: str) -> float:
        return float(np.mean([s / n for s, n in zip(self.seconds[name], self.slices)]))

    def row(self, role: str, name: Optional[str] = None):
        return next((m for m in self.methods if m.role == role and (name is None or m.name == name)), None)

    @property
    def union_model(self):
        """The first compared binary SDSeg (the union model of the paper's setting), if any."""
        return next((m for m in self.methods if m.role == "compare" and m.organs is None
                     and m.loaded.card.method == "sdseg"), None)

    def medsegdiff_seconds_per_volume(self) -> Optional[float]:
        if self.medsegdiff is None:
            return None
        m = self.medsegdiff
        return m["seconds_per_pass_per_slice"] * m["steps"] * m["samples"] * float(np.mean(self.slices))

    def ratios(self) -> dict[str, Optional[float]]:
        single = self.seconds_per_volume(self.methods[0].name)
        ddim = next((m.name for m in self.methods if m.role == "model" and m.steps == 10 and m.samples == 1), None)
        union = self.union_model
        medsegdiff = self.medsegdiff_seconds_per_volume()
        return {"ddim10_over_single_step": self.seconds_per_volume(ddim) / single if ddim else None,
                "single_step_over_union_model": single / self.seconds_per_volume(union.name) if union else None,
                "medsegdiff_like_over_single_step": medsegdiff / single if medsegdiff else None}


def _dice(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None:
        return DASH
    return f"{value:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def _hd95(pair: tuple[Optional[float], int]) -> str:
    mean, infinite = pair
    if mean is None:
        return f"∞ ({infinite})" if infinite else DASH
    return f"{mean:.1f}" + (f" ({infinite} ∞)" if infinite else "")


def _dice_and_hd95(scores: MethodScores, label: int) -> str:
    dice = scores.organ_dice(label)
    return DASH if dice is None else f"{_dice(dice)} / {_hd95(scores.organ_hd95(label))}"


def _number(value: Optional[float]) -> Optional[float]:
    """JSON has no infinity: an infinite HD95 (one mask empty) is written as null."""
    return float(value) if value is not None and np.isfinite(value) else None


def _overlap_tables(ev: OrganEvaluation) -> tuple[str, str, str]:
    eight, everything = ev.eight, ev.organs
    header = ["Method", "Design", *[ev.name(label) for label in eight], f"mean {len(eight)}", ev.all_label, "union"]
    dice_rows, hd_rows = [], []
    for method in ev.methods:
        scores = ev.scores[method.name]
        union, union_std = scores.union_dice()
        dice_rows.append([method.name, method.design, *[_dice(scores.organ_dice(label)) for label in eight],
                          _dice(scores.mean_dice(eight)),
                          _dice(scores.mean_dice(everything), scores.mean_dice_std(everything)),
                          _dice(union, union_std)])
        hd_rows.append([method.name, method.design, *[_hd95(scores.organ_hd95(label)) for label in eight],
                        _hd95(scores.mean_hd95(eight)), _hd95(scores.mean_hd95(everything)), _hd95(scores.union_hd95())])
    per_organ = [[ev.name(label), *[_dice_and_hd95(ev.scores[m.name], label) for m in ev.methods]]
                 for label in everything]
    return (markdown_table(header, dice_rows), markdown_table(header, hd_rows),
            markdown_table(["Organ", *[m.name for m in ev.methods]], per_organ))


def _memory_cells(ev: OrganEvaluation, name: str, cuda: bool) -> list[str]:
    if name not in ev.memory:
        return [DASH] * (3 if cuda else 2)
    measured = ev.memory[name]
    if "error" in measured:
        return [f"failed: {measured['error']}"] + [DASH] * (2 if cuda else 1)
    cells = [f"{measured['peak_rss_mib']:.0f}", f"{measured['increase_mib']:.0f}"]
    return cells + ([f"{measured['cuda_peak_mib']:.0f}" if "cuda_peak_mib" in measured else DASH] if cuda else [])


def _speed_section(ev: OrganEvaluation) -> list[str]:
    single = ev.seconds_per_volume(ev.methods[0].name)
    cuda = any("cuda_peak_mib" in m for m in ev.memory.values())
    header = ["Method", "s / slice", "s / volume", "× single step", "peak RSS (MiB)", "RSS increase (MiB)"]
    header += ["CUDA peak (MiB)"] if cuda else []
    rows = [[m.name, f"{ev.seconds_per_slice(m.name):.3f}", f"{ev.seconds_per_volume(m.name):.1f}",
             f"{ev.seconds_per_volume(m.name) / single:.2f}", *_memory_cells(ev, m.name, cuda)] for m in ev.methods]
    ratios = ev.ratios()
    text = []
    medsegdiff = ev.medsegdiff
    if medsegdiff is not None:
        per_slice = medsegdiff["seconds_per_pass_per_slice"] * medsegdiff["steps"] * medsegdiff["samples"]
        total = ev.medsegdiff_seconds_per_volume()
        rows.append([f"MedSegDiff-like pixel diffusion ({medsegdiff['steps']} steps × {medsegdiff['samples']} samples), "
                     "extrapolated from a measured pass", f"{per_slice:.3f}", f"{total:.1f}", f"{total / single:.1f}",
                     *[DASH] * (3 if cuda else 2)])
        text += [
            f"MedSegDiff-like row: extrapolated from a measured pass, not run. One denoising pass of a timestep UNet "
            f"with the baseline's backbone ({medsegdiff['backbone']}) on (x_t ‖ CT), {medsegdiff['in_channels']} → "
            f"{medsegdiff['out_channels']} channels at {medsegdiff['slice_size']}² pixels, batches of "
            f"{medsegdiff['batch']} slices, mean of {medsegdiff['passes_measured']} passes after a warm-up pass: "
            f"{medsegdiff['seconds_per_pass_per_slice']:.4f} s per slice; × {medsegdiff['steps']} steps × "
            f"{medsegdiff['samples']} samples × {np.mean(ev.slices):.1f} axial slices (the test volumes' mean). It "
            "counts one window per slice and no resampling, so it is a lower bound; the single step is "
            f"**{ratios['medsegdiff_like_over_single_step']:.0f}×** faster than it.", ""]
    if ratios["ddim10_over_single_step"] is not None:
        text += [f"10-step DDIM costs **{ratios['ddim10_over_single_step']:.1f}×** the single step in this run.", ""]
    if ratios["single_step_over_union_model"] is not None:
        text += [f"Per volume, the single step takes **{ratios['single_step_over_union_model']:.2f}×** the time of the "
                 f"binary union model ({ev.union_model.name}) on the same CTs.", ""]
    memory = (f"Memory: each row segmented the first test CT ({ev.memory_case}) once more in a Python process of its "
              "own (training/evaluation/peak_memory.py): peak RSS (getrusage ru_maxrss) of that process, Python, "
              "PyTorch, the weights and the CT included, and its increase while segmenting"
              + ("; CUDA peak: torch.cuda.max_memory_allocated while segmenting." if cuda else ".")
              if ev.memory else "Memory: not measured (--no-memory).")
    return [
        "## Speed and memory", "",
        f"Seconds: wall time of segmenting each test CT through the task layer, as the CLI does (resampling, every "
        f"window, class arg-max, back to the CT's grid), mean over the {len(ev.cases)} CTs; per slice = per volume / "
        f"axial slices. Every model first ran once on a few slices, untimed. Device: {ev.args.device} on "
        f"{platform.machine()}.", "",
        markdown_table(header, rows), "", memory, "", *text]


def _design_section(ev: OrganEvaluation) -> list[str]:
    rows = []
    for method in ev.methods:
        if method.role == "model" and method is not ev.methods[0]:
            continue  # one row per design: the models at their own setting
        scores = ev.scores[method.name]
        peak = ev.memory.get(method.name, {}).get("peak_rss_mib")
        rows.append([method.design, method.name, _dice(scores.mean_dice(ev.organs)), _dice(scores.mean_dice(ev.eight)),
                     _dice(scores.union_dice()[0]), f"{ev.seconds_per_volume(method.name):.1f}",
                     f"{peak:.0f}" if peak is not None else DASH])
    return ["## Design comparison", "",
            "Each design at its card's setting on the same CTs: the mask encodings of the latent diffusion segmenter, "
            "the binary union model (one segment: union Dice only) and the pixel-space UNet.", "",
            markdown_table(["Design", "Method", f"{ev.all_label} Dice", f"mean {len(ev.eight)} Dice", "union Dice",
                            "s / volume", "peak RSS (MiB)"], rows), ""]


def _targets_section(ev: OrganEvaluation) -> list[str]:
    rows = []
    single = ev.scores[ev.methods[0].name]
    baseline = ev.row("baseline")
    if baseline is not None and single.mean_dice(ev.organs) is not None:
        ours, theirs = single.mean_dice(ev.organs), ev.scores[baseline.name].mean_dice(ev.organs)
        if theirs is not None:
            rows.append([f"{ev.all_label} Dice ≥ the multi-class UNet's", f"{ours:.3f} vs {theirs:.3f}",
                         "met" if ours >= theirs else "not met"])
    large = [label for label in ev.organs if ev.key(label) in LARGE_ORGANS]
    if large:
        values = [single.organ_dice(label) for label in large]
        rows.append([f"{', '.join(ev.name(label) for label in large)} ≥ {LARGE_ORGAN_DICE:.2f} (in-distribution set)",
                     ", ".join(f"{value:.3f}" for value in values),
                     "met" if all(v >= LARGE_ORGAN_DICE for v in values) else "not met"])
    ratios = ev.ratios()
    for key, goal, text in (("ddim10_over_single_step", DDIM_SPEEDUP, "single step ≥ {:g}× faster than its 10-step DDIM"),
                            ("medsegdiff_like_over_single_step", MEDSEGDIFF_SPEEDUP,
                             "single step ≥ {:g}× faster than MedSegDiff-like (extrapolated)")):
        if ratios[key] is not None:
            rows.append([text.format(goal), f"{ratios[key]:.1f}×", "met" if ratios[key] >= goal else "not met"])
    if ratios["single_step_over_union_model"] is not None:
        ratio = ratios["single_step_over_union_model"]
        rows.append([f"time per volume ≤ {UNION_TIME_RATIO:g}× the binary union model's", f"{ratio:.2f}×",
                     "met" if ratio <= UNION_TIME_RATIO else "not met"])
    if not rows:
        return []
    return ["## Targets", "", "The issue's targets, as measured in this run (the Dice targets are stated for the "
            "in-distribution test set).", "", markdown_table(["Target", "Measured", "Result"], rows), ""]


def _results(ev: OrganEvaluation) -> dict:
    everything, eight, count = ev.organs, ev.eight, len(ev.organs)
    methods = []
    for method in ev.methods:
        scores = ev.scores[method.name]
        methods.append({
            "name": method.name, "design": method.design, "model": str(method.loaded.card.directory),
            "steps": method.steps, "samples": method.samples,
            "dice": {ev.key(label): scores.organ_dice(label) for label in everything},
            "hd95_mm": {ev.key(label): scores.organ_hd95(label)[0] for label in everything},
            "hd95_infinite": {ev.key(label): scores.organ_hd95(label)[1] for label in everything},
            f"mean{len(eight)}_dice": scores.mean_dice(eight), f"mean{count}_dice": scores.mean_dice(everything),
            f"mean{count}_dice_std": scores.mean_dice_std(everything),
            f"mean{len(eight)}_hd95_mm": scores.mean_hd95(eight)[0], f"mean{count}_hd95_mm": scores.mean_hd95(everything)[0],
            "union_dice": scores.union_dice()[0], "union_dice_std": scores.union_dice()[1],
            "union_hd95_mm": scores.union_hd95()[0],
            "seconds_per_slice": ev.seconds_per_slice(method.name), "seconds_per_volume": ev.seconds_per_volume(method.name),
            "memory": ev.memory.get(method.name)})
    per_case = {m.name: [{"case": case,
                          "organs": {ev.key(label): None if s is None else {k: _number(v) for k, v in s.items()}
                                     for label, s in scores["organs"].items()},
                          "union": {k: _number(v) for k, v in scores["union"].items()}}
                         for case, scores in zip(ev.cases, ev.scores[m.name].cases)] for m in ev.methods}
    medsegdiff = None if ev.medsegdiff is None else {**ev.medsegdiff, "extrapolated": True,
                                                      "seconds_per_volume": ev.medsegdiff_seconds_per_volume()}
    return {"cases": ev.cases, "organs": [{"label": label, "key": ev.key(label), "name": ev.name(label)}
                                          for label in everything],
            "transunet_eight": [ev.key(label) for label in eight], "slices": ev.slices, "methods": methods,
            "medsegdiff_like": medsegdiff, "ratios": ev.ratios(), "memory_case": ev.memory_case,
            "per_case": per_case, "convention": "HD95 null: infinite (the organ is empty in exactly one mask)"}


def _card_metrics(ev: OrganEvaluation, results: dict) -> dict:
    single = results["methods"][0]
    count, eight = len(ev.organs), len(ev.eight)
    step = {f"mean{count}_dice": single[f"mean{count}_dice"], f"mean{eight}_dice": single[f"mean{eight}_dice"],
            "union_dice": single["union_dice"], f"mean{count}_hd95_mm": single[f"mean{count}_hd95_mm"],
            f"mean{eight}_hd95_mm": single[f"mean{eight}_hd95_mm"], "dice": single["dice"], "hd95_mm": single["hd95_mm"]}
    baseline = next((m for m, row in zip(results["methods"], ev.methods) if row.role == "baseline"), None)
    args = ev.args
    return {
        "measured_on": measured_on(len(ev.cases), args, "abdominal CT"),
        "single_step": step,
        **({f"baseline_unet_mean{count}_dice": baseline[f"mean{count}_dice"],
            f"baseline_unet_mean{eight}_dice": baseline[f"mean{eight}_dice"]} if baseline else {}),
        "convention": "BTCV protocol: per organ and 3D volume at the original resolution, mean over volumes; "
                      "HD95 leaves out infinite values (organ empty in one mask)",
        "report": str(args.out / "README.md"),
    }


def write_organ_report(ev: OrganEvaluation) -> dict:
    """Write OUT/README.md (and, with --update-card, the card's metrics); return results.json's content."""
    args, card = ev.args, ev.model.card
    dice_table, hd_table, per_organ_table = _overlap_tables(ev)
    text = [
        f"# Multi-organ SDSeg evaluation: {card.name} {card.version} ({ev.methods[0].design})", "",
        f"{len(ev.cases)} held-out CTs ({args.split} split of `{args.data_root}`): {', '.join(ev.cases)}. "
        f"{args.command_note}", "",
        f"Made with: `{getattr(args, 'command_line', '')}`", "",
        f"Protocol (BTCV): Dice and HD95 (mm, with the CT's voxel spacing) per organ and 3D volume at the original "
        f"resolution, then the mean over volumes; `mean {len(ev.eight)}`: the organs of the TransUNet split, "
        f"`{ev.all_label}`: all of the model's organs (± std over volumes of each volume's mean), `union`: any organ "
        "against any of those organs (what the binary union model predicts; it has no per-organ scores: —). "
        "Empty-mask convention: organ absent from both masks → Dice 1, HD95 0; from exactly one → Dice 0, HD95 ∞, "
        "left out of the HD95 means and counted: `mean (n ∞)` is the mean of the finite values, n infinite ones (volumes, "
        "or organ-volume pairs in the means over organs) left out; `∞ (n)`: all n values were infinite.", "",
        f"## Dice, {len(ev.eight)} organs of the TransUNet split", "", dice_table, "",
        "## HD95 (mm)", "", hd_table, "",
        "## Every organ of the model (Dice / HD95 mm)", "", per_organ_table, "",
        *_speed_section(ev), *_design_section(ev), *_targets_section(ev),
        f"Figure: `{ev.figure}`: {ev.cases[0]}, the single step; organs in the card's segment colours.", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text("\n".join(text), encoding="utf-8")
    results = _results(ev)
    if args.update_card:
        update_card_metrics(args.model, _card_metrics(ev, results), args.card_key)
    return results
