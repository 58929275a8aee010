"""Training checkpoints: atomic writing, finding the latest, safe loading, RNG states, and export to a model folder.

A checkpoint holds only tensors and plain Python values, so it loads with torch.load(weights_only=True): nothing in
it is ever unpickled as an arbitrary object.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from MedDiffusionExtension.errors import InputError

from .ema import ema_weights

CHECKPOINT_DIR = "checkpoints"
FORMAT = "meddiffusion-training-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first (by step, not by file time)."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def resolve_checkpoint(path_or_dir: str | Path) -> Path:
    """A checkpoint file, or a run's out dir standing for its latest checkpoint."""
    path = Path(path_or_dir)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise InputError(f"{path} holds no checkpoints ({CHECKPOINT_DIR}/step_*.pt); pass a checkpoint file")
        return latest
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist; pass a file from <out-dir>/{CHECKPOINT_DIR}/")
    return path


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write to a temporary file in the same folder and rename it, so a crash never leaves a half checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(dict(state, format=FORMAT, format_version=FORMAT_VERSION), tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise InputError(f"{path} is not a readable training checkpoint ({type(exc).__name__}); pick another one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not a MedDiffusion training checkpoint; pass a file written by `python -m training train`")
    return state


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Keep the `keep` newest checkpoints (0 keeps all)."""
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            old.unlink(missing_ok=True)


def capture_rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """This process's RNG streams as tensors and plain values (numpy's state array becomes an int64 tensor)."""
    python_version, python_words, python_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [python_version, list(python_words), python_gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    python_version, python_words, python_gauss = state["python"]
    random.setstate((python_version, tuple(python_words), python_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def export(
    checkpoint: str | Path,
    out_dir: str | Path,
    use_ema: bool = True,
    extra_card: dict[str, Any] | None = None,
    name: str | None = None,
    dtype: str | None = None,
    inference_only: bool = False,
) -> Path:
    """Write a checkpoint's weights (EMA ones when there are) as a model folder the extension loads.

    The card is: the recipe's export_card(), a `recipe` block (name + config), a `training` block (command line, steps,
    wall seconds, world size, device, seed, data, train config), then `extra_card` on top.
    """
    from MedDiffusionExtension.weights import save_model

    from .recipes import build_recipe

    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    recipe = build_recipe(state["recipe"]["name"], state["recipe"]["config"], check_keys=False)
    weights_kind = "ema" if use_ema and state.get("ema") is not None else "raw"
    weights = ema_weights(state["ema"]) if weights_kind == "ema" else state["model"]
    tensors = {key: value.detach().clone() for key, value in recipe.export_tensors(weights).items()}
    if inference_only:  # leave out what only training uses (e.g. SDSeg's mask encoder); such a folder cannot `init` training
        from MedDiffusionExtension.models import build_model

        card_fields = recipe.export_card()
        prefixes = getattr(build_model(card_fields["method"], card_fields["architecture"]), "TRAINING_ONLY", ())
        tensors = {key: value for key, value in tensors.items() if not key.startswith(prefixes)} if prefixes else tensors
    if dtype is not None:
        # Storage only (half the download for float16): the loader copies into the float32 network.
        target = getattr(torch, dtype)
        tensors = {key: value.to(target) if value.is_floating_point() else value for key, value in tensors.items()}

    card = dict(recipe.export_card())
    train_config = state["train_config"]
    training = {
        "command": state["command"],
        "steps": state["step"],
        "wall_seconds": round(float(state["wall_seconds"]), 1),
        "world_size": state["world_size"],
        "device": state["device"],
        "seed": train_config["seed"],
        "data": state["data"],
        "weights": weights_kind,
        "stored_dtype": dtype or "as trained",
        "inference_only": inference_only,
        "checkpoint": path.name,
        "config": {k: v for k, v in train_config.items() if k not in ("out_dir", "resume", "progress")},
    }
    training.update(card.pop("training", {}))
    card.update(recipe={"name": state["recipe"]["name"], "config": state["recipe"]["config"]}, training=training)
    card.update(extra_card or {})
    card["name"] = name or card.get("name") or Path(out_dir).name
    card.setdefault("metrics", {})
    return save_model(Path(out_dir), tensors, card)
