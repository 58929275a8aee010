"""The translation task: which contrasts to synthesize, the outputs it writes, and how they are named.

Outputs: one volume per target (`t1c`, `t2f`, `t2w`, ...) on the reference input's grid, in the card's display
units, plus `<target>_std` (per-voxel standard deviation over samples, the model's uncertainty) when samples > 1,
and with `save_mask` (methods with a mask-guided refiner: EDTS-Trans) `<target>_mask`: the weight M in [0, 1] with
which the refiner's synthesis entered the output at each voxel (the rest, 1 - M, is the regression's).

The inputs are the card's (a subset of its method's, in the method's order: the plain UNet baseline T1 -> T2 takes
T1 alone where CDM's takes T1 and T2).

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
from .methods import METHODS
from .request import Request

SPREAD_SUFFIX = "_std"
MASK_SUFFIX = "_mask"


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
    # Mask-guided refiners (EDTS-Trans): also write the mask; start the refiner from the regression noised to this
    # fraction of the chain (1: from pure noise, all steps); refine every slice instead of skipping untextured ones.
    save_mask: bool = False
    refine_strength: float = 1.0
    refine_every_slice: bool = False

    def __post_init__(self):
        if isinstance(self.targets, str) or not all(isinstance(t, str) and t for t in self.targets):
            raise InputError(f"targets must be a list of output names such as t1c, got {self.targets!r}")
        # A repeated target would be computed twice and written over itself.
        object.__setattr__(self, "targets", tuple(dict.fromkeys(self.targets)))
        for name in ("register", "save_mask", "refine_every_slice"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        strength = self.refine_strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
            raise InputError(f"refine strength must be a number in (0, 1] (1: sample from pure noise), got {strength!r}")

    def check(self, card: ModelCard) -> None:
        super().check(card)
        unknown = [t for t in self.targets if t not in card.output_names]
        if unknown:
            raise InputError(f"model {card.name!r} cannot synthesize {', '.join(unknown)}; "
                             f"it makes {', '.join(card.output_names)}")
        if self.register and len(self.input_names(card)) < 2:
            raise InputError(f"model {card.name!r} takes one input: there is nothing to register (drop --register)")
        method = METHODS[card.method]
        refiner_options = [flag for flag, used in (("--save-mask", self.save_mask),
                                                   ("--refine-strength", self.refine_strength != 1.0),
                                                   ("--refine-every-slice", self.refine_every_slice)) if used]
        if refiner_options and not method.mask_refiner:
            raise InputError(f"{', '.join(refiner_options)} applies to models with a mask-guided refiner "
                             f"(EDTS-Trans); model {card.name!r} is {method.label}")

    def input_names(self, card: ModelCard) -> tuple[str, ...]:
        """The card's inputs, which must be the first of its method's inputs in order (T1, or T1 and T2)."""
        names, allowed = tuple(card.input_names), METHODS[card.method].inputs
        if not names or names != allowed[:len(names)]:
            raise InputError(f"model card of {card.name!r} lists the inputs {', '.join(names) or 'none'}; a "
                             f"{METHODS[card.method].label} model takes {', '.join(allowed)}; re-export it")
        return names

    def chosen_targets(self, card: ModelCard) -> list[str]:
        return list(self.targets or card.output_names)

    def output_names(self, card: ModelCard) -> list[str]:
        targets = self.chosen_targets(card)
        return (targets + ([t + SPREAD_SUFFIX for t in targets] if self.samples(card) > 1 else [])
                + ([t + MASK_SUFFIX for t in targets] if self.save_mask else []))

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
                         options=options, save_mask=self.save_mask, per_volume_representation=self.per_volume_representation,
                         refine_strength=self.refine_strength, refine_every_slice=self.refine_every_slice)

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


def is_mask(name: str) -> bool:
    return name.endswith(MASK_SUFFIX)


def target_of(name: str) -> str:
    """The target an output belongs to: "t1c" for t1c, t1c_std and t1c_mask."""
    for suffix in (SPREAD_SUFFIX, MASK_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
