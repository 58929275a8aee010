"""The model card: the JSON document that says what a weights file is, how it was made and how well it does.

`read_card` validates the fields inference relies on once, on load, and turns them into typed parts (sampling,
normalization, segments, output range), so that no reader downstream carries its own `dict.get(key, default)`.
Defaults for fields that older cards may lack live here and nowhere else. The free-form rest (training, metrics,
recipe...) stays in `ModelCard.data`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"

# Fields every card must carry; the rest is free-form per method.
REQUIRED_FIELDS = (
    "name", "version", "task", "method", "inputs", "outputs", "normalization", "architecture",
    "training", "metrics", "license", "citation", "sha256",
)
TASKS = ("translation", "segmentation")
NORMALIZATIONS = ("mri_percentile", "ct_window", "none")  # none: voxel values reach the model unchanged
SCHEDULES = ("linear", "scaled_linear", "cosine")
# "v_prediction" is diffusers' name for v; the diffusion core calls it "v" (the card stores the core's name).
PREDICTION_TYPES = ("epsilon", "sample", "v", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
# Cards written before the `geometry` field: the pixel spacing their slices reached the model at, derived from the
# phantom datasets they were trained on (the old engine shrank slices larger than the model to its size):
# BraTS-style MRI 240 mm at 1 mm, BTCV-style CT 409.6 mm at 0.8 mm (512 x 512). A 128-pixel MRI model: 1.875 mm.
LEGACY_TRAINING_FIELDS = {"mri_percentile": (240.0, 1.0), "ct_window": (409.6, 0.8)}
# A card that names no segment gets one generic segment (label 1) in this colour.
DEFAULT_SEGMENT_COLOR = (0.9, 0.4, 0.3)


class CardError(InputError):
    """A card field is missing or malformed; the message names the field and the card."""


def _field(where: str, name: str, value: Any, kind, *, choices=None, positive: bool = False):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CardError(f"model card {where}: {name} must be {kind.__name__}, got {value!r}; re-export the model")
    if choices is not None and value not in choices:
        raise CardError(f"model card {where}: {name} is {value!r}, expected one of {', '.join(choices)}")
    if positive and not value > 0:
        raise CardError(f"model card {where}: {name} must be positive, got {value!r}")
    return value


@dataclass(frozen=True)
class Schedule:
    kind: str
    num_steps: int = 1000
    beta_start: Optional[float] = None  # None: the schedule kind's own default
    beta_end: Optional[float] = None


@dataclass(frozen=True)
class Sampling:
    schedule: Schedule
    prediction_type: str
    steps: int
    eta: float = 0.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    clip_sample: Optional[float] = None
    set_alpha_to_one: bool = False
    # True: the model was trained only for its single step (every training sample at the last timestep), so
    # multi-step DDIM is off its training and scores lower; running it more steps warns.
    single_step_only: bool = False

    @classmethod
    def parse(cls, data: Any, where: str) -> "Sampling":
        _field(where, "sampling", data, dict)
        schedule = _field(where, "sampling.schedule", data.get("schedule"), dict)
        def optional(key):
            return None if schedule.get(key) is None else _field(where, f"sampling.schedule.{key}", schedule[key], float)

        clip = data.get("clip_sample")
        prediction = _field(where, "sampling.prediction_type", data.get("prediction_type"), str, choices=PREDICTION_TYPES)
        return cls(
            schedule=Schedule(
                _field(where, "sampling.schedule.kind", schedule.get("kind"), str, choices=SCHEDULES),
                _field(where, "sampling.schedule.num_steps", schedule.get("num_steps", 1000), int, positive=True),
                optional("beta_start"), optional("beta_end")),
            prediction_type={"v_prediction": "v"}.get(prediction, prediction),
            steps=_field(where, "sampling.steps", data.get("steps"), int, positive=True),
            eta=_field(where, "sampling.eta", data.get("eta", 0.0), float),
            timestep_spacing=_field(where, "sampling.timestep_spacing", data.get("timestep_spacing", "leading"), str,
                                    choices=TIMESTEP_SPACINGS),
            steps_offset=_field(where, "sampling.steps_offset", data.get("steps_offset", 0), int),
            clip_sample=None if clip is None else _field(where, "sampling.clip_sample", clip, float),
            set_alpha_to_one=_field(where, "sampling.set_alpha_to_one", data.get("set_alpha_to_one", False), bool),
            single_step_only=_field(where, "sampling.single_step_only", data.get("single_step_only", False), bool),
        )


@dataclass(frozen=True)
class Normalization:
    """How input intensities reach the model range [-1, 1]: per-volume MRI percentiles or a fixed CT window."""

    kind: str
    lower: float = 0.5  # mri_percentile: foreground percentiles mapped to -1 and 1
    upper: float = 99.5
    window: tuple[float, float] = (-175.0, 250.0)  # ct_window: HU mapped to -1 and 1

    @classmethod
    def parse(cls, data: Any, where: str) -> "Normalization":
        _field(where, "normalization", data, dict)
        kind = _field(where, "normalization.kind", data.get("kind"), str, choices=NORMALIZATIONS)
        window = data.get("window", cls.window)
        if not (isinstance(window, (list, tuple)) and len(window) == 2 and all(isinstance(v, (int, float)) for v in window)
                and window[0] < window[1]):
            raise CardError(f"model card {where}: normalization.window must be [low, high] HU with low < high, got {window!r}")
        return cls(kind, _field(where, "normalization.lower", data.get("lower", 0.5), float),
                   _field(where, "normalization.upper", data.get("upper", 99.5), float), (float(window[0]), float(window[1])))


@dataclass(frozen=True)
class OutputRange:
    """Intensity outputs leave the model in [-1, 1] and are written in these display units (synthetic MR has no
    physical unit); `to_unit` maps them back to [0, 1], the scale metrics are computed on."""

    low: float = 0.0
    high: float = 1000.0

    def from_model(self, values, is_spread: bool = False):
        half = (self.high - self.low) / 2.0
        return values * half if is_spread else (values.clip(-1.0, 1.0) + 1.0) * half + self.low

    def to_unit(self, values, is_spread: bool = False):
        return values / (self.high - self.low) if is_spread else (values - self.low) / (self.high - self.low)


# Slicer's terminology contexts that hold these codes (a segment's TerminologyEntry names them, so that Slicer shows
# the organ's standard name and can export it to DICOM SEG): SNOMED CT anatomical structures and their laterality.
SEGMENTATION_TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_TERMINOLOGY_CONTEXT = "Anatomic codes - DICOM master list"
TERMINOLOGY_FIELDS = ("category", "type", "type_modifier")
# Separators of Slicer's serialized terminology entry (and of .seg.nrrd tags): a code must not contain them.
TERMINOLOGY_SEPARATORS = "~^|"
SEGMENT_KEY = re.compile(r"[a-z0-9_]*[a-z][a-z0-9_]*")  # all digits would read as a label number


def segment_key(name: str) -> str:
    """The command-line and file-name key of a segment name: "Right kidney" -> "right_kidney"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass(frozen=True)
