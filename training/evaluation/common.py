"""What both evaluations share: case selection, timing, Markdown tables, writing metrics into a card."""

from __future__ import annotations

import contextlib
import contextvars
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator


from MedDiffusionExtension.tasks import RunSettings, SegmentRequest, TranslateRequest
from MedDiffusionExtension.weights import ModelRegistry


def timed(function: Callable, *args, **kwargs) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def update_card_metrics(model: str, metrics: dict, key: str = "") -> Path:
    """Write measured metrics into the card: all of them, or (key) under metrics[key], keeping the rest."""
    card = ModelRegistry().find(model)
    path = card.directory / "card.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    # The sha256 covers the weights only, so the card can record later measurements.
    if key:
        data.setdefault("metrics", {})[key] = metrics
    else:
        kept = {k: v for k, v in data.get("metrics", {}).items() if isinstance(v, dict) and "measured_on" in v}
        data["metrics"] = {**kept, **metrics}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def measured_on(count: int, args, what: str) -> str:
    """A card's `measured_on`: how many held-out cases of which data. Phantom datasets carry the phantom writer's
    acquisitions.json; any other root holds scans (a real dataset, or real CTs imported with their references)."""
    synthetic = (Path(args.data_root) / "acquisitions.json").is_file()
    kind = f"synthetic {what} phantoms" if synthetic else f"{what} scans"
    return f"{count} held-out {kind} ({args.data_root}, {args.split} split)"


def limit(cases: list, max_cases: int) -> list:
    return cases[:max_cases] if max_cases else cases


# The precision every model run of one evaluation uses (`evaluate --precision`). A context variable rather than an
# argument: the evaluations call run_model from many places, and the precision is a setting of the whole run.
_PRECISION = contextvars.ContextVar("evaluation_precision", default="auto")


@contextlib.contextmanager
def evaluation_precision(precision: str) -> Iterator[None]:
    token = _PRECISION.set(precision)
    try:
        yield
    finally:
        _PRECISION.reset(token)


def current_precision() -> str:
    """The precision of the evaluation running now (evaluation_precision), "auto" outside one."""
    return _PRECISION.get()


def run_model(loaded, inputs: dict, *, device: str, batch_size: int, seed: int = 0, steps=None, samples: int = 1,
              **task_options) -> dict:
    """Output name -> Volume of `loaded` on `inputs` (Volumes named as the model's inputs), through the same task
    layer as the CLI and Slicer: the card's normalization, sampling and output scale, the request's checks, and
    the evaluation's precision (evaluation_precision)."""
    request_type = {"translation": TranslateRequest, "segmentation": SegmentRequest}[loaded.card.task]
    request = request_type(model=str(loaded.card.directory), settings=RunSettings(
        steps=steps, samples=samples, seed=seed, device=device, batch_size=batch_size, precision=_PRECISION.get()),
        **task_options)
    request.check(loaded.card)
    return request.run(inputs, loaded, request.settings.run_options(model=loaded))


# The quality guard (docs/decisions.md): a fast precision becomes a default only where it costs at most this much
# against fp32 on the bundled models' test sets.
GUARD_PSNR_DB, GUARD_DICE = 0.1, 0.005


def headline_metrics(task: str, results: dict) -> dict[str, dict[str, float]]:
    """Row name -> its headline metrics in an evaluation's results: average 2D PSNR and SSIM (translation), Dice
    (segmentation); {} for other evaluations."""
    if task == "translation":
        return {row[0]: {"psnr": row[7], "ssim": row[8]} for row in results.get("table1", [])}
    if task == "segmentation":  # the Dice cell reads "mean ± std"
        return {row[0]: {"dice": float(str(row[1]).split()[0])} for row in results.get("rows", [])}
    return {}


def precision_comparison(task: str, by_precision: dict[str, dict]) -> tuple[str, dict]:
    """Markdown and JSON comparing each precision's headline metrics with the first precision's (the reference,
    normally fp32), and whether each stays within the quality guard."""
    reference_name, *others = list(by_precision)
    reference = headline_metrics(task, by_precision[reference_name])
    lines = ["| row | precision | metric | value | reference | difference | within guard |", "|---|---|---|---|---|---|---|"]
    verdicts = {}
    for precision in others:
        within = True
        for row, values in headline_metrics(task, by_precision[precision]).items():
            for metric, value in values.items():
                if row not in reference or metric == "ssim":
                    continue
                difference = value - reference[row][metric]
                ok = -difference <= (GUARD_PSNR_DB if metric == "psnr" else GUARD_DICE)
                within = within and ok
                lines.append(f"| {row} | {precision} | {metric} | {value:.4f} | {reference[row][metric]:.4f} | "
                             f"{difference:+.4f} | {'yes' if ok else 'no'} |")
        verdicts[precision] = within
    text = (f"Quality guard: each precision against {reference_name} (a loss of at most {GUARD_PSNR_DB} dB PSNR or "
            f"{GUARD_DICE} Dice).\n\n" + "\n".join(lines) + "\n")
    return text, {"reference": reference_name, "within_guard": verdicts}
