"""Mask autoencoder round trip: how well an SDSeg model's first stage carries each organ (or the binary union).

A latent diffusion segmenter cannot do better than its autoencoder reconstructs, so this is the first number to
look at before training the latent stage. Every test slice's reference label map goes through the model's mask
encoder (posterior mode) and decoder, and the arg-max is compared with the reference on the model grid (the cached
training slices, no augmentation). Per organ: Dice over all voxels of the split pooled (an organ present on few
slices is not averaged with empty slices), and the number of slices it appears on. A binary (union) model's decoded
foreground probability is thresholded at 0.5, as the pipeline does.

    python -m training roundtrip --model runs/sdseg-organs-onehot-ae/model --data-root data/btcv_phantoms_v2 \
        --cache-dir cache/sdseg-v2 --out docs/evaluation/sdseg-organs/roundtrip-onehot.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.models import build_model
from MedDiffusionExtension.pipelines.common import model_grid
from MedDiffusionExtension.weights import load_model

from ..cli import Command
from ..data.layouts import read_btcv
from ..data.slices import SegmentationSlices
from ..data.splits import btcv_split


def round_trip_counts(model, loader) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class 0..K: (intersection, predicted, reference voxels, slices present) summed over `loader`."""
    classes = model.codec.classes + 1
    intersection, predicted, reference, present = (np.zeros(classes, np.int64) for _ in range(4))
    with torch.no_grad():
        for batch in loader:
            target = batch["classes"] if "classes" in batch else batch["mask"].long()
            probabilities = model.decode_probabilities(model.encode_labels(target, sample=False))
            decoded = probabilities.argmax(dim=1) if probabilities.shape[1] > 1 else (probabilities[:, 0] >= 0.5).long()
            target = target[:, 0]
            for c in range(classes):
                hit, ref = decoded == c, target == c
                intersection[c] += int((hit & ref).sum())
                predicted[c] += int(hit.sum())
                reference[c] += int(ref.sum())
                present[c] += int(ref.flatten(1).any(dim=1).sum())
    return intersection, predicted, reference, present


def round_trip(model_dir: str, data_root: Path, cache_dir: Path, split: str = "test", batch_size: int = 8) -> dict:
    loaded = load_model(model_dir)
    card = loaded.card
    encoding = (card.architecture.get("mask_encoding") or {}).get("kind", "binary")
    if card.method != "sdseg":
        raise InputError(f"{card.name!r} is not an SDSeg model (method {card.method!r}): only SDSeg has a mask autoencoder")
    model = build_model("sdseg", card.architecture)
    missing, _ = model.load_state_dict(loaded.tensors, strict=False)
    if any(key.startswith("autoencoder.encoder.") for key in missing):
        raise InputError(f"{model_dir} has no mask encoder (an inference-only export); use the training export")
    model.eval()
    train, test = btcv_split(read_btcv(Path(data_root)))
    organs = None if encoding == "binary" else [segment.label for segment in card.segments]
    slices = SegmentationSlices({"test": test, "train": train, "all": train + test}[split], model_grid(card),
                                Path(cache_dir), tuple(card.normalization.window), classes=organs)
    loader = torch.utils.data.DataLoader(slices, batch_size=batch_size, shuffle=False)
    intersection, predicted, reference, present = round_trip_counts(model, loader)
    rows = {}
    for c, segment in enumerate(card.segments, start=1):
        denominator = predicted[c] + reference[c]
        rows[segment.key] = {"label": segment.label, "dice": float(2 * intersection[c] / denominator) if denominator else None,
                             "slices": int(present[c]), "reference_voxels": int(reference[c])}
    scored = [row["dice"] for row in rows.values() if row["dice"] is not None]
    return {"model": card.name, "model_dir": str(model_dir), "mask_encoding": encoding, "split": split,
            "slices": len(slices), "organs": rows, "mean_dice": float(np.mean(scored)) if scored else None}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder of an SDSeg export that keeps its mask encoder")
    parser.add_argument("--data-root", required=True, type=Path, help="BTCV-layout dataset")
    parser.add_argument("--cache-dir", required=True, type=Path, help="the slice cache the model was trained from")
    parser.add_argument("--split", default="test", choices=["test", "train", "all"])
    parser.add_argument("--out", type=Path, help="JSON file for the results (printed in any case)")


def _run(args: argparse.Namespace) -> int:
    results = round_trip(args.model, args.data_root, args.cache_dir, args.split)
    for key, row in results["organs"].items():
        dice = "—" if row["dice"] is None else f"{row['dice']:.3f}"
        print(f"{key:24s} Dice {dice}  ({row['slices']} slices)")
    print(f"mean over organs present: {results['mean_dice']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


COMMAND = Command("per-organ (or union) Dice of an SDSeg model's mask autoencoder round trip",
                  _add_arguments, _run)
