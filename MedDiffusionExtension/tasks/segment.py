"""The segmentation task: the threshold, the outputs it writes, and how they are named.

Outputs: `labels`, a uint8 label map whose values come from the card's segments, on the input CT's grid; plus
`probability` (the mean foreground probability over samples) when samples > 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from ..weights import ModelCard
from .request import Request

FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")


def probability_path(labels: Path) -> Path:
    """seg.nii.gz -> seg_probability.nii.gz (next to the label file, same format)."""
    name = labels.name
    for suffix in FILE_SUFFIXES:
        if name.endswith(suffix):
            return labels.with_name(name[: -len(suffix)] + "_probability" + suffix)
    return labels.with_name(name + "_probability")


@dataclass(frozen=True)
class SegmentRequest(Request):
    TASK = "segmentation"
    COMMAND = "segment"

    threshold: float = 0.5  # foreground probability above which a voxel is labelled

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold must be between 0 and 1, got {self.threshold!r}")

    def output_names(self, card: ModelCard) -> list[str]:
        return ["labels"] + (["probability"] if self.samples(card) > 1 else [])

    def output_dtype(self, name: str) -> str:
        return "uint8" if name == "labels" else "float32"

    def output_files(self, card: ModelCard, destination: Path) -> dict[str, Path]:
        files = {"labels": Path(destination)}
        if "probability" in self.output_names(card):
            files["probability"] = probability_path(Path(destination))
        return files

    def cohort_destination(self, out: Path, case_id: str) -> Path:
        return Path(out) / f"{case_id}.nii.gz"

    def run(self, inputs: Mapping[str, Any], loaded, options) -> dict[str, Any]:
        from ..pipelines import segment

        card = loaded.card
        result = segment(image=inputs[self.input_names(card)[0]], loaded=loaded, steps=self.settings.steps,
                         samples=self.samples(card), threshold=float(self.threshold), options=options)
        return {"labels": result.labels, "probability": result.probability} if result.probability is not None \
            else {"labels": result.labels}
