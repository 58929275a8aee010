"""`meddiffusion bench` (also `python -m training bench`, `make bench`): speed and memory of both methods at both
scales, peers side by side, in one run.

Each job runs in its own process (`python -m MedDiffusionExtension.bench JOB PARAMETERS`) so that its peak RSS is
its own, one after another so that they do not compete for the cores. Results: benchmarks.json (everything
measured), benchmarks.md (the tables) and benchmarks.png (time per volume) in --out-dir; the tables are printed
too. Nothing here is asserted: benchmarks are measurements, not tests. This module imports no torch: the CLI's
parser is built from it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SCALE_JOBS = ("cdm-tiny", "sdseg-tiny", "cdm-paper", "sdseg-paper")
BUNDLED_JOBS = ("engine_overhead", "cdm_volume", "sdseg_volume", "sdseg_large", "sdseg_organs_volume", "sdseg_organs_large")
JOBS = ("machine",) + SCALE_JOBS + BUNDLED_JOBS
QUICK_JOBS = ("machine",) + SCALE_JOBS


def plan(job: str, quick: bool, device: str) -> tuple[str, dict]:
    """(worker job, parameters) for a job of this run."""
    if job == "machine":
        return "machine", {"device": device, "repeats": 2 if quick else 3}
    if job in BUNDLED_JOBS:
        return job, {"device": device}
    method, scale = job.split("-")
    precisions = ["fp32", "bf16"] + (["fp16"] if device.startswith("cuda") else [])
    paper = scale == "paper"
    parameters = {"method": method, "scale": scale, "device": device, "precisions": precisions,
                  "baseline_precisions": precisions, "layout_study": True, "warm_up": True, "slow_baselines": True}
    if quick:  # under two minutes on 2 CPU cores: the paper scale once, cold, on one slice, fp32 only; no layout
        # study, and the pixel-space peers in fp32 only
        slices = {"cdm": 4, "sdseg": 1}[method]
        parameters.update(slices=1 if paper else slices, repeats=1, emulated_sampling=False, baseline_warm_up=False,
                          layout_study=False, baseline_precisions=["fp32"])
        if paper:
            parameters.update(precisions=["fp32"], warm_up=False, slow_baselines=False)
    else:
        parameters.update(slices=2 if paper else {"cdm": 16, "sdseg": 8}[method], repeats=2 if paper else 3,
                          batch_sizes=[1, 2] if paper else [1, 2, 4, 8, 16])
    return "scale", parameters


def run_job(job: str, quick: bool, device: str, threads: int | None) -> dict:
    worker, parameters = plan(job, quick, device)
    if threads:
        parameters["threads"] = threads
    process = subprocess.run([sys.executable, "-m", "MedDiffusionExtension.bench", worker, json.dumps(parameters)],
                             capture_output=True, text=True)
    if process.returncode != 0:
        lines = process.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {process.returncode}"}
    return json.loads(process.stdout.strip().splitlines()[-1])


def run_benchmarks(out_dir: Path, device: str, quick: bool, jobs, log, threads: int | None = None) -> dict:
    from . import report

    started = time.perf_counter()
    results = {"command": " ".join(["meddiffusion", "bench"] + (["--quick"] if quick else []) + ["--device", device]
                                   + ([f"--threads {threads}"] if threads else [])),
               "quick": quick, "random_weights": "the tiny and paper rows use random weights (speed only)"}
    for job in jobs:
        log(f"bench: {job} ...")
        job_started = time.perf_counter()
        results[job] = run_job(job, quick, device, threads)
        results[job]["job_seconds"] = time.perf_counter() - job_started
        log(f"bench: {job}: {'error: ' + results[job]['error'] if 'error' in results[job] else 'done'} "
            f"({results[job]['job_seconds']:.0f} s)")
    results["wall_seconds"] = time.perf_counter() - started
    table = report.rows(results)
    peaks = {name: value for name, value in results.get("machine", {}).get("peaks", {}).items()}
    text = _markdown(results, table, peaks, report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out_dir / "benchmarks.md").write_text(text + "\n", encoding="utf-8")
    if table:
        report.plot(table, out_dir / "benchmarks.png")
    print(text)
    return results


def _markdown(results: dict, table, peaks: dict, report) -> str:
    machine = results.get("machine", {}).get("machine", {})
    lines = [f"Command: `{results['command']}`; {results['wall_seconds']:.0f} s in all. Machine: "
             f"{machine.get('cpu_count', '?')} CPU cores ({machine.get('cpu', '?')}), torch {machine.get('torch', '?')}, "
             f"{machine.get('torch_threads', '?')} torch threads, device {machine.get('device', '?')}. "
             + ", ".join(f"{name} {value['gflops']:.1f} GFLOP/s" for name, value in peaks.items()) + " (measured peaks).",
             "", "Time per volume (CDM: 240×240×155 MRI, T1 + T2 → T1c + T2f; SDSeg: 512×512×100 CT), random "
             "weights. ≈: extrapolated from the measured slices (model build once + seconds per slice × slices) or, "
             "for the pixel-space baselines, from one measured network pass × steps × slices. × reference: against "
             "the first row of the same model; baselines against its network time. Pipeline efficiency: seconds per "
             "slice of the whole pipeline ÷ seconds inside the networks, on the same slices.", "",
             report.markdown(table, peaks)]
    checks = report.target_checks(results)
    if checks:
        lines += ["", "| target (issue) | measured | limit | met |", "|---|---|---|---|"]
        lines += [f"| {label} | {value:.2f} | {limit:g} | {'yes' if met else 'no'} |" for label, value, limit, met in checks]
    for title, body in (("Layouts (fp32)", report.layout_markdown(results)),
                        ("Batch size", report.batch_markdown(results))):
        if body:
            lines += ["", f"{title}:", "", body]
    bundled = {job: results[job] for job in BUNDLED_JOBS if job in results}
    if bundled:
        lines += ["", "Bundled models, CLI end to end:", ""]
        lines += [f"- {job}: " + (value.get("error") or f"{value.get('volume', '')}: {value['seconds']:.1f} s, "
                                                         f"peak RSS {value['peak_rss_mb']:.0f} MB")
                  for job, value in bundled.items()]
    errors = [f"- {job}: {value['error']}" for job, value in results.items() if isinstance(value, dict) and "error" in value]
    if errors:
        lines += ["", "Failed jobs:", ""] + errors
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="under two minutes on 2 CPU cores: fewer slices, no repetitions, the paper scale once "
                             "in fp32, no bundled-model CLI runs")
    parser.add_argument("--out-dir", type=Path, default=Path("out/bench"),
                        help="folder for benchmarks.json, benchmarks.md and benchmarks.png")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    parser.add_argument("--threads", type=int, help="torch threads per job (default: torch's, one per core)")
    parser.add_argument("--job", dest="jobs", action="append", choices=JOBS,
                        help="measure only this (repeatable; default: all, or all but the bundled CLI runs with --quick)")


def run(args: argparse.Namespace) -> int:
    jobs = tuple(args.jobs or (QUICK_JOBS if args.quick else JOBS))
    results = run_benchmarks(args.out_dir, args.device, args.quick, jobs,
                             lambda message: print(message, file=sys.stderr, flush=True), args.threads)
    print(f"wrote {Path(args.out_dir) / 'benchmarks.json'}, benchmarks.md, benchmarks.png "
          f"({results['wall_seconds']:.0f} s)", file=sys.stderr)
    return 0
