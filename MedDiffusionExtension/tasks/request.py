"""What every task request shares: run settings, the model choice, validation against the card, the job form the
runner reads, and the one read -> pipeline -> write sequence every front end uses.

Torch-free until `run`/`execute` are called, so GUIs can build and check requests in their own process.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional

from ..errors import InputError
from ..precision import AUTO_BATCH_SIZE, PRECISIONS
from ..weights import ModelCard, ModelRegistry
from .methods import METHODS, Method, method_for

# Exit codes of the CLI and the runner; a cohort with some failed cases ends with EXIT_SOME_FAILED.
EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_SOME_FAILED, EXIT_CANCELLED = 0, 1, 2, 3, 130


def _whole(name: str, value: Any, minimum: Optional[int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" of at least {minimum}" if minimum is not None else ""
        raise InputError(f"{name} must be a whole number{bound}, got {value!r}")
    return value


@dataclass(frozen=True)
class RunSettings:
    """How to run a model, whatever the task (names as the CLI flags without dashes)."""

    steps: Optional[int] = None  # None: the card's default
    samples: int = 1
    seed: int = 0
    device: str = "auto"
    batch_size: int | str = AUTO_BATCH_SIZE  # slices per batch, or "auto": the card's, else pipelines/batch_size.py
    precision: str = "auto"
    compile: bool = False  # torch.compile the networks (first batch pays the compile time)

    def __post_init__(self):
        if self.steps is not None:
            _whole("steps", self.steps, 1)
        _whole("samples", self.samples, 1)
        _whole("seed", self.seed, None)
        if self.batch_size != AUTO_BATCH_SIZE:
            _whole("batch_size", self.batch_size, 1)
        if not isinstance(self.device, str) or not self.device.strip():
            raise InputError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.compile, bool):
            raise InputError(f"compile must be true or false, got {self.compile!r}")

    def run_options(self, progress=None, cancel=None, model=None):
        """The engine's options with `auto` resolved for `model` (a LoadedModel) on this device: the precision (bf16
        on CPUs with native bf16 unless its card forbids it) and the batch size (its card's, else the measured rule
        by its size). Without a model: bf16 allowed, and the rule's batch for a model of unknown size."""
        from ..device import inference_precision, resolve_device  # torch: only when a run starts
        from ..pipelines.batch_size import choose_batch_size, parameter_count
        from ..volume.engine import RunOptions

        device = resolve_device(self.device)
        card = model.card if model is not None else None
        precision = inference_precision(device, self.precision, card is None or card.inference.cpu_bf16)
        batch_size = self.batch_size
        if batch_size == AUTO_BATCH_SIZE:
            batch_size = choose_batch_size(card, device, parameter_count(model.tensors) if model is not None else None)
        return RunOptions(device=self.device, batch_size=batch_size, seed=self.seed, progress=progress,
                          cancel=cancel, precision=precision, compile=self.compile)


def choose_model(task: str, model: str = "", method: str = "", registry: Optional[ModelRegistry] = None) -> ModelCard:
    """The card to run: `model` (a name or a model folder), else the default model of `method`, else of the task.

    The default is the card flagged "default", then the first by name; user models override bundled ones by name.
    """
    registry = registry or ModelRegistry()
    if model:
        return registry.find(model, task=task)
    candidates = models_for(task, method, registry)
    if not method:  # the baselines are for evaluation: run one only when asked for by method or name
        candidates = [c for c in candidates if METHODS[c.method].offered]
    if not candidates:
        what = METHODS[method].label if method in METHODS else task
        raise InputError(f"no {what} model is installed; train one (`python -m training train ...`), put it in "
                         "~/.meddiffusion/models, or pass --model FOLDER")
    return candidates[0]


def models_for(task: str, method: str = "", registry: Optional[ModelRegistry] = None) -> list[ModelCard]:
    """Installed, runnable models of `task` (and `method` when given): the default first, then by name."""
    cards = (registry or ModelRegistry()).cards().values()
    runnable = [c for c in cards if c.task == task and c.method in METHODS and METHODS[c.method].runnable
                and (not method or c.method == method)]
    return sorted(runnable, key=lambda c: (not c.is_default, c.name))


