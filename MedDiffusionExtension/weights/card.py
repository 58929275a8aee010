"""The model card: the JSON document that says what a weights file is, how it was made and how well it does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"

# Fields every card must carry (ARCHITECTURE.md "Contracts"); the rest is free-form per method.
REQUIRED_FIELDS = (
    "name", "version", "task", "method", "inputs", "outputs", "normalization", "architecture",
    "training", "metrics", "license", "citation", "sha256",
)
TASKS = ("translation", "segmentation")


@dataclass(frozen=True)
class ModelCard:
    """A validated card plus the folder it was read from."""

    data: dict[str, Any]
    directory: Path

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def version(self) -> str:
        return self.data["version"]

    @property
    def method(self) -> str:
        return self.data["method"]

    @property
    def task(self) -> str:
        return self.data["task"]

    @property
    def weights_path(self) -> Path:
        return self.directory / self.data.get("weights", WEIGHTS_FILE)

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.data["outputs"]]

    def summary(self) -> str:
        """One line for `models list`."""
        ins = ",".join(i["name"] for i in self.data["inputs"])
        outs = ",".join(self.output_names)
        return f"{self.name:<24} {self.version:<8} {self.method:<6} {ins} -> {outs}"


def validate_card(data: Any, where: Path) -> None:
    if not isinstance(data, dict):
        raise InputError(f"{where} is not a model card (expected a JSON object); re-export the model")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise InputError(f"model card {where} lacks {', '.join(missing)}; re-export the model with `python -m training export`")
    if data["task"] not in TASKS:
        raise InputError(f"model card {where} has task {data['task']!r}; expected one of {', '.join(TASKS)}")


def read_card(directory: Path) -> ModelCard:
    path = Path(directory) / CARD_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"no {CARD_FILE} in {directory}; a model folder holds {WEIGHTS_FILE} and {CARD_FILE}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); re-export the model") from None
    validate_card(data, path)
    return ModelCard(data, Path(directory))
