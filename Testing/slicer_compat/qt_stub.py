"""TEST-ONLY inert stand-in for PythonQt's `qt` module: every name is a class whose instances accept anything.

No widget, timer or dialog runs under pytest; code paths that need real Qt (the module widgets, the non-blocking
QTimer polling) are exercised only in desktop Slicer.
"""

from __future__ import annotations


class _InertType(type):
    def __getattr__(cls, name):  # class attributes too, e.g. qt.Qt.WaitCursor
        if name.startswith("__"):
            raise AttributeError(name)
        return Inert()


class Inert(metaclass=_InertType):
    """Accepts any construction, attribute access and call; does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return Inert()

    def __call__(self, *args, **kwargs):
        return Inert()

    def __bool__(self):
        return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (Inert,), {})
