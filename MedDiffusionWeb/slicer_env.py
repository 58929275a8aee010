"""The MedDiffusion Slicer modules' Logic classes on the MRML scene of trame-slicer (the `slicer-core` wheel).

The web app runs the very Logic the Slicer modules run (Modules/*/MedDiffusion*.py: request from the task layer,
inputs checked, BackgroundJob writing temporary NRRD files and starting `python -m MedDiffusionExtension.runner`,
outputs read back onto the reference grid, named, marked synthetic, placed in the subject hierarchy), so a run
from the browser is a run from Slicer. Importing those module files needs a few names that only desktop Slicer's
Python has; this file supplies them, and nothing more, when they are missing:

- `slicer.ScriptedLoadableModule`: the four base classes (the Logic base keeps `parent`; nothing else is used);
- `slicer.parameterNodeWrapper`: the decorator and `WithinRange` (parameter nodes belong to the Qt panels, which
  the web app replaces: the decorated class is left as it is and never instantiated here);
- `slicer.i18n`: `tr`/`translate` return the text unchanged;
- `qt.QTimer`: BackgroundJob polls the runner with a QTimer; here its timeout() runs on the web server's asyncio
  event loop, the loop that also serves the page, so progress, results and the scene change on one thread;
- `slicer.app`: the app's own temporary folder (BackgroundJob's job folders go there) and no layout manager
  (views are fitted by the web app); `slicer.mrmlScene`: trame-slicer's scene.

Test-only stand-ins for pytest live elsewhere (Testing/slicer_compat); this is the web app's runtime.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_FOLDERS = (REPO / "Modules" / "MedDiffusionTranslation", REPO / "Modules" / "MedDiffusionSegmentation")


class QTimer:
    """The part of Qt's QTimer that MedDiffusionLib.job uses, firing on the running asyncio event loop."""

    def __init__(self, parent=None):
        self._interval_ms = 0
        self._slots = []
        self._handle = None
        self._active = False

    def setInterval(self, msec: int) -> None:
        self._interval_ms = int(msec)

    def connect(self, signal: str, slot) -> None:
        if signal != "timeout()":
            raise ValueError(f"QTimer here has only timeout(), not {signal}")
        self._slots.append(slot)

    def start(self, msec=None) -> None:
        if msec is not None:
            self._interval_ms = int(msec)
        self._active = True
        self._schedule()

    def stop(self) -> None:
        self._active = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def isActive(self) -> bool:
        return self._active

    def deleteLater(self) -> None:
        self.stop()
        self._slots = []

    def _schedule(self) -> None:
        loop = asyncio.get_event_loop()
        self._handle = loop.call_later(self._interval_ms / 1000.0, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if not self._active:
            return
        for slot in list(self._slots):
            try:
                slot()
            except Exception:  # noqa: BLE001 - as Qt does: a failing slot is reported, the timer goes on
                logging.exception("MedDiffusion web: a timer callback failed")
        if self._active:
            self._schedule()


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _scripted_module():
    class ScriptedLoadableModule:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest:
        pass

    names = {cls.__name__: cls for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                                            ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest)}
    return _module("slicer.ScriptedLoadableModule", __all__=list(names), **names)


def _parameter_node_wrapper():
    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

    return _module("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls, WithinRange=WithinRange)


def install(scene, temporary_path: str) -> None:
    """Make the module files importable on `scene` (idempotent; real Slicer names are never replaced)."""
    import slicer

    for name, build in (("ScriptedLoadableModule", _scripted_module), ("parameterNodeWrapper", _parameter_node_wrapper),
                        ("i18n", lambda: _module("slicer.i18n", tr=lambda text: text,
                                                 translate=lambda context, text: text))):
        if f"slicer.{name}" not in sys.modules:
            sys.modules[f"slicer.{name}"] = build()
            setattr(slicer, name, sys.modules[f"slicer.{name}"])
    if "qt" not in sys.modules:
        sys.modules["qt"] = _module("qt", QTimer=QTimer)
    slicer.mrmlScene = scene
    slicer.app = types.SimpleNamespace(temporaryPath=str(temporary_path), layoutManager=lambda: None)
    for folder in MODULE_FOLDERS:
        if not folder.is_dir():
            raise RuntimeError(f"the MedDiffusion Slicer modules are not in {folder.parent}; run the web app from "
                               "the source checkout")
        if str(folder) not in sys.path:
            sys.path.append(str(folder))


def logic_classes():
    """(MedDiffusionTranslationLogic, MedDiffusionSegmentationLogic), imported from the module files."""
    import MedDiffusionSegmentation
    import MedDiffusionTranslation

    return MedDiffusionTranslation.MedDiffusionTranslationLogic, MedDiffusionSegmentation.MedDiffusionSegmentationLogic
