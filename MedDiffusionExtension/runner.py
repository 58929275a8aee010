"""The background runner: one job file in, output volumes out, machine-readable progress lines on stdout.

3D Slicer (or any GUI) runs `python -m MedDiffusionExtension.runner JOB.json` in a separate process so that its
own interface never freezes and a Cancel can end the whole process tree. JOB.json:

    {"task": "translate", "model": "cdm-tiny", "inputs": {"t1": "t1.nrrd", "t2": "t2.nrrd"},
     "outputs": {"t1c": "t1c.nrrd", "t1c_std": "t1c_std.nrrd"}, "targets": ["t1c"],
     "steps": null, "samples": 2, "seed": 0, "device": "auto", "batch_size": 8}
    {"task": "segment", "model": "sdseg-tiny", "inputs": {"image": "ct.nrrd"},
     "outputs": {"labels": "labels.nrrd", "probability": "probability.nrrd"}, "steps": 1, "samples": 2,
     "threshold": 0.5, "seed": 0, "device": "auto", "batch_size": 8}

Relative paths are relative to the job file's folder. Every output the job names must be produced; the outputs are
written together, all-or-nothing, only once the whole result exists. Lines on stdout (one event per line):

    PROGRESS <fraction 0..1> <message>      e.g. "PROGRESS 0.250 slice 10/40"
    WARNING <one line>                      e.g. a second input resampled onto the first one's grid
    ERROR <one line>                        bad input (exit code 2) or an unexpected failure (exit code 1)
    CANCELLED                               SIGTERM (or Ctrl+C) arrived; nothing was written (exit code 130)
    DONE                                    every output is in place (exit code 0)

Tracebacks of unexpected failures go to stderr. `python -m MedDiffusionExtension.runner --devices` prints the
device menu as JSON.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, TextIO

from .errors import Cancelled, InputError
from .progress import CancelToken

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
TASKS = ("translate", "segment")


class ProtocolWriter:
    """Writes the runner's event lines, one per event, flushed at once so a reading GUI sees them live."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def _line(self, *parts: str) -> None:
        text = " ".join(parts)
        self.stream.write(" ".join(text.split()) + "\n")  # one event is exactly one line
        self.stream.flush()

    def progress(self, fraction: float, message: str) -> None:
        self._line("PROGRESS", f"{min(max(fraction, 0.0), 1.0):.3f}", message)

    def warning(self, message: str) -> None:
        self._line("WARNING", str(message))

    def error(self, message: str) -> None:
        self._line("ERROR", str(message))

    def cancelled(self) -> None:
        self._line("CANCELLED")

    def done(self) -> None:
        self._line("DONE")


def read_job(path: Path) -> dict[str, Any]:
    try:
        job = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"job file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"job file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(job, dict) or job.get("task") not in TASKS:
        raise InputError(f"job file {path} must be a JSON object whose task is one of {', '.join(TASKS)}")
    for key in ("inputs", "outputs"):
        if not isinstance(job.get(key), dict) or not job[key]:
            raise InputError(f"job file {path} needs a non-empty '{key}' object of name -> file path")
    base = Path(path).resolve().parent
    for key in ("inputs", "outputs"):
        job[key] = {name: (base / value) for name, value in job[key].items()}
    return job


def expected_outputs(task: str, samples: int, targets: list[str] | None = None) -> set[str]:
    """The output names a job must list: each target (+ '<target>_std'), or 'labels' (+ 'probability')."""
    if task == "translate":
        return set(targets or []) | ({f"{t}_std" for t in targets or []} if samples > 1 else set())
    return {"labels"} | ({"probability"} if samples > 1 else set())


def _require(job: dict, names: tuple[str, ...], key: str) -> None:
    missing = [n for n in names if n not in job[key]]
    if missing:
        raise InputError(f"the job's {key} lack {', '.join(missing)}")


def _check_outputs(job: dict, expected: set[str]) -> None:
    if set(job["outputs"]) != expected:
        raise InputError(f"the job's outputs must be exactly {', '.join(sorted(expected))}, "
                         f"got {', '.join(sorted(job['outputs']))}")