class Code:
    """One coded concept: (coding scheme, code value, code meaning), e.g. ("SCT", "10200004", "Liver")."""

    scheme: str
    value: str
    meaning: str

    @classmethod
    def parse(cls, data: Any, where: str, name: str) -> "Code":
        valid = isinstance(data, (list, tuple)) and len(data) == 3 and all(isinstance(v, str) and v.strip() for v in data)
        if not valid:
            raise CardError(f"model card {where}: {name} must be [scheme, value, meaning] (three non-empty strings), "
                            f"got {data!r}")
        if any(ch in v for v in data for ch in TERMINOLOGY_SEPARATORS):
            raise CardError(f"model card {where}: {name} must not contain ~ ^ or | (Slicer's separators), got {data!r}")
        return cls(*data)

    def as_list(self) -> list[str]:
        return [self.scheme, self.value, self.meaning]


@dataclass(frozen=True)
class Terminology:
    """What a segment is, in DICOM segmentation terms: category, type and an optional type modifier (laterality)."""

    category: Code
    type: Code
    type_modifier: Optional[Code] = None

    @classmethod
    def parse(cls, data: Any, where: str, name: str) -> "Terminology":
        _field(where, name, data, dict)
        unknown = sorted(set(data) - set(TERMINOLOGY_FIELDS))
        if unknown:
            raise CardError(f"model card {where}: {name} has unknown field(s) {', '.join(unknown)}; "
                            f"expected {', '.join(TERMINOLOGY_FIELDS)}")
        modifier = data.get("type_modifier")
        return cls(Code.parse(data.get("category"), where, f"{name}.category"),
                   Code.parse(data.get("type"), where, f"{name}.type"),
                   None if modifier is None else Code.parse(modifier, where, f"{name}.type_modifier"))

    def slicer_entry(self) -> str:
        """The segment tag "TerminologyEntry" as 3D Slicer serializes it: context~category~type~type modifier~
        anatomic context~anatomic region~anatomic region modifier, each code "scheme^value^meaning"."""
        codes = [self.category, self.type, self.type_modifier]
        parts = ["^".join(code.as_list()) if code is not None else "^^" for code in codes]
        return "~".join([SEGMENTATION_TERMINOLOGY_CONTEXT, *parts, ANATOMIC_TERMINOLOGY_CONTEXT, "^^", "^^"])


