"""TEST-ONLY compatibility layer: runs the real MedDiffusion Slicer module files under pytest without desktop Slicer.

Never shipped with the extension and never imported by the modules: only Testing/test_slicer_*.py install it.

Real (from the `slicer-core` wheel): slicer.mrmlScene and every vtkMRML* node, storage nodes (NRRD/NIfTI IO),
the volumes, colors and segmentations logics, slicer.util's array and scene helpers, VTKObservationMixin.

Faked here, as little as the modules' Logic, Test and widget code need:
- `qt`, `ctk`: inert modules (widgets cannot run here; the .ui files are checked statically instead), except a
  QTimer fired by hand that is deleted like PythonQt's, and QApplication's override-cursor stack (qt_stub.py);
- `slicer.i18n`: tr/translate return the text unchanged;
- `slicer.ScriptedLoadableModule`: minimal Module/Widget/Logic/Test base classes (scripted.py);
- `slicer.parameterNodeWrapper`: typed fields over a real vtkMRMLScriptedModuleNode, no GUI binding (parameters.py);
- `slicer.app`: a temporary folder, `testingEnabled`, override cursors, and `coreIOManager().loadNodes` for volumes
  through the real volumes logic (app.py); `slicer.modules`: `volumes`, `segmentations`, `colors` with their real
  logics;
- message boxes as a desktop user sees them, recorded (messages.py, used through a fixture).

fixtures.py holds the pytest fixtures built on it (layer installed, micro random-weight models, synthetic cases,
recorded message boxes).
"""

from __future__ import annotations

import shutil
import sys
import tempfile

from . import ctk_stub, i18n, parameters, qt_stub, scripted
from .app import CompatApp, compatModules

_SLICER_SUBMODULES = {"ScriptedLoadableModule": scripted, "parameterNodeWrapper": parameters, "i18n": i18n}
_TOP_LEVEL = {"qt": qt_stub, "ctk": ctk_stub}
_saved: dict = {}


def install():
    """Install the layer (idempotent); returns the CompatApp now at slicer.app (its scene is slicer.mrmlScene)."""
    import slicer

    if "app" in _saved:
        return slicer.app
    _saved["modules"] = {name: sys.modules.get(name) for name in
                         [*_TOP_LEVEL, *(f"slicer.{n}" for n in _SLICER_SUBMODULES)]}
    _saved["attributes"] = {name: getattr(slicer, name, None) for name in
                            ("app", "modules", "mrmlScene", "selfTests", *_SLICER_SUBMODULES)}
    for name, module in _TOP_LEVEL.items():
        sys.modules[name] = module
    for name, module in _SLICER_SUBMODULES.items():
        sys.modules[f"slicer.{name}"] = module
        setattr(slicer, name, module)
    app = CompatApp(tempfile.mkdtemp(prefix="slicer-compat-"))
    slicer.mrmlScene = app.scene
    slicer.app = app
    slicer.modules = compatModules(app)
    slicer.selfTests = {}
    _saved["app"] = app
    return app


def uninstall() -> None:
    """Restore what install() replaced and remove the temporary folder."""
    import slicer

    app = _saved.pop("app", None)
    if app is None:
        return
    for name, module in _saved.pop("modules").items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    for name, value in _saved.pop("attributes").items():
        if value is None and hasattr(slicer, name):
            delattr(slicer, name)
        elif value is not None:
            setattr(slicer, name, value)
    shutil.rmtree(app.temporaryPath, ignore_errors=True)


__all__ = ["install", "uninstall", "CompatApp"]
