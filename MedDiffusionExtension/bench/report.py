"""The benchmark's results as people read them: one side-by-side table of time per volume per method, scale and
precision (Markdown), the issue's targets checked against it, the layout and batch-size studies, and a PNG plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# The issue's targets, checked against each run (paper scale: what retraining at the papers' size gets).
TARGETS = {"paper CDM volume (s)": 60.0, "paper SDSeg volume (s)": 90.0, "SDSeg 10-step DDIM / single step": 3.0,
           "CDM vs pixel-space 30 steps (network time)": 40.0, "CDM vs DDPM 1000 steps (network time)": 1000.0,
           "pipeline efficiency": 1.15}
METHOD_LABELS = {("cdm", 30): "CDM (MDN 30 DDIM steps + C-UNet)", ("sdseg", 1): "SDSeg single step",
                 ("sdseg", 10): "SDSeg 10-step DDIM"}


@dataclass
class Row:
    scale: str
    method: str
    precision: str
    volume_seconds: float
    extrapolated: bool
    reference: Optional[float] = None  # the volume time this row is compared with (CDM or SDSeg single step)
    network_seconds_per_slice: Optional[float] = None
    efficiency: Optional[float] = None
    gflops: Optional[float] = None
    peak_rss_mb: Optional[float] = None
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.scale} · {self.method} · {self.precision}"


def rows(results: dict) -> list[Row]:
    """Table rows from the `scale` jobs' results ({"cdm-tiny": {...}, ...}), the diffusion models first."""
    table = []
    for key, job in results.items():
        if not isinstance(job, dict) or "pipelines" not in job:
            continue
        reference_network, reference_volume = None, None
        for name, run in job["pipelines"].items():
            precision, steps = name.split(", ")[0], int(name.split(", ")[1].split()[0])
            method = METHOD_LABELS[(job["method"], steps)]
            first = reference_volume is None
            if first:
                reference_volume = run["volume_seconds"]
                reference_network = run["network_seconds_per_slice"]["median"] * job["volume_slices"]
            table.append(Row(job["scale"], method, precision, run["volume_seconds"], run["volume_seconds_extrapolated"],
                             None if first else reference_volume, run["network_seconds_per_slice"]["median"],
                             run["pipeline_efficiency"], run.get("network_gflops"), job.get("peak_rss_mb"),
                             _difference_note(run)))
        if job["method"] == "sdseg" and "fp32, 1 step" in job["pipelines"]:
            table.append(_ensemble_row(job, reference_volume))
        for label, baseline in job.get("baselines", {}).items():
            table.append(Row(job["scale"], label.rsplit(" (", 1)[0], baseline["precision"], baseline["volume_seconds"],
                             True, reference_network, baseline["pass_seconds_per_slice"]["median"] * baseline["steps_per_slice"],
                             None, baseline["gflops"], None, "network time only, from one measured pass per step"))
    return table


def _difference_note(run: dict) -> str:
    difference = next((v for k, v in run.items() if k.startswith("difference_to_")), None)
    if not difference:
        return ""
    if "relative_l2" in difference:
        return f"relative difference to fp32 {100 * difference['relative_l2']:.2f} % (random weights)"
    return f"label Dice to fp32 {difference['label_dice']:.4f} (random weights)"


def _ensemble_row(job: dict, reference: float) -> Row:
    """SDSeg's 5-sample ensemble from the single step's measured parts: the image latent is computed once per slice
    and shared by the samples (the pipeline does so); without that cache every sample would encode the CT again."""
    from .scale_jobs import ENSEMBLE_SAMPLES

    run = job["pipelines"]["fp32, 1 step"]
    parts = {name: value["median"] for name, value in run["parts_seconds_per_slice"].items()}
    encoder = parts.get("vision encoder", 0.0)
    per_sample = sum(parts.values()) - encoder
    other = run["seconds_per_slice"]["median"] - sum(parts.values())
    cached = encoder + ENSEMBLE_SAMPLES * per_sample + other
    uncached = ENSEMBLE_SAMPLES * (encoder + per_sample) + other
    slices = job["volume_slices"]
    return Row(job["scale"], f"SDSeg single step, {ENSEMBLE_SAMPLES}-sample ensemble", "fp32",
               run["model_build_seconds"] + cached * slices, True, reference, cached - other, None, None, None,
               f"from the measured parts; without the shared image latent {uncached / cached:.2f}x slower")


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value:.1f} s" if value >= 10 else f"{value:.2f} s"


def markdown(table: list[Row], peaks: dict) -> str:
    conv_peak = peaks.get("conv3x3 fp32", {}).get("gflops")
    lines = ["| scale | method | precision | time per volume | × reference | network s/slice | pipeline efficiency "
             "| network GFLOP/s (% of conv peak) | peak RSS | note |", "|" + "---|" * 10]
    for row in table:
        ratio = f"{row.volume_seconds / row.reference:.1f}×" if row.reference else "—"
        flops = "—" if row.gflops is None else f"{row.gflops:.1f}" + (
            f" ({100 * row.gflops / conv_peak:.0f} %)" if conv_peak and row.precision == "fp32" else "")
        lines.append(" | ".join([
            f"| {row.scale}", row.method, row.precision,
            ("≈ " if row.extrapolated else "") + _seconds(row.volume_seconds), ratio,
            "—" if row.network_seconds_per_slice is None else f"{row.network_seconds_per_slice:.3f}",
            "—" if row.efficiency is None else f"{row.efficiency:.2f}", flops,
            "—" if row.peak_rss_mb is None else f"{row.peak_rss_mb:.0f} MB", row.note]) + " |")
    return "\n".join(lines)