@dataclass(frozen=True)
class Segment:
    name: str
    label: int
    color: tuple[float, float, float]
    key: str = ""  # "": derived from the name (segment_key)
    terminology: Optional[Terminology] = None

    def __post_init__(self):
        if not self.key:
            object.__setattr__(self, "key", segment_key(self.name))

    @classmethod
    def parse(cls, data: Any, where: str, index: int) -> "Segment":
        name = f"segments[{index}]"
        _field(where, name, data, dict)
        color = data.get("color", DEFAULT_SEGMENT_COLOR)
        numbers = isinstance(color, (list, tuple)) and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in color)
        if not (numbers and len(color) == 3):
            raise CardError(f"model card {where}: {name}.color must be three numbers in 0..1, got {color!r}")
        label = _field(where, f"{name}.label", data.get("label"), int)
        if not 1 <= label <= 255:
            raise CardError(f"model card {where}: {name}.label must be 1..255 (0 is background), got {label}")
        segment_name = _field(where, f"{name}.name", data.get("name"), str)
        key = _field(where, f"{name}.key", data.get("key", segment_key(segment_name)), str)
        if not SEGMENT_KEY.fullmatch(key):
            raise CardError(f"model card {where}: {name}.key must be lowercase letters, digits and _ with at least one "
                            f"letter (it names files and --organs), got {key!r}")
        terminology = data.get("terminology")
        terminology = None if terminology is None else Terminology.parse(terminology, where, f"{name}.terminology")
        return cls(segment_name, label, tuple(float(c) for c in color), key, terminology)


