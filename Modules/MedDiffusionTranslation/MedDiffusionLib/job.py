"""One background run on volume nodes: temporary folder, inputs written, runner started, outputs read, cleanup.

`BackgroundJob` owns the temporary folder from start to finish and removes it whatever happens. `BackgroundLogic`
is the part of a module Logic that runs jobs: blocking (`wait=True`, for scripts and tests: returns the new nodes or
raises) or polled by a QTimer (the GUI stays responsive; `onFinished` gets a `RunResult`). Output nodes are only
built once the runner has succeeded, and only then added to the scene: a cancelled or failed run adds nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import slicer

from . import backend, exchange
from .process import CANCELLED, DONE, FAILED, INPUT_ERROR, RunnerProcess

POLL_INTERVAL_MS = 100


def temporaryFolder() -> str:
    app = getattr(slicer, "app", None)
    return getattr(app, "temporaryPath", None) or tempfile.gettempdir()


@dataclass
class RunResult:
    status: str  # process.DONE, CANCELLED, INPUT_ERROR or FAILED
    message: str = ""
    nodes: dict = field(default_factory=dict)  # output name -> node added to the scene (DONE only)
    warnings: list = field(default_factory=list)
    details: str = ""  # the runner's other output (tracebacks), for an error dialog's details

    @property
    def succeeded(self) -> bool:
        return self.status == DONE

    def raiseIfFailed(self) -> None:
        from MedDiffusionExtension.errors import Cancelled, InputError

        if self.status == CANCELLED:
            raise Cancelled(self.message)
        if self.status == INPUT_ERROR:
            raise InputError(self.message)
        if self.status == FAILED:
            raise RuntimeError(f"MedDiffusion run failed: {self.message}" + (f"\n{self.details}" if self.details else ""))


class BackgroundJob:
    """The runner on `inputs` (name -> volume node), producing `outputNames` as NRRD files in a temporary folder."""

    def __init__(self, task: str, inputs: dict, outputNames: list[str], settings: dict,
                 onProgress: Optional[Callable[[float, str], None]] = None,
                 onWarning: Optional[Callable[[str], None]] = None):
        self.task, self.inputs, self.outputNames, self.settings = task, inputs, list(outputNames), dict(settings)
        self.onProgress, self.onWarning = onProgress, onWarning
        self.folder: Optional[Path] = None
        self.process: Optional[RunnerProcess] = None
        self._timer = None
        self._stoppedTimer = None
        self._onFinished = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def outputPath(self, name: str) -> Path:
        return self.folder / "outputs" / f"{name}.nrrd"

    def start(self, onFinished: Callable[[str, str, dict, list, str], None], wait: bool) -> "BackgroundJob":
        """Write the inputs and start the runner. onFinished(status, message, files, warnings, details) is called
        once, while the output files still exist; the folder is removed right after it returns."""
        self._onFinished = onFinished
        self.folder = Path(tempfile.mkdtemp(prefix="MedDiffusion-", dir=temporaryFolder()))
        try:
            jobPath = self._writeJob()
            self.process = RunnerProcess([str(jobPath)], env=backend.runnerEnvironment(),
                                         onProgress=self.onProgress, onWarning=self.onWarning).start()
        except BaseException:
            self._removeFolder()
            raise
        if wait:
            try:
                self.process.wait()
            except BaseException:  # a failing callback or Ctrl+C: stop the runner, leave nothing behind
                self.process.onProgress = self.process.onWarning = None
                self.process.cancel()
                self.process.wait()
                self._removeFolder()
                raise
            self._finish()
        else:
            import qt

            self._timer = qt.QTimer()
            self._timer.setInterval(POLL_INTERVAL_MS)
            self._timer.connect("timeout()", self._poll)
            self._timer.start()
        return self

    def cancel(self) -> None:
        if self.process is not None:
            self.process.cancel()

    def _writeJob(self) -> Path:
        inputsFolder = self.folder / "inputs"
        inputsFolder.mkdir()
        inputs = {name: str(exchange.writeVolumeNode(node, inputsFolder / f"{name}.nrrd"))
                  for name, node in self.inputs.items()}
        outputs = {name: str(self.outputPath(name)) for name in self.outputNames}
        job = dict(self.settings, task=self.task, inputs=inputs, outputs=outputs)
        path = self.folder / "job.json"
        path.write_text(json.dumps(job, indent=2), encoding="utf-8")
        return path

    def _poll(self) -> None:
        if self._timer is None:  # already finished (a queued timeout after stop)
            return
        try:
            finished = self.process.poll()
        except Exception:  # a failing progress callback: stop the run; later polls see it end as cancelled
            logging.exception("MedDiffusion: handling the runner's output failed; cancelling the run")
            self.process.onProgress = self.process.onWarning = None
            self.process.cancel()
            return
        if finished:
            # PythonQt deletes a parentless QTimer with its last Python reference, which here would be inside its
            # own timeout() slot: Qt deletes it once the slot has returned, and the reference is kept until then.
            self._stoppedTimer, self._timer = self._timer, None
            self._stoppedTimer.stop()
            self._stoppedTimer.deleteLater()
            self._finish()

    def _finish(self) -> None:
        outcome = self.process.outcome
        files = {name: self.outputPath(name) for name in self.outputNames} if outcome.status == DONE else {}
        missing = [str(p) for p in files.values() if not p.is_file()]
        status, message = outcome.status, outcome.message
        if missing:
            status, message = FAILED, f"the runner reported success but did not write {', '.join(missing)}"
        try:
            self._onFinished(status, message, files, outcome.warnings, "\n".join(outcome.log[-40:]))
        finally:
            self._removeFolder()

    def _removeFolder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class BackgroundLogic:
    """Mixin for a module Logic: runs one BackgroundJob at a time, blocking or in the background."""

    activeJob: Optional[BackgroundJob] = None

    @property
    def isRunning(self) -> bool:
        return self.activeJob is not None and self.activeJob.running

    def cancel(self) -> None:
        """Stop the active run (the runner's whole process tree); it will add nothing to the scene."""
        if self.activeJob is not None:
            self.activeJob.cancel()

    def runJob(self, job: BackgroundJob, buildOutputs: Callable[[dict], dict], wait: bool,
               onFinished: Optional[Callable[[RunResult], None]] = None):
        """wait=True: the new nodes (name -> node), or raises Cancelled / InputError / RuntimeError.
        wait=False: the job; onFinished(RunResult) is called from the GUI thread when it ends.
        buildOutputs(files: name -> path) reads the files and adds the nodes; it runs only after success."""
        if self.isRunning:
            raise RuntimeError("a MedDiffusion run is already in progress; cancel it or wait for it to finish")
        results: list[RunResult] = []

        def finished(status, message, files, warnings, details):
            for warning in warnings:  # e.g. an input resampled onto the reference grid
                logging.warning(f"MedDiffusion: {warning}")
            result = RunResult(status, message, warnings=list(warnings), details=details)
            if status == DONE:
                try:
                    result.nodes = buildOutputs(files)
                except Exception as error:  # noqa: BLE001 - reported like a runner failure
                    logging.exception("MedDiffusion: reading the results failed")
                    result = RunResult(FAILED, f"reading the results failed: {error}", warnings=list(warnings))
            self.activeJob = None
            results.append(result)
            if onFinished is not None:
                onFinished(result)

        self.activeJob = job
        try:
            job.start(finished, wait)
        except BaseException:
            self.activeJob = None
            raise
        if not wait:
            return job
        results[0].raiseIfFailed()
        return results[0].nodes
