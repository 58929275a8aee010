"""TEST-ONLY stand-in for PythonQt's `qt` module: every name is a class whose instances accept anything, except
two that behave as the modules rely on:

- `QTimer`: fired by hand (`QTimer.fireTimeouts()`, what Qt's event loop does), and deleted like PythonQt deletes a
  parentless timer, with its last Python reference; a timer deleted inside its own timeout() slot is recorded in
  `QTimer.deletedInOwnSlot` (in Slicer that deletes the receiver while its slot runs).
- `QApplication`'s override-cursor stack (`overrideCursor()` is None when no wait cursor is shown).

No widget or dialog runs under pytest.
"""

from __future__ import annotations

import weakref


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


class QTimer:
    _timers: "weakref.WeakSet[QTimer]" = weakref.WeakSet()
    _firing = None  # id() of the timer whose timeout() slots run now
    deletedInOwnSlot: list = []  # descriptions of timers deleted while their own slot ran

    def __init__(self, parent=None):
        self.interval, self.active, self.deleteLaterCalled = 0, False, False
        self._slots = []
        QTimer._timers.add(self)

    def setInterval(self, msec):
        self.interval = msec

    def connect(self, signal, slot):
        assert signal == "timeout()", signal
        self._slots.append(slot)

    def start(self, msec=None):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active

    def deleteLater(self):
        self.deleteLaterCalled = True

    def __del__(self):
        if QTimer._firing == id(self):
            QTimer.deletedInOwnSlot.append(f"timer with slots {self._slots!r}")

    @classmethod
    def fireTimeouts(cls) -> int:
        """Call the timeout() slots of every active timer once; returns how many timers fired. No reference to a
        timer is held while its slots run, so that dropping the last one there deletes it, as in PythonQt."""
        fired = 0
        for ref in [weakref.ref(t) for t in list(cls._timers)]:
            timer = ref()
            if timer is None or not timer.active or timer.deleteLaterCalled:
                continue
            slots, key = list(timer._slots), id(timer)
            del timer
            cls._firing, fired = key, fired + 1
            try:
                for slot in slots:
                    slot()
            finally:
                cls._firing = None
        return fired


class QApplication(Inert):
    _overrideCursors: list = []

    @staticmethod
    def setOverrideCursor(cursor):
        QApplication._overrideCursors.append(cursor)

    @staticmethod
    def restoreOverrideCursor():
        if QApplication._overrideCursors:
            QApplication._overrideCursors.pop()

    @staticmethod
    def overrideCursor():
        return QApplication._overrideCursors[-1] if QApplication._overrideCursors else None
