"""What both evaluations share: case selection, timing, Markdown tables, writing metrics into a card."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable


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


def limit(cases: list, max_cases: int) -> list:
    return cases[:max_cases] if max_cases else cases


def run_model(loaded, inputs: dict, *, device: str, batch_size: int, seed: int = 0, steps=None, samples: int = 1,
              **task_options) -> dict:
    """Output name -> Volume of `loaded` on `inputs` (Volumes named as the model's inputs), through the same task
    layer as the CLI and Slicer: the card's normalization, sampling and output scale, the request's checks."""
    request_type = {"translation": TranslateRequest, "segmentation": SegmentRequest}[loaded.card.task]
    request = request_type(model=str(loaded.card.directory), settings=RunSettings(
        steps=steps, samples=samples, seed=seed, device=device, batch_size=batch_size), **task_options)
    request.check(loaded.card)
    return request.run(inputs, loaded, request.settings.run_options())