def _count(job: dict, key: str, default: int | None) -> int | None:
    value = job.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"the job's {key} must be a whole number of at least 1, got {value!r}")
    return value


def run_job(job: dict[str, Any], options) -> list[Path]:
    """Run one job (already read by `read_job`) with RunOptions; returns the written output paths."""
    import numpy as np

    from .volume import read_volume, write_volumes
    from .weights import load_model

    samples = _count(job, "samples", 1)
    steps = _count(job, "steps", None)  # null: the model card's default
    if not job.get("model"):
        raise InputError("the job names no model")
    if job["task"] == "translate":
        from .pipelines import translate

        _require(job, ("t1", "t2"), "inputs")
        loaded = load_model(job["model"], task="translation")
        targets = list(job.get("targets") or loaded.card.output_names)
        _check_outputs(job, expected_outputs("translate", samples, targets))
        options.progress(0.0, "reading inputs")
        t1, t2 = read_volume(job["inputs"]["t1"]), read_volume(job["inputs"]["t2"])
        volumes = translate(t1, t2, loaded, targets, steps, samples, options, bool(job.get("per_volume_representation")))
        files = {job["outputs"][name]: (volume, np.float32) for name, volume in volumes.items()}
    else:
        from .pipelines import segment

        _require(job, ("image",), "inputs")
        _check_outputs(job, expected_outputs("segment", samples))
        loaded = load_model(job["model"], task="segmentation")
        options.progress(0.0, "reading inputs")
        image = read_volume(job["inputs"]["image"])
        result = segment(image, loaded, steps, samples, float(job.get("threshold", 0.5)), options)
        files = {job["outputs"]["labels"]: (result.labels, np.uint8)}
        if result.probability is not None:
            files[job["outputs"]["probability"]] = (result.probability, np.float32)
    options.progress(1.0, "writing outputs")
    return write_volumes(files)


def _run_options(job: dict, writer: ProtocolWriter, cancel: CancelToken):
    from .volume.engine import RunOptions

    seed = job.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"the job's seed must be a whole number, got {seed!r}")
    return RunOptions(device=str(job.get("device", "auto")), batch_size=_count(job, "batch_size", 8),
                      seed=seed, progress=writer.progress, cancel=cancel)


def _print_devices(stream: TextIO) -> int:
    from .device import available_devices

    stream.write(json.dumps([list(device) for device in available_devices()]) + "\n")
    return EXIT_OK


def main(argv: list[str] | None = None, stream: TextIO | None = None,
         install_signal_handlers: bool = True) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stream = stream or sys.stdout
    writer = ProtocolWriter(stream)
    if argv == ["--devices"]:
        return _print_devices(stream)
    if len(argv) != 1 or argv[0].startswith("-"):
        writer.error("usage: python -m MedDiffusionExtension.runner JOB.json | --devices")
        return EXIT_INPUT
    cancel = CancelToken()
    restore: list[Callable[[], Any]] = []
    if install_signal_handlers:
        # SIGTERM is how a GUI cancels: stop between slice batches, write nothing.
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(signum, lambda *_: cancel.cancel())
            restore.append(lambda s=signum, p=previous: signal.signal(s, p))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *_a, **_k: writer.warning(str(message))
            job = read_job(Path(argv[0]))
            written = run_job(job, _run_options(job, writer, cancel))
        if cancel.cancelled:  # SIGTERM during the final write: the caller wants nothing, so leave nothing
            for path in written:
                path.unlink(missing_ok=True)
            raise Cancelled()
        writer.done()
        return EXIT_OK
    except Cancelled:
        writer.cancelled()
        return EXIT_CANCELLED
    except InputError as error:
        writer.error(str(error))
        return EXIT_INPUT
    except Exception as error:  # noqa: BLE001 - reported to the GUI in one line; details on stderr
        traceback.print_exc(file=sys.stderr)
        writer.error(f"unexpected failure ({type(error).__name__}: {error})")
        return EXIT_FAILURE
    finally:
        for undo in restore:
            undo()


if __name__ == "__main__":
    sys.exit(main())
