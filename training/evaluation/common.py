"""What both evaluations share: case selection, timing, Markdown tables, writing metrics into a card."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable


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


def update_card_metrics(model: str, metrics: dict) -> Path:
    card = ModelRegistry().find(model)
    path = card.directory / "card.json"
    data = json.loads(path.read_text())
    data["metrics"] = metrics  # the sha256 covers the weights only, so the card can record later measurements
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def limit(cases: list, max_cases: int) -> list:
    return cases[:max_cases] if max_cases else cases
