"""Reading and writing model folders: SHA-256 checked before any tensor is read, safetensors only (never pickle).

torch is imported only when tensors are read or written, so a model list can be shown (e.g. in Slicer before its
dependencies are installed) without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .card import CARD_FILE, WEIGHTS_FILE, ModelCard, validate_card
from .registry import ModelRegistry

if TYPE_CHECKING:
    import torch


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    card: ModelCard
    tensors: dict[str, torch.Tensor]


def load_model(name_or_path: str | Path, task: str | None = None, registry: ModelRegistry | None = None) -> LoadedModel:
    """Find a model, verify its weights against the card's SHA-256, then read them."""
    card = (registry or ModelRegistry()).find(name_or_path, task=task)
    weights = card.weights_path
    if not weights.is_file():
        raise InputError(f"model {card.name!r} has no weights file at {weights}; reinstall or re-export it")
    actual = sha256_of(weights)
    if actual != card.data["sha256"]:
        raise InputError(
            f"weights of model {card.name!r} do not match their card (sha256 {actual[:12]}… != {card.data['sha256'][:12]}…); "
            "the file is corrupt or was changed: reinstall or re-export the model"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return LoadedModel(card, load_file(str(weights)))
    except (SafetensorError, OSError, ValueError) as error:
        # A checksum that matches proves only that the card was sealed over this file, not that the file is whole.
        reason = " ".join(str(error).split())[:160]
        raise InputError(f"weights of model {card.name!r} cannot be read ({reason}); the file is truncated or not "
                         "safetensors: reinstall or re-export the model") from None


def save_model(directory: Path, tensors: dict[str, torch.Tensor], card: dict[str, Any]) -> Path:
    """Write model.safetensors + card.json (with the weights' sha256) into `directory`, atomically as a folder."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(contiguous, str(staging / WEIGHTS_FILE), metadata={"name": str(card.get("name", ""))})
        card = dict(card, weights=WEIGHTS_FILE, sha256=sha256_of(staging / WEIGHTS_FILE))
        validate_card(card, staging / CARD_FILE)
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        # mkdtemp makes a private 0700 folder; a model folder gets ordinary permissions (shared model stores).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        os.chmod(staging / WEIGHTS_FILE, 0o666 & ~umask)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
