"""The translation task: which contrasts to synthesize, the outputs it writes, and how they are named.

Outputs: one volume per target (`t1c`, `t2f`, ...) on the reference input's grid, in the card's display units,
plus `<target>_std` (per-voxel standard deviation over samples, the model's uncertainty) when samples > 1.

Before the model runs, inputs are compared with the card's input requirements (an input that is clearly not
skull-stripped for a model trained on stripped brains is warned about), and with `register` every input after the
first is rigidly registered to it (the transform is reported as a warning line; the files are never changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from ..weights import ModelCard
from .request import Request

SPREAD_SUFFIX = "_std"


def parse_targets(text: str) -> tuple[str, ...]:
    """"t1c, t2f" -> ("t1c", "t2f"); an empty list means every output of the model."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


@dataclass(frozen=True)
class TranslateRequest(Request):
    TASK = "translation"
    COMMAND = "translate"

    targets: tuple[str, ...] = ()  # model outputs to synthesize; (): all of them
    per_volume_representation: bool = False  # CDM: one target representation for the whole volume
    register: bool = False  # rigidly register every input after the first (T2) to the first (T1) before the run

    def __post_init__(self):
        if isinstance(self.targets, str) or not all(isinstance(t, str) and t for t in self.targets):
            raise InputError(f"targets must be a list of output names such as t1c, got {self.targets!r}")
        # A repeated target would be computed twice and written over itself.
        object.__setattr__(self, "targets", tuple(dict.fromkeys(self.targets)))
        if not isinstance(self.register, bool):
            raise InputError(f"register must be true or false, got {self.register!r}")

    def check(self, card: ModelCard) -> None:
        super().check(card)
        unknown = [t for t in self.targets if t not in card.output_names]
        if unknown:
            raise InputError(f"model {card.name!r} cannot synthesize {', '.join(unknown)}; "
                             f"it makes {', '.join(card.output_names)}")
        if self.register and len(self.input_names(card)) < 2:
            raise InputError(f"model {card.name!r} takes one input: there is nothing to register (drop --register)")

    def chosen_targets(self, card: ModelCard) -> list[str]:
        return list(self.targets or card.output_names)

    def output_names(self, card: ModelCard) -> list[str]:
        targets = self.chosen_targets(card)
        return targets + ([t + SPREAD_SUFFIX for t in targets] if self.samples(card) > 1 else [])

    def output_dtype(self, name: str) -> str:
        return "float32"

    def output_files(self, card: ModelCard, destination: Path) -> dict[str, Path]:
        return {name: Path(destination) / f"{name}.nii.gz" for name in self.output_names(card)}

    def cohort_destination(self, out: Path, case_id: str) -> Path:
        return Path(out) / case_id

    def prepare_inputs(self, inputs: Mapping[str, Any], card: ModelCard, options) -> list[Any]:
        """The input volumes in the card's order, checked against its input requirements (warnings) and, with
        `register`, the later ones registered to the first and resampled onto its grid. Torch-free."""
        from ..volume import validate_volume
        from ..volume.checks import warn_if_not_skull_stripped
        from ..volume.register import register_to_reference

        names = self.input_names(card)
        volumes = [inputs[name] for name in names]
        for volume, name in zip(volumes, names):
            validate_volume(volume, name.upper())
        requirements = card.input_requirements
        if requirements.skull_stripped:
            warn_if_not_skull_stripped({n.upper(): v for n, v in zip(names, volumes)}, card.name, requirements.note)
        if self.register:
            volumes[1:] = [register_to_reference(volume, volumes[0], name.upper(), names[0].upper(), options.progress,
                                                 options.cancel) for volume, name in zip(volumes[1:], names[1:])]
        return volumes

    def run(self, inputs: Mapping[str, Any], loaded, options) -> dict[str, Any]:
        from ..pipelines import translate

        card = loaded.card
        return translate(inputs=self.prepare_inputs(inputs, card, options), loaded=loaded,
                         targets=self.chosen_targets(card), steps=self.settings.steps, samples=self.samples(card),
                         options=options, per_volume_representation=self.per_volume_representation)

    @classmethod
    def _job_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        targets = values.get("targets") or ()
        if not isinstance(targets, (list, tuple)):
            raise InputError(f"the job's targets must be a list of output names, got {targets!r}")
        per_volume = bool(values.get("per_volume_representation", False))
        if not isinstance(values.get("register", False), bool):
            raise InputError(f"the job's register must be true or false, got {values['register']!r}")
        return dict(values, targets=tuple(targets), per_volume_representation=per_volume)


def is_spread(name: str) -> bool:
    return name.endswith(SPREAD_SUFFIX)


def target_of(name: str) -> str:
    return name[: -len(SPREAD_SUFFIX)] if is_spread(name) else name
