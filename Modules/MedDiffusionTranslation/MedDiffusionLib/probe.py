"""What the runner's Python can import, and its devices, asked of a short runner process and cached per session.

Importing torch inside Slicer's own process takes seconds, holds memory, and a broken torch would break the module
panel; `find_spec` alone does not show whether a package imports. So the panel asks
`python -m MedDiffusionExtension.runner --probe MODULE...` (the same Python and environment a run uses) once, and
again after an install. Both modules share this cache, so installing from one updates the other.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from typing import Optional

from . import backend, process

TIMEOUT_SECONDS = 60.0  # a first torch import on a cold disk can take tens of seconds
FALLBACK_DEVICES = (("auto", "Auto (GPU if available)"), ("cpu", "CPU"))


@dataclass(frozen=True)
class ProbeResult:
    versions: dict = field(default_factory=dict)  # module -> version ("" when unknown), for modules that import
    failed: dict = field(default_factory=dict)  # module -> why it does not import
    devices: tuple = ()  # (id, label) pairs; empty when torch does not import
    error: str = ""  # the probe itself failed: nothing is known

    def deviceChoices(self) -> list[tuple[str, str]]:
        return list(self.devices) or list(FALLBACK_DEVICES)


_results: dict = {}  # modules -> ProbeResult, for this Slicer session


def parse(stdout: str, stderr: str = "", returnCode: int = 0) -> ProbeResult:
    """The result from the runner's output: its last JSON line, or an error that says what went wrong."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                data = json.loads(line)
                return ProbeResult(versions=dict(data["versions"]), failed=dict(data["failed"]),
                                   devices=tuple((str(d[0]), str(d[1])) for d in data["devices"]))
            except (ValueError, KeyError, TypeError, IndexError):
                break
    lines = [line for line in (stdout + "\n" + stderr).splitlines() if line.strip()]
    detail = lines[-1].strip() if lines else "no output"
    return ProbeResult(error=f"the runner's check of the Python packages failed (exit code {returnCode}): {detail}")


def run(modules, python: Optional[str] = None, env: Optional[dict] = None,
        timeout: float = TIMEOUT_SECONDS) -> ProbeResult:
    """One probe process, uncached. A probe that does not answer within `timeout` s is killed with its children."""
    command = [python or process.pythonExecutable(), "-m", "MedDiffusionExtension.runner", "--probe", *modules]
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=env if env is not None else backend.runnerEnvironment(), text=True,
                                 encoding="utf-8", errors="replace", **process.newProcessGroupOptions())
    except (OSError, RuntimeError) as error:  # no Python to run, or no backend to put on its path
        return ProbeResult(error=f"the runner could not be started to check the Python packages: {error}")
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.killProcessTree(child.pid)
        try:
            child.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        return ProbeResult(error=f"the runner's check of the Python packages did not answer within {timeout:g} s")
    return parse(stdout, stderr, child.returncode)


def check(modules, refresh: bool = False) -> ProbeResult:
    """The cached result for `modules`; probed now the first time, or when `refresh`."""
    key = tuple(modules)
    if refresh or key not in _results:
        _results[key] = run(key)
    return _results[key]


def forget() -> None:
    """Drop every cached result (after an install): the next check probes again."""
    _results.clear()
