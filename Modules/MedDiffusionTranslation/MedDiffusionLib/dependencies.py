"""Python packages the runner needs inside Slicer: check, ask once, install without breaking Slicer.

torch comes through the PyTorch extension's PyTorchUtils when it is installed (it picks the wheel that matches the
NVIDIA driver), otherwise through slicer.util.pip_install. Slicer's own SimpleITK, numpy and requests are never
reinstalled: they are not in the install list, and a constraints file pins them to the installed versions so no
dependency can upgrade them. A package that was already imported and is now replaced needs a Slicer restart.
Whether a package is there is asked of the runner's Python (probe), which imports it: Slicer's own process never does.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Optional

from . import backend, probe

TORCH_REQUIREMENT = ">=2.1"


@dataclass(frozen=True)
class Requirement:
    module: str  # import name
    distribution: str  # pip name
    specifier: str = ""  # e.g. ">=0.4"
    minimum: tuple = ()  # the specifier's lower bound as numbers, for a check without `packaging`

    @property
    def pip(self) -> str:
        return f"{self.distribution}{self.specifier}"


# What the runner imports (Testing/test_slicer_runner.py checks this list against its real imports).
REQUIRED = (
    Requirement("torch", "torch", TORCH_REQUIREMENT, (2, 1)),
    Requirement("safetensors", "safetensors", ">=0.4", (0, 4)),
    Requirement("nibabel", "nibabel", ">=5.0", (5, 0)),
    Requirement("scipy", "scipy", ">=1.10", (1, 10)),
    Requirement("slicerio", "slicerio", ">=1.1", (1, 1)),  # writes .seg.nrrd outputs
)
# Shipped with Slicer; reinstalling them breaks Slicer, so they are only ever pinned, never installed.
NEVER_REINSTALL = ("SimpleITK", "numpy", "requests")


def _version(distribution: str):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _numbers(version: str) -> tuple:
    """Leading release numbers: "2.13.0+cpu" -> (2, 13, 0), "1.10.0rc1" -> (1, 10, 0)."""
    numbers = []
    for part in version.split("+")[0].split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


def probeResult(refresh: bool = False) -> probe.ProbeResult:
    """What the runner's Python imports of REQUIRED, and its devices; cached for the session."""
    return probe.check([r.module for r in REQUIRED], refresh)


def missingRequirements(result: Optional[probe.ProbeResult] = None) -> list[Requirement]:
    """Requirements that do not import in the runner's Python or are older than their minimum (RuntimeError when
    that could not be checked). `result`: a probe's; by default the session's."""
    result = result or probeResult()
    if result.error:
        raise RuntimeError(result.error)
    missing = []
    for requirement in REQUIRED:
        installed = result.versions.get(requirement.module)
        if installed is None:  # absent, or broken: it does not import
            missing.append(requirement)
        elif installed and requirement.minimum and _numbers(installed)[:len(requirement.minimum)] < requirement.minimum:
            missing.append(requirement)
    return missing


def _missingNow() -> list[Requirement]:
    cached = probeResult()
    if cached.error or missingRequirements(cached):
        # Something may have been installed since (e.g. from the Python console): ask again before installing.
        return missingRequirements(probeResult(refresh=True))
    return []


def constraintLines(version=_version) -> list[str]:
    """pip constraints that hold Slicer's own packages at their installed versions."""
    return [f"{name}=={installed}" for name in NEVER_REINSTALL if (installed := version(name))]


def installPlan(missing: list[Requirement], pytorchUtilsAvailable: bool) -> list[str]:
    """Human-readable lines for the consent dialog."""
    lines = []
    for requirement in missing:
        via = "the PyTorch extension (PyTorchUtils)" if requirement.module == "torch" and pytorchUtilsAvailable else "pip"
        lines.append(f"{requirement.pip} (via {via})")
    return lines


def needsRestart(missing: list[Requirement]) -> bool:
    """An already imported module is not replaced in the running Slicer."""
    return any(requirement.module in sys.modules for requirement in missing)


def _pyTorchUtils():
    try:
        import PyTorchUtils  # provided by the PyTorch extension

        return PyTorchUtils
    except ImportError:
        return None


def ensureInstalled(askConfirmation: bool = True) -> bool:
    """True when everything is (now) installed; False when the user declined. Shows one consent dialog."""
    import slicer

    missing = _missingNow()
    if not missing:
        return True
    pyTorchUtils = _pyTorchUtils()
    plan = installPlan(missing, pyTorchUtils is not None)
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            "MedDiffusion needs these Python packages, which will now be downloaded and installed into Slicer "
            "(this can take several minutes):\n\n  " + "\n  ".join(plan) +
            "\n\nSlicer's own SimpleITK, numpy and requests are left unchanged.",
            windowTitle="MedDiffusion: install dependencies"):
        return False
    restart = needsRestart(missing)
    try:
        with slicer.util.WaitCursor(), tempfile.TemporaryDirectory() as folder:
            constraints = os.path.join(folder, "constraints.txt")
            with open(constraints, "w") as handle:
                handle.write("\n".join(constraintLines()) + "\n")
            for requirement in missing:
                if requirement.module == "torch" and pyTorchUtils is not None:
                    torchLogic = pyTorchUtils.PyTorchUtilsLogic()
                    if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                        raise RuntimeError("PyTorch could not be installed; see the Python console for details")
                else:
                    logging.info(f"MedDiffusion: pip install {requirement.pip}")
                    slicer.util.pip_install([requirement.pip, "--constraint", constraints])
    finally:  # even a partly failed install changed what is there
        probe.forget()
        importlib.invalidate_caches()
    still = missingRequirements()
    if still:
        raise RuntimeError("these packages are still missing after the installation: "
                           + ", ".join(r.pip for r in still))
    if restart:
        slicer.util.infoDisplay("The packages were installed. Restart Slicer before running MedDiffusion, "
                                "because an older version of some of them was already loaded.",
                                windowTitle="MedDiffusion: restart needed")
    return True


def ensureForSelfTest() -> None:
    """A self-test runs the runner, which needs REQUIRED: install it unattended first, as a clean Slicer or an
    extension build machine lacks it. RuntimeError with the reason when that is impossible."""
    problem = backend.makeImportable()
    if problem:
        raise RuntimeError(f"the MedDiffusion self-test cannot run: {problem}")
    try:
        ensureInstalled(askConfirmation=False)
    except Exception as error:
        raise RuntimeError("the MedDiffusion self-test cannot run: installing the Python packages it needs failed "
                           f"({error})") from error