def target_checks(results: dict) -> list[tuple[str, float, float, bool]]:
    """(target, measured, limit, met) for the issue's targets that this run measured (fp32, the default here)."""
    checks = []
    cdm, sdseg = results.get("cdm-paper", {}), results.get("sdseg-paper", {})
    fastest_cdm = _fastest(cdm, 30)
    if fastest_cdm:
        checks.append(("paper CDM volume (s)", fastest_cdm["volume_seconds"], TARGETS["paper CDM volume (s)"], False))
    single, ddim = _fastest(sdseg, 1), sdseg.get("pipelines", {}).get("fp32, 10 steps")
    if single:
        checks.append(("paper SDSeg volume (s)", single["volume_seconds"], TARGETS["paper SDSeg volume (s)"], False))
    fp32_single = sdseg.get("pipelines", {}).get("fp32, 1 step")
    if fp32_single and ddim:
        checks.append(("SDSeg 10-step DDIM / single step", ddim["seconds_per_slice"]["median"]
                       / fp32_single["seconds_per_slice"]["median"], TARGETS["SDSeg 10-step DDIM / single step"], True))
    run = cdm.get("pipelines", {}).get("fp32, 30 steps")
    for label, key in (("CDM vs pixel-space 30 steps (network time)", "pixel-space diffusion, 30 steps (fp32)"),
                       ("CDM vs DDPM 1000 steps (network time)", "pixel-space DDPM, 1000 steps (fp32)")):
        baseline = cdm.get("baselines", {}).get(key)
        if run and baseline:
            network = run["network_seconds_per_slice"]["median"] * cdm["volume_slices"]
            checks.append((label, baseline["volume_seconds"] / network, TARGETS[label], True))
    for name in ("cdm-tiny", "sdseg-tiny", "cdm-paper", "sdseg-paper"):  # every pipeline at both scales
        for key, run in results.get(name, {}).get("pipelines", {}).items():
            if key.startswith("fp32"):
                checks.append((f"pipeline efficiency ({name}, {key})", run["pipeline_efficiency"],
                               TARGETS["pipeline efficiency"], False))
    return [(label, value, limit, value >= limit if at_least else value <= limit)
            for label, value, limit, at_least in checks]


def _fastest(job: dict, steps: int) -> Optional[dict]:
    suffix = f", {steps} step{'s' if steps > 1 else ''}"
    runs = [run for key, run in job.get("pipelines", {}).items() if key.endswith(suffix)]
    return min(runs, key=lambda run: run["volume_seconds"]) if runs else None


def layout_markdown(results: dict) -> str:
    lines = ["| scale | network part | contiguous s/slice | channels_last s/slice | speed-up | largest difference |",
             "|---|---|---|---|---|---|"]
    for job in results.values():
        for part, study in (job.get("layouts") or {}).items() if isinstance(job, dict) else ():
            times = study["seconds_per_slice"]
            lines.append(f"| {job['scale']} {job['method']} | {part} | {times['contiguous']['median']:.4f} | "
                         f"{times['channels_last']['median']:.4f} | {study['speedup']:.2f}× | "
                         f"{study['max_abs_difference']:.1e} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def batch_markdown(results: dict) -> str:
    lines = ["| scale | network part | seconds per slice by batch size (fp32, channels_last) |", "|---|---|---|"]
    for job in results.values():
        for part, by_batch in (job.get("batch_sizes") or {}).items() if isinstance(job, dict) else ():
            cells = ", ".join(f"{batch}: {value['median']:.4f}" for batch, value in by_batch.items())
            lines.append(f"| {job['scale']} {job['method']} | {part} | {cells} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(table: list[Row], path: Path) -> Path:
    """Horizontal bars of time per volume (log scale), one per row; hatched bars are extrapolated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"fp32": "#4c72b0", "bf16": "#dd8452", "fp16": "#55a868"}
    figure, axes = plt.subplots(figsize=(10, 0.38 * len(table) + 1.2))
    labels = [row.label for row in table]
    for index, row in enumerate(table):
        axes.barh(index, row.volume_seconds, color=colours.get(row.precision, "#8172b3"),
                  hatch="//" if row.extrapolated else None, edgecolor="white")
        axes.text(row.volume_seconds, index, f" {_seconds(row.volume_seconds)}", va="center", fontsize=8)
    axes.set_yticks(range(len(table)), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("seconds per volume (CDM: 240×240×155 MRI; SDSeg: 512×512×100 CT); hatched: extrapolated")
    axes.set_title("Time per volume by method, scale and precision (random weights)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