def offered_methods(task: str, registry: Optional[ModelRegistry] = None) -> list[Method]:
    """Methods of `task` to show in a menu: offered, runnable, and with at least one installed model."""
    installed = {c.method for c in models_for(task, registry=registry)}
    return [m for m in METHODS.values() if m.task == task and m.offered and m.key in installed]


@dataclass(frozen=True)
class Request:
    """A task to run: which model, how, and the task's own options (in subclasses). Immutable and JSON-able."""

    TASK: ClassVar[str]  # the card task it needs: "translation" or "segmentation"
    COMMAND: ClassVar[str]  # the CLI subcommand and the runner job's "task"

    model: str = ""  # a model name or folder; "": the default model of `method`
    method: str = ""  # "": any method of the task
    settings: RunSettings = field(default_factory=RunSettings)

    # -- the card -------------------------------------------------------------------------------------------------

    def card(self, registry: Optional[ModelRegistry] = None) -> ModelCard:
        """The chosen model's card, after checking this request against it."""
        card = choose_model(self.TASK, self.model, self.method, registry)
        self.check(card)
        return card

    def check(self, card: ModelCard) -> None:
        method = method_for(card.method, self.TASK)
        if method.diffusion and card.sampling is None:
            raise InputError(f"model card of {card.name!r} lacks sampling, which a {method.label} model needs; re-export it")
        steps = self.settings.steps
        if steps is not None and card.sampling is not None and steps > card.sampling.schedule.num_steps:
            raise InputError(f"--steps {steps} exceeds the {card.sampling.schedule.num_steps} timesteps "
                             f"model {card.name!r} was trained with")

    def input_names(self, card: ModelCard) -> tuple[str, ...]:
        return METHODS[card.method].inputs

    def samples(self, card: ModelCard) -> int:
        """Samples actually drawn: a deterministic baseline gives the same answer every time, so one."""
        return self.settings.samples if METHODS[card.method].diffusion else 1

    # -- outputs (subclasses) -------------------------------------------------------------------------------------

    def output_names(self, card: ModelCard) -> list[str]:
        raise NotImplementedError

    def output_dtype(self, name: str) -> str:
        raise NotImplementedError

    def output_segments(self, card: ModelCard, name: str):
        """The card segments a label-map output holds (what a .seg.nrrd file describes); None for other outputs."""
        return None

    def output_files(self, card: ModelCard, destination: Path) -> dict[str, Path]:
        """Output name -> file for the CLI's destination (a folder or a file, as the task defines it)."""
        raise NotImplementedError

    def cohort_destination(self, out: Path, case_id: str) -> Path:
        raise NotImplementedError

    def run(self, inputs: Mapping[str, Any], loaded, options) -> dict[str, Any]:
        """Output name -> Volume, for input Volumes named as `input_names`."""
        raise NotImplementedError

    # -- the runner's job form ------------------------------------------------------------------------------------

    def to_job(self, card: Optional[ModelCard] = None) -> dict[str, Any]:
        """The JSON fields of a runner job (without inputs/outputs); `card` pins the exact model folder."""
        job = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}
        job = {k: list(v) if isinstance(v, tuple) else v for k, v in job.items()}
        job.update(asdict(self.settings), task=self.COMMAND)
        if card is not None:
            job["model"] = str(card.directory)
        return job

    @classmethod
    def from_job(cls, job: Mapping[str, Any]) -> "Request":
        """The request a runner job describes; unknown keys are refused so a typo is not silently ignored."""
        own = {f.name for f in fields(cls)} - {"settings"}
        setting_names = {f.name for f in fields(RunSettings)}
        unknown = set(job) - own - setting_names - {"task", "inputs", "outputs"}
        if unknown:
            raise InputError(f"the job has unknown field(s) {', '.join(sorted(unknown))}")
        settings = RunSettings(**{k: job[k] for k in setting_names if k in job})
        values = {k: job[k] for k in own if k in job}
        for key in ("model", "method"):
            if not isinstance(values.get(key, ""), str):
                raise InputError(f"the job's {key} must be a string, got {values[key]!r}")
        return cls(settings=settings, **cls._job_values(values))

    @classmethod
    def _job_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        return values


