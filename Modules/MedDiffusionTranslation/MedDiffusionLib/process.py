"""The runner process seen from Slicer: start it, read its event lines, cancel it by ending its whole process tree.

The runner (`python -m MedDiffusionExtension.runner JOB.json`) prints one event per line (see its docstring).
Two reader threads only queue lines; every callback runs in the thread that calls `poll`/`wait` (Slicer's main
thread, from a QTimer or a blocking loop), so callbacks may touch the scene and the GUI. Neither `poll` nor `cancel`
ever waits: in Slicer they run on the GUI thread.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

# Exit codes of MedDiffusionExtension.runner
EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 130

DONE, CANCELLED, INPUT_ERROR, FAILED = "done", "cancelled", "input-error", "failed"

# After SIGTERM the runner stops at the next slice batch; a process that outlives this is killed outright.
TERMINATE_GRACE_SECONDS = 10.0
# Once the runner has exited, how long its last lines may take to reach the readers. Pipes still open after that are
# held by a process that outlived it (in Slicer, PythonSlicer is a launcher that dies on SIGTERM at once while its
# python-real child finishes the batch); that process is killed and the run ends without its last lines.
PIPE_DRAIN_SECONDS = 0.5


def pythonExecutable() -> str:
    """Slicer's own Python (PythonSlicer, on PATH inside Slicer); outside Slicer the current interpreter."""
    candidates = [shutil.which("PythonSlicer"), shutil.which("PythonSlicer", path=os.path.dirname(sys.executable))]
    return next((c for c in candidates if c), sys.executable)


def newProcessGroupOptions() -> dict:
    """Popen options that put a child in its own process group, so that one signal reaches it and its children."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}  # the group id is the child's pid


def killProcessTree(pid: int) -> None:
    """Kill the process group led by `pid` (POSIX) or the process tree under it (Windows); returns at once."""
    if os.name == "nt":
        # Not waited for: a cancel must not block the GUI thread while taskkill walks the tree.
        subprocess.Popen(["taskkill", "/F", "/T", "/PID", str(pid)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class RunnerOutcome:
    status: str  # DONE, CANCELLED, INPUT_ERROR or FAILED
    message: str = ""
    returnCode: Optional[int] = None
    warnings: list = field(default_factory=list)
    log: list = field(default_factory=list)  # every other line (stderr, tracebacks), for the error details


class RunnerProcess:
    """One runner process in its own process group (POSIX session / Windows process group)."""

    def __init__(self, arguments: list[str], env: Optional[dict] = None, python: Optional[str] = None,
                 onProgress: Optional[Callable[[float, str], None]] = None,
                 onWarning: Optional[Callable[[str], None]] = None):
        self.command = [python or pythonExecutable(), "-m", "MedDiffusionExtension.runner", *arguments]
        self.env = env
        self.onProgress = onProgress
        self.onWarning = onWarning
        self.process: Optional[subprocess.Popen] = None
        self.outcome: Optional[RunnerOutcome] = None
        self._lines: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._cancelRequestedAt: Optional[float] = None
        self._exitedAt: Optional[float] = None
        self._error = ""
        self._warnings: list[str] = []
        self._log: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start(self) -> "RunnerProcess":
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **newProcessGroupOptions())
        for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            reader = threading.Thread(target=self._read, args=(stream, name), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.outcome is None

    @property
    def cancelRequested(self) -> bool:
        return self._cancelRequestedAt is not None

    def cancel(self) -> None:
        """Ask the runner to stop (SIGTERM to its process group); `poll`/`wait` kill the tree if it lingers."""
        if not self.running or self.cancelRequested:
            return
        self._cancelRequestedAt = time.monotonic()
        if os.name == "nt":
            self._killTree()  # Windows has no graceful signal for a console-less child: end the tree at once
        else:
            self._signalGroup(signal.SIGTERM)

    def poll(self) -> bool:
        """Dispatch the queued lines; True once the process has ended and its outcome is known. Never waits."""
        if self.outcome is not None:
            return True
        self._dispatchQueuedLines()
        now = time.monotonic()
        if self._exitedAt is None:
            if self.cancelRequested and now - self._cancelRequestedAt > TERMINATE_GRACE_SECONDS:
                self._killTree()
            if self.process.poll() is None:
                return False
            self._exitedAt = now
            if self.cancelRequested:
                self._killTree()  # whatever of the group is left (a launcher's child) would only hold the pipes
        if any(reader.is_alive() for reader in self._readers):
            if now - self._exitedAt < PIPE_DRAIN_SECONDS:
                return False  # the last lines are still on their way; the next poll takes them
            self._killTree()
        self._dispatchQueuedLines()
        self.outcome = self._makeOutcome(self.process.returncode)
        return True

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> RunnerOutcome:
        """Block until the process ends (callbacks keep being called from here); TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the runner did not finish within {timeout} s; it was cancelled")
            time.sleep(interval)
        return self.outcome

    # -- internals ---------------------------------------------------------------------------------------------------

    def _read(self, stream, name: str) -> None:
        for line in iter(stream.readline, ""):
            self._lines.put((name, line.rstrip("\r\n")))
        stream.close()

    def _dispatchQueuedLines(self) -> None:
        while True:
            try:
                name, line = self._lines.get_nowait()
            except queue.Empty:
                return
            self._handle(name, line)

    def _handle(self, name: str, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if name == "stdout" and kind == "PROGRESS":
            fraction, _, message = rest.partition(" ")
            try:
                value = float(fraction)
            except ValueError:
                value = 0.0
            if self.onProgress is not None and not self.cancelRequested:
                self.onProgress(value, message)
        elif name == "stdout" and kind == "WARNING":
            self._warnings.append(rest)
            if self.onWarning is not None:
                self.onWarning(rest)
        elif name == "stdout" and kind == "ERROR":
            self._error = rest
        elif line.strip():
            self._log.append(line)

    def _makeOutcome(self, code: int) -> RunnerOutcome:
        common = dict(returnCode=code, warnings=list(self._warnings), log=list(self._log))
        if self.cancelRequested:
            # Whatever the runner managed before the signal, a cancelled run yields nothing.
            return RunnerOutcome(CANCELLED, "cancelled by the user; nothing was added", **common)
        if code == EXIT_OK:
            return RunnerOutcome(DONE, "", **common)
        if code == EXIT_INPUT:
            return RunnerOutcome(INPUT_ERROR, self._error or "the input was refused", **common)
        if code == EXIT_CANCELLED:
            return RunnerOutcome(CANCELLED, "the run was stopped from outside; nothing was added", **common)
        detail = self._error or (self._log[-1] if self._log else f"exit code {code}")
        return RunnerOutcome(FAILED, detail, **common)

    def _signalGroup(self, signum) -> None:
        try:
            os.killpg(self.process.pid, signum)  # the process group id is the runner's pid (new session)
        except (ProcessLookupError, PermissionError):
            pass

    def _killTree(self) -> None:
        killProcessTree(self.process.pid)
