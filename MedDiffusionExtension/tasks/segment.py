"""The segmentation task: the threshold, the organs to keep, the outputs it writes, and how they are named.

Outputs: `labels`, a uint8 label map whose values come from the card's segments, on the input CT's grid (written
as Slicer's segmentation file when its name ends in .seg.nrrd); plus, when samples > 1, the mean probability over
samples: `probability` (the foreground) for a one-segment model, or `probability_<key>` for each kept organ of a
multi-organ model, one 3D volume per organ on the CT's grid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import InputError
from ..weights import ModelCard
from .request import Request

PROBABILITY = "probability"
SEGMENTATION_FILE = ".seg.nrrd"  # Slicer's segmentation file: its probability volumes are plain .nrrd
FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")

Organ = Union[str, int]  # a segment key or name (any case), or its label value


def probability_path(labels: Path, key: str = "") -> Path:
    """seg.nii.gz -> seg_probability.nii.gz, or seg_probability_liver.nii.gz for one organ (next to the label file,
    same format; a .seg.nrrd's probabilities are .nrrd volumes)."""
    name = labels.name
    tail = "_probability" + (f"_{key}" if key else "")
    if name.lower().endswith(SEGMENTATION_FILE):
        return labels.with_name(name[: -len(SEGMENTATION_FILE)] + tail + ".nrrd")
    for suffix in FILE_SUFFIXES:
        if name.endswith(suffix):
            return labels.with_name(name[: -len(suffix)] + tail + suffix)
    return labels.with_name(name + tail)


def parse_organs(text: str) -> tuple[Organ, ...]:
    """"liver, spleen, 6" -> ("liver", "spleen", 6): keys or names, and label numbers as numbers."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    return tuple(int(item) if item.isdigit() else item for item in items)


@dataclass(frozen=True)
class SegmentRequest(Request):
    TASK = "segmentation"
    COMMAND = "segment"

    threshold: float = 0.5  # foreground probability above which a voxel is labelled (one-segment models)
    organs: tuple[Organ, ...] = ()  # segments to keep, by key, name or label value; (): all of the card's
    body_only: bool = True  # background outside the patient's body (an arm, the table); False: wherever the model says
    keep_far_islands: bool = False  # keep labelled regions far along the body axis from the organs (volume/islands.py)

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold must be between 0 and 1, got {self.threshold!r}")
        valid = not isinstance(self.organs, (str, bytes)) and all(
            (isinstance(o, str) and o.strip()) or (isinstance(o, int) and not isinstance(o, bool)) for o in self.organs)
        if not valid:
            raise InputError(f"organs must be a list of organ keys, names or label numbers such as liver, got {self.organs!r}")
        for name in ("body_only", "keep_far_islands"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "organs", tuple(dict.fromkeys(self.organs)))  # an organ named twice is kept once

    # -- the organs -------------------------------------------------------------------------------------------------

    def check(self, card: ModelCard) -> None:
        super().check(card)
        self.kept_segments(card)

    def kept_segments(self, card: ModelCard) -> list:
        """The card's segments this request keeps, in the card's order; InputError naming an organ the model lacks."""
        if not self.organs:
            return list(card.segments)
        chosen = set()
        for organ in self.organs:
            if isinstance(organ, str) and organ.strip().isdigit():  # "6" as a job or panel may send it: a label
                organ = int(organ)
            found = [s for s in card.segments if s.label == organ] if isinstance(organ, int) else \
                [s for s in card.segments if organ.strip().lower() in (s.key, s.name.lower())]
            if not found:
                keys = ", ".join(s.key for s in card.segments)
                labels = ", ".join(str(s.label) for s in card.segments)
                raise InputError(f"model {card.name!r} does not segment {organ!r}; its organs are {keys} "
                                 f"(or their label values {labels})")
            chosen.add(found[0].label)
        return [s for s in card.segments if s.label in chosen]

    def organ_labels(self, card: ModelCard) -> Optional[list[int]]:
        """The label values to keep, as the pipeline takes them (None: all)."""
        return [s.label for s in self.kept_segments(card)] if self.organs else None

    # -- outputs ----------------------------------------------------------------------------------------------------

    def probability_names(self, card: ModelCard) -> dict[str, Any]:
        """Output name -> its segment, for the probability volumes this request writes (none for one sample)."""
        if self.samples(card) <= 1:
            return {}
        if len(card.segments) == 1:
            return {PROBABILITY: card.segments[0]}
        return {f"{PROBABILITY}_{s.key}": s for s in self.kept_segments(card)}

    def output_names(self, card: ModelCard) -> list[str]:
        return ["labels"] + list(self.probability_names(card))

    def output_dtype(self, name: str) -> str:
        return "uint8" if name == "labels" else "float32"

    def output_segments(self, card: ModelCard, name: str):
        return self.kept_segments(card) if name == "labels" else None

    def output_files(self, card: ModelCard, destination: Path) -> dict[str, Path]:
        files = {"labels": Path(destination)}
        for name, segment in self.probability_names(card).items():
            files[name] = probability_path(Path(destination), "" if name == PROBABILITY else segment.key)
        return files

    def cohort_destination(self, out: Path, case_id: str) -> Path:
        return Path(out) / f"{case_id}.nii.gz"

    def run(self, inputs: Mapping[str, Any], loaded, options) -> dict[str, Any]:
        from ..pipelines import segment as segment_volume

        card = loaded.card
        image = inputs[self.input_names(card)[0]]
        if card.normalization.kind == "ct_window":
            from ..volume.hounsfield import warn_if_not_hounsfield

            warn_if_not_hounsfield(image, "the CT", card.name)
        steps = self.settings.steps
        if steps and steps > 1 and card.sampling is not None and card.sampling.single_step_only:
            warnings.warn(f"{card.name} {card.version} was trained for its single step only: {steps}-step DDIM "
                          "runs timesteps it never saw and scores far lower, down to empty masks; run it with 1 step")
        result = segment_volume(image=image, loaded=loaded, steps=self.settings.steps,
                         samples=self.samples(card), threshold=float(self.threshold), options=options,
                         organs=self.organ_labels(card), body_only=self.body_only,
                         keep_far_islands=self.keep_far_islands)
        outputs = {"labels": result.labels}
        for name, organ in self.probability_names(card).items():
            outputs[name] = result.probabilities[organ.name]
        return outputs

    @classmethod
    def _job_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        organs = values.get("organs") or ()
        if not isinstance(organs, (list, tuple)):
            raise InputError(f"the job's organs must be a list of organ keys or label numbers, got {organs!r}")
        return dict(values, organs=tuple(organs))