def check_not_overwriting(inputs: Mapping[str, Path], outputs: Mapping[str, Path]) -> None:
    resolved = {Path(p).expanduser().resolve() for p in inputs.values()}
    for out in outputs.values():
        if Path(out).expanduser().resolve() in resolved:
            raise InputError(f"output {out} is one of the inputs; choose another output path (inputs are never overwritten)")


def check_files(inputs: Mapping[str, Path], outputs: Mapping[str, Path], overwrite: bool = True,
                series: Optional[str] = None) -> None:
    """Everything about the files that can be refused before a model is loaded or a voxel read: input headers (and
    DICOM series completeness), outputs that are inputs, output locations and kinds, existing outputs."""
    from ..volume.io import check_input_header, check_outputs_writable

    check_not_overwriting(inputs, outputs)
    for path in inputs.values():
        check_input_header(path, series)
    check_outputs_writable(list(outputs.values()), overwrite)


def execute(request: Request, loaded, inputs: Mapping[str, Path], outputs: Mapping[str, Path], options,
            overwrite: bool = True, series: Optional[str] = None) -> list[Path]:
    """Read the inputs, run, and write every output all-or-nothing; returns the written paths.

    `outputs` must name exactly the request's outputs for this model: a front end never gets fewer files than it
    expects, nor files it did not ask for. The output folders are locked for the whole run, so two runs into one
    folder cannot interleave; without `overwrite` an existing output is refused. `series` picks the DICOM series
    of an input folder that holds several.
    """
    from ..volume import read_volume, write_volumes
    from ..volume.io import check_outputs_writable, output_lock

    card = loaded.card
    needed, expected = request.input_names(card), request.output_names(card)
    missing = [n for n in needed if n not in inputs or inputs[n] is None]
    if missing:
        raise InputError(f"{METHODS[card.method].label} needs the input(s) {', '.join(missing)}")
    if set(outputs) != set(expected):
        raise InputError(f"the outputs must be exactly {', '.join(expected)}, got {', '.join(sorted(outputs))}")
    check_segmentation_files(request, card, outputs)
    check_files({n: inputs[n] for n in needed}, outputs, overwrite, series)
    with output_lock(outputs.values()):
        # Checked again under the lock: a run that held it may have just written these files.
        check_outputs_writable(list(outputs.values()), overwrite)
        volumes = {name: read_volume(inputs[name], series) for name in needed}
        results = request.run(volumes, loaded, options)
        if options.cancel is not None:
            options.cancel.raise_if_cancelled()
        if options.progress is not None:
            options.progress(1.0, "writing outputs")
        return write_volumes({outputs[name]: (results[name], request.output_dtype(name), request.output_segments(card, name))
                              for name in expected}, overwrite)


def check_segmentation_files(request: Request, card: ModelCard, outputs: Mapping[str, Path]) -> None:
    """Only a label map can be written as Slicer's segmentation file (.seg.nrrd); refused before any work."""
    from ..volume.segmentation_file import is_segmentation_file

    for name, path in outputs.items():
        if is_segmentation_file(path) and request.output_segments(card, name) is None:
            raise InputError(f"output {name} ({Path(path).name}) cannot be a .seg.nrrd segmentation file, which holds "
                             "label maps only; name it .nrrd or .nii.gz")


def load(request: Request, registry: Optional[ModelRegistry] = None, card: Optional[ModelCard] = None):
    """The request's model (`card` when the caller has chosen it already), checked against it, with verified weights."""
    from ..weights import load_model

    card = request.card(registry) if card is None else card
    return load_model(card.directory, task=request.TASK)


@contextmanager
def warnings_to(report: Callable[[str], None]) -> Iterator[None]:
    """Every warning raised inside (e.g. an input resampled onto the reference grid) goes to `report`, one line each."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_a, **_k: report(" ".join(str(message).split()))
        yield
