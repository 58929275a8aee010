"""Finding the MedDiffusionExtension backend package, wherever the modules run from.

Source tree: Modules/<Module>/../.. holds MedDiffusionExtension/ and Resources/. Installed extension: the backend
package and Resources/ are packaged next to the module scripts (qt-scripted-modules/) or one folder up. A backend
that is already importable (e.g. pip-installed into Slicer's Python) is used as is.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

PACKAGE = "MedDiffusionExtension"
MODULES_FOLDER = Path(__file__).resolve().parents[1]  # the folder holding this package (a module's folder)


def _candidateRoots() -> list[Path]:
    return [MODULES_FOLDER, MODULES_FOLDER.parent, MODULES_FOLDER.parent.parent]


def backendRoot() -> Path:
    """The folder that contains the MedDiffusionExtension package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parents[1]
    for root in _candidateRoots():
        if (root / PACKAGE / "__init__.py").is_file():
            return root
    searched = ", ".join(str(r) for r in _candidateRoots())
    raise RuntimeError(f"the MedDiffusion backend ({PACKAGE}) was not found in {searched}; reinstall the extension")


def ensureBackendImportable() -> Path:
    """Put the backend's folder on sys.path when `import MedDiffusionExtension` would fail; returns that folder."""
    root = backendRoot()
    if importlib.util.find_spec(PACKAGE) is None:
        sys.path.insert(0, str(root))
        importlib.invalidate_caches()
    return root


def makeImportable() -> str:
    """ensureBackendImportable without raising: "" once the backend imports, else what is wrong, for the module
    panel (a module that failed to load could not say why)."""
    try:
        ensureBackendImportable()
    except RuntimeError as error:
        return str(error)
    return ""


def resourcesFolder() -> Path:
    """Resources/ of the extension (bundled models and sample data), next to the backend package."""
    return backendRoot() / "Resources"


def runnerEnvironment() -> dict[str, str]:
    """Environment for the runner process: the backend importable, output unbuffered so progress arrives live."""
    env = dict(os.environ)
    root = str(backendRoot())
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p != root])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env