def _names(data: Any, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(data, list) or not data:
        raise CardError(f"model card {where}: {key} must be a non-empty list of {{\"name\": ...}} objects")
    names = tuple(_field(where, f"{key}[{i}].name", item.get("name") if isinstance(item, dict) else None, str)
                  for i, item in enumerate(data))
    if len(set(names)) != len(names):
        raise CardError(f"model card {where}: {key} repeats a name ({', '.join(names)})")
    return names


@dataclass(frozen=True)
class Geometry:
    """The voxel geometry a model was trained at: slices are resampled in-plane to `in_plane_spacing_mm` before
    they reach it (None: the legacy fit by matrix size, tests only); `slice_thickness_mm` is the range of slice
    thicknesses it saw (informative: the engine works slice by slice); `window_overlap` between tiles."""

    in_plane_spacing_mm: Optional[float]
    slice_thickness_mm: Optional[tuple[float, float]] = None
    window_overlap: float = 0.5  # nnU-Net's; at 0.25 the floored Gaussian weights of window corners let edge effects through
    derived: bool = False  # True: the card predates the field and the spacing was derived (LEGACY_TRAINING_FIELDS)

    @classmethod
    def parse(cls, data: Any, where: str, normalization: "Normalization", image_size: Optional[int]) -> "Geometry":
        if data is None:
            return cls.legacy_default(normalization, image_size)
        _field(where, "geometry", data, dict)
        spacing = data.get("in_plane_spacing_mm")
        if spacing is not None:
            spacing = _field(where, "geometry.in_plane_spacing_mm", spacing, float, positive=True)
        thickness = data.get("slice_thickness_mm")
        if thickness is not None:
            valid = (isinstance(thickness, (list, tuple)) and len(thickness) == 2
                     and all(isinstance(v, (int, float)) and v > 0 for v in thickness) and thickness[0] <= thickness[1])
            if not valid:
                raise CardError(f"model card {where}: geometry.slice_thickness_mm must be [min, max] mm, got {thickness!r}")
            thickness = (float(thickness[0]), float(thickness[1]))
        overlap = _field(where, "geometry.window_overlap", data.get("window_overlap", 0.5), float)
        if not 0.0 <= overlap < 1.0:
            raise CardError(f"model card {where}: geometry.window_overlap must be in [0, 1), got {overlap}")
        return cls(spacing, thickness, overlap)

    @classmethod
    def legacy_default(cls, normalization: "Normalization", image_size: Optional[int]) -> "Geometry":
        if image_size is None or normalization.kind not in LEGACY_TRAINING_FIELDS:
            return cls(None, derived=True)
        field_mm, native_mm = LEGACY_TRAINING_FIELDS[normalization.kind]
        return cls(round(max(native_mm, field_mm / image_size), 4), derived=True)

    def to_dict(self) -> dict[str, Any]:
        thickness = None if self.slice_thickness_mm is None else list(self.slice_thickness_mm)
        return {"in_plane_spacing_mm": self.in_plane_spacing_mm, "slice_thickness_mm": thickness,
                "window_overlap": self.window_overlap}


@dataclass(frozen=True)
class InputRequirements:
    """How the inputs must be prepared to look like the training data: skull-stripped (brain only, zero background,
    as BraTS) and co-registered (the inputs of one case aligned in patient space), with a sentence for people.

    Cards without the field: translation models were trained on BraTS-style data (stripped and co-registered),
    segmentation models on whole CT (neither applies)."""

    skull_stripped: bool = False
    co_registered: bool = False
    note: str = ""

    @classmethod
    def default_for(cls, task: str) -> "InputRequirements":
        if task == "translation":
            return cls(True, True, "skull-stripped brain MRI, inputs co-registered (BraTS-style)")
        return cls()

    @classmethod
    def parse(cls, data: Any, where: str, task: str) -> "InputRequirements":
        default = cls.default_for(task)
        if data is None:
            return default
        _field(where, "input_requirements", data, dict)
        return cls(
            _field(where, "input_requirements.skull_stripped", data.get("skull_stripped", default.skull_stripped), bool),
            _field(where, "input_requirements.co_registered", data.get("co_registered", default.co_registered), bool),
            _field(where, "input_requirements.note", data.get("note", default.note), str))


# Device types an inference.batch_size entry may name (torch.device(...).type).
BATCH_DEVICE_TYPES = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class Inference:
    """How to run the model fast without losing quality. `cpu_bf16`: whether `--precision auto` may use bf16 on a
    CPU with native bf16 (false when the evaluation's quality guard found bf16 costs more than the project allows);
    `batch_size`: slices per batch by device type, where measured for this model (else pipelines/batch_size.py's
    rule). Cards without the field: bf16 allowed, the rule's batch sizes."""

    cpu_bf16: bool = True
    batch_size: tuple[tuple[str, int], ...] = ()  # (device type, slices) pairs

    def batch_size_for(self, device_type: str) -> Optional[int]:
        return dict(self.batch_size).get(device_type)

    @classmethod
    def parse(cls, data: Any, where: str) -> "Inference":
        if data is None:
            return cls()
        _field(where, "inference", data, dict)
        unknown = sorted(set(data) - {"cpu_bf16", "batch_size"})
        if unknown:  # a new section: a misspelt key would otherwise be silently ignored
            raise CardError(f"model card {where}: inference has unknown field(s) {', '.join(unknown)}; "
                            "expected cpu_bf16, batch_size")
        sizes = _field(where, "inference.batch_size", data.get("batch_size", {}), dict)
        for device_type, size in sizes.items():
            if device_type not in BATCH_DEVICE_TYPES:
                raise CardError(f"model card {where}: inference.batch_size names {device_type!r}, expected one of "
                                f"{', '.join(BATCH_DEVICE_TYPES)}")
            _field(where, f"inference.batch_size.{device_type}", size, int, positive=True)
        return cls(_field(where, "inference.cpu_bf16", data.get("cpu_bf16", True), bool), tuple(sorted(sizes.items())))


@dataclass(frozen=True)
class ModelCard:
    """A validated card, its typed parts, and the folder it was read from."""

    data: dict[str, Any]
    directory: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    normalization: Normalization
    sampling: Optional[Sampling]  # None for the non-diffusion baselines
    segments: tuple[Segment, ...]  # segmentation cards: one per foreground class; () for translation
    output_range: OutputRange
    image_size: Optional[int]
    geometry: Geometry
    input_requirements: InputRequirements = InputRequirements()
    inference: Inference = Inference()

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def version(self) -> str:
        return self.data["version"]

    @property
    def method(self) -> str:
        return self.data["method"]

    @property
    def task(self) -> str:
        return self.data["task"]

    @property
    def is_default(self) -> bool:
        return bool(self.data.get("default", False))

    @property
    def architecture(self) -> dict[str, Any]:
        return self.data["architecture"]

    @property
    def weights_path(self) -> Path:
        return self.directory / self.data.get("weights", WEIGHTS_FILE)

    def summary(self) -> str:
        """One line for `models list`."""
        return f"{self.name:<24} {self.version:<8} {self.method:<6} {','.join(self.input_names)} -> {','.join(self.output_names)}"


def validate_card(data: Any, where: Path) -> None:
    parse_card(data, Path(where).parent)


def parse_card(data: Any, directory: Path, where: Optional[str] = None) -> ModelCard:
    where = where or str(Path(directory) / CARD_FILE)
    if not isinstance(data, dict):
        raise CardError(f"{where} is not a model card (expected a JSON object); re-export the model")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise CardError(f"model card {where} lacks {', '.join(missing)}; re-export the model with `python -m training export`")
    for key in ("name", "version", "method", "sha256"):
        _field(where, key, data[key], str)
    _field(where, "task", data["task"], str, choices=TASKS)
    architecture = _field(where, "architecture", data["architecture"], dict)
    image_size = architecture.get("image_size")
    if image_size is not None:
        _field(where, "architecture.image_size", image_size, int, positive=True)
    outputs = _names(data["outputs"], where, "outputs")
    segments: tuple[Segment, ...] = ()
    if data["task"] == "segmentation":
        raw = data.get("segments") or [{"name": outputs[0], "label": 1, "color": list(DEFAULT_SEGMENT_COLOR)}]
        if not isinstance(raw, list):
            raise CardError(f"model card {where}: segments must be a list")
        segments = tuple(Segment.parse(item, where, i) for i, item in enumerate(raw))
        for what, values in (("a label value", [s.label for s in segments]), ("a key", [s.key for s in segments]),
                             ("a name", [s.name.lower() for s in segments])):
            if len(set(values)) != len(values):
                raise CardError(f"model card {where}: two segments share {what} ({', '.join(map(str, values))})")
    # Diffusion models need a sampler; the plain UNet baselines ("cunet", "segunet") have none.
    sampling = Sampling.parse(data["sampling"], where) if "sampling" in data else None
    normalization = Normalization.parse(data["normalization"], where)
    geometry = Geometry.parse(data.get("geometry"), where, normalization, image_size)
    return ModelCard(data, Path(directory), _names(data["inputs"], where, "inputs"), outputs, normalization, sampling,
                     segments, OutputRange(), image_size, geometry,
                     input_requirements=InputRequirements.parse(data.get("input_requirements"), where, data["task"]),
                     inference=Inference.parse(data.get("inference"), where))


def read_card(directory: Path) -> ModelCard:
    path = Path(directory) / CARD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CardError(f"no {CARD_FILE} in {directory}; a model folder holds {WEIGHTS_FILE} and {CARD_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    return parse_card(data, Path(directory), str(path))
