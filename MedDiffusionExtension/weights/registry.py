"""Where models live: bundled with the extension (Resources/Models) and the user's folder (~/.meddiffusion/models).

A user model with the same name as a bundled one wins, so a researcher can retrain and override a default.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import InputError
from .card import CARD_FILE, ModelCard, read_card

USER_DIR_ENV = "MEDDIFFUSION_MODELS_DIR"


def bundled_models_dir() -> Path:
    # The backend package sits next to Resources/ both in the source tree and in the installed extension.
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def user_models_dir() -> Path:
    override = os.environ.get(USER_DIR_ENV)
    return Path(override).expanduser() if override else Path.home() / ".meddiffusion" / "models"


class ModelRegistry:
    """Lists and finds model folders (each with card.json + model.safetensors) in the search directories."""

    def __init__(self, directories: list[Path] | None = None):
        # Later directories win on name clashes: user models override bundled ones.
        self.directories = directories if directories is not None else [bundled_models_dir(), user_models_dir()]

    def cards(self) -> dict[str, ModelCard]:
        found: dict[str, ModelCard] = {}
        for root in self.directories:
            if not root.is_dir():
                continue
            for card_path in sorted(root.glob(f"*/{CARD_FILE}")):
                try:
                    card = read_card(card_path.parent)
                except InputError as error:
                    # One broken model folder must not hide every other model (the bundled defaults above all).
                    warnings.warn(f"skipped the model in {card_path.parent}: {error}", stacklevel=2)
                    continue
                found[card.name] = card
        return found

    def find(self, name_or_path: str | Path, task: str | None = None) -> ModelCard:
        """A registered model by name, or a model folder given as a path."""
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            card = read_card(path)
        else:
            cards = self.cards()
            if str(name_or_path) not in cards:
                known = ", ".join(sorted(cards)) or "none installed"
                raise InputError(f"unknown model {str(name_or_path)!r}; known models: {known} (see `meddiffusion models list`)")
            card = cards[str(name_or_path)]
        if task is not None and card.task != task:
            raise InputError(f"model {card.name!r} is a {card.task} model, not a {task} model; pick another with --model")
        return card
