"""Recipes: what a method plugs into the one trainer (model, data, loss, card), and the registry that names them.

A recipe never touches devices, optimizers, DDP or checkpoints; the trainer does. `loss` receives the bare model
(the trainer runs it inside DistributedDataParallel's forward, so every parameter use is seen there) and a CPU
torch.Generator owned and checkpointed by the trainer: draw all training noise from it (on the CPU, then move it to
the batch's device) for exact resume.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from MedDiffusionExtension.errors import InputError

# name -> "module:attr", imported only when asked for so that one recipe's dependencies never load for another.
RECIPES: dict[str, str] = {
    "cdm": "training.recipes.cdm:CDMRecipe",
    "sdseg": "training.recipes.sdseg:SDSegRecipe",
    "edts": "training.recipes.edts:EDTSRecipe",
}


class Recipe:
    """Base class. Subclasses set `defaults` (every option they accept) and implement build_model, train_dataset, loss."""

    defaults: ClassVar[dict[str, Any]] = {}
    # Set when some trainable parameters sit out a step (multi-process runs need DDP told so; it costs a graph walk).
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any] | None = None, name: str | None = None, check_keys: bool = True):
        config = dict(config or {})
        unknown = sorted(set(config) - set(self.defaults))
        if check_keys and self.defaults and unknown:
            raise InputError(
                f"recipe {name or type(self).__name__} has no option {', '.join(unknown)}; "
                f"known options: {', '.join(sorted(self.defaults))}"
            )
        self.config: dict[str, Any] = {**self.defaults, **config}
        self.name = name or type(self).__name__

    def build_model(self) -> nn.Module:
        """The whole module that is trained, EMA'd, checkpointed and exported."""
        raise NotImplementedError

    def trainable_parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        """Parameters the optimizer updates; the trainer freezes (requires_grad=False) every other one."""
        return [p for p in model.parameters() if p.requires_grad]

    def train_dataset(self) -> Dataset:
        """The training set. Under torchrun every rank builds it at the same time (first inside
        data.slices.preparing_share, where a CachedSlices only prepares its share): anything written to disk must be
        safe against concurrent writers, as CachedSlices is."""
        raise NotImplementedError

    def val_dataset(self) -> Dataset | None:
        return None

    def collate_fn(self, items: list[Any]) -> Any:
        return torch.utils.data.default_collate(items)

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimize and extra numbers to log (averaged over the log window and the ranks)."""
        raise NotImplementedError

    def on_start(self, model: nn.Module, loader: torch.utils.data.DataLoader) -> dict[str, Any] | None:
        """Called once before the first step of a fresh run (not on resume).

        Values to keep must live in the model (a buffer: checkpointed and exported) or be returned here: the returned
        dict is taken from rank 0, merged into self.config and so recorded in checkpoints and cards.
        """
        return None

    def describe_data(self, dataset: Dataset) -> dict[str, Any]:
        """The card's training.data entry: what the model was trained on."""
        return {"dataset": type(dataset).__name__, "items": len(dataset)}

    def export_tensors(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors the model file holds (default: the whole state dict; a stage may drop a teacher)."""
        return weights

    def export_card(self) -> dict[str, Any]:
        """Method-specific card fields (task, method, inputs, outputs, normalization, architecture, license...)."""
        return {}


def resolve_recipe(name: str) -> type[Recipe]:
    """A registered name, or a "package.module:attr" import path (tests define toy recipes that way)."""
    target = RECIPES.get(name, name)
    if ":" not in target:
        raise InputError(f"unknown recipe {name!r}; use one of {', '.join(sorted(RECIPES))} or package.module:Class")
    module_name, attr = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise InputError(f"recipe {name!r}: cannot import {module_name} ({exc}); "
                         "check the name or run from the repo root") from None
    recipe = getattr(module, attr, None)
    if not (isinstance(recipe, type) and issubclass(recipe, Recipe)):
        raise InputError(f"recipe {name!r}: {target} is not a Recipe subclass")
    return recipe


def build_recipe(name: str, config: dict[str, Any] | None = None, check_keys: bool = True) -> Recipe:
    return resolve_recipe(name)(config, name=name, check_keys=check_keys)


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, null, lists), the raw string otherwise (paths, names)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: Iterable[str], config_file: str | Path | None = None) -> dict[str, Any]:
    """Recipe options from a JSON file, then `key=value` pairs on top."""
    config: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read recipe config {config_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise InputError(f"recipe config {config_file} must hold a JSON object of option: value")
        config.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects key=value, got {pair!r}")
        config[key.strip()] = parse_value(value)
    return config
