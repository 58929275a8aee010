"""TEST-ONLY inert stand-in for PythonQt's `ctk` module (same behaviour as qt_stub)."""

from __future__ import annotations

from .qt_stub import Inert


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (Inert,), {})
