"""The background runner: one job file in, output volumes out, machine-readable progress lines on stdout.

3D Slicer (or any GUI) runs `python -m MedDiffusionExtension.runner JOB.json` in a separate process so that its
own interface never freezes and a Cancel can end the whole process tree. JOB.json:

    {"task": "translate", "model": "cdm-tiny", "inputs": {"t1": "t1.nrrd", "t2": "t2.nrrd"},
     "outputs": {"t1c": "t1c.nrrd", "t1c_std": "t1c_std.nrrd"}, "targets": ["t1c"], "register": false,
     "steps": null, "samples": 2, "seed": 0, "device": "auto", "batch_size": 8, "precision": "auto"}
    {"task": "segment", "model": "sdseg-tiny", "inputs": {"image": "ct.nrrd"},
     "outputs": {"labels": "labels.nrrd", "probability": "probability.nrrd"}, "steps": 1, "samples": 2,
     "threshold": 0.5, "seed": 0, "device": "auto", "batch_size": 8}
    {"task": "segment", "model": "sdseg-organs", "inputs": {"image": "ct.nrrd"}, "organs": ["liver", "spleen"],
     "outputs": {"labels": "labels.seg.nrrd", "probability_liver": "liver.nrrd", "probability_spleen": "spleen.nrrd"},
     "samples": 2}

The fields are those of the task's request (tasks.TranslateRequest / SegmentRequest, `Request.to_job`); omitted
ones take the request's defaults, unknown ones are refused. Relative paths are relative to the job file's folder.
The outputs must be exactly the request's output names for the model (a multi-organ model's probabilities are
`probability_<organ key>`, one per kept organ); they are written together, all-or-nothing, only once the whole result
exists; `labels` may be a .seg.nrrd (Slicer's segmentation file with the organs' names, colours and terminology).
Lines on stdout (one event per line):

    PROGRESS <fraction 0..1> <message>      e.g. "PROGRESS 0.250 slice 10/40"
    WARNING <one line>                      e.g. a second input resampled onto the first one's grid, an input
                                            that is not skull-stripped, the transform "register" found
    ERROR <one line>                        bad input (exit code 2) or an unexpected failure (exit code 1)
    CANCELLED                               SIGTERM (or Ctrl+C) arrived; nothing was written (exit code 130)
    DONE                                    every output is in place (exit code 0)

Tracebacks of unexpected failures go to stderr. `python -m MedDiffusionExtension.runner --devices` prints the
device menu as JSON; `--probe [MODULE ...]` prints which of the modules import (with their versions) and the device
menu, as one JSON line, for a GUI that must not import torch in its own process.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, TextIO

from . import tasks
from .errors import Cancelled, InputError
from .progress import CancelToken
from .tasks import EXIT_CANCELLED, EXIT_FAILURE, EXIT_INPUT, EXIT_OK


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


def read_job(path: Path) -> tuple["tasks.Request", dict[str, Path], dict[str, Path]]:
    """The request a job file describes, and its input and output files (relative to the job file's folder)."""
    try:
        job = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"job file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"job file {path} is not valid JSON ({exc})") from None
    request = tasks.request_from_job(job)
    base = Path(path).resolve().parent
    files = []
    for key in ("inputs", "outputs"):
        if not isinstance(job.get(key), dict) or not job[key] or not all(isinstance(v, str) for v in job[key].values()):
            raise InputError(f"job file {path} needs a non-empty '{key}' object of name -> file path")
        files.append({name: base / value for name, value in job[key].items()})
    return request, files[0], files[1]


def run_job(path: Path, writer: "ProtocolWriter", cancel: CancelToken) -> list[Path]:
    """Run one job file; returns the written output paths."""
    request, inputs, outputs = read_job(path)
    loaded = tasks.load(request)
    return tasks.execute(request, loaded, inputs, outputs, request.settings.run_options(writer.progress, cancel, loaded))


def _print_devices(stream: TextIO) -> int:
    from .device import available_devices

    stream.write(json.dumps([list(device) for device in available_devices()]) + "\n")
    return EXIT_OK


def _print_probe(modules: list[str], stream: TextIO) -> int:
    """One JSON line for a GUI that must not import torch itself: {"versions": {module: version} of the `modules`
    that import, "failed": {module: why not}, "devices": the device menu, empty when torch does not import}."""
    import importlib
    import importlib.metadata

    versions, failed = {}, {}
    for name in modules or ["torch"]:
        try:
            module = importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - a broken install raises anything at import
            failed[name] = f"{type(error).__name__}: {error}"
            continue
        version = getattr(module, "__version__", None)
        if not isinstance(version, str):
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = ""
        versions[name] = version
    devices = []
    if "torch" not in failed:
        try:
            from .device import available_devices

            devices = [list(device) for device in available_devices()]
        except Exception as error:  # noqa: BLE001 - e.g. a CUDA driver that fails to initialise
            failed["torch"] = f"{type(error).__name__}: {error}"
            versions.pop("torch", None)
    stream.write(json.dumps({"versions": versions, "failed": failed, "devices": devices}) + "\n")
    return EXIT_OK


def main(argv: list[str] | None = None, stream: TextIO | None = None,
         install_signal_handlers: bool = True) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stream = stream or sys.stdout
    writer = ProtocolWriter(stream)
    if argv == ["--devices"]:
        return _print_devices(stream)
    if argv[:1] == ["--probe"]:
        return _print_probe(argv[1:], stream)
    if len(argv) != 1 or argv[0].startswith("-"):
        writer.error("usage: python -m MedDiffusionExtension.runner JOB.json | --devices | --probe [MODULE ...]")
        return EXIT_INPUT
    cancel = CancelToken()
    restore: list[Callable[[], Any]] = []
    if install_signal_handlers:
        # SIGTERM is how a GUI cancels: stop between slice batches, write nothing.
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(signum, lambda *_: cancel.cancel())
            restore.append(lambda s=signum, p=previous: signal.signal(s, p))
    try:
        with tasks.warnings_to(writer.warning):
            written = run_job(Path(argv[0]), writer, cancel)
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
