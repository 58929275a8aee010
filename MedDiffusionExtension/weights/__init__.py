"""Model files: safetensors weights + card.json, the registry of bundled and user models, verified loading."""

from .card import CARD_FILE, WEIGHTS_FILE, ModelCard, read_card
from .registry import ModelRegistry, bundled_models_dir, user_models_dir
from .store import LoadedModel, load_model, save_model, sha256_of

__all__ = [
    "CARD_FILE", "WEIGHTS_FILE", "ModelCard", "read_card", "ModelRegistry", "bundled_models_dir",
    "user_models_dir", "LoadedModel", "load_model", "save_model", "sha256_of",
]
