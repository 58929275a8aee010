"""TEST-ONLY: slicer.util's message boxes as a user of desktop Slicer meets them (testing mode off), recorded.

The real slicer.util.tryWithErrorDisplay then shows its error (through errorDisplay) and re-raises it, as in Slicer.
Each box is recorded with whether a wait cursor was showing when it opened; confirmations return `confirm`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .qt_stub import QApplication


@dataclass
class Shown:
    kind: str  # "error", "warning", "info" or "confirm"
    text: str
    underWaitCursor: bool


class MessageBoxes:
    def __init__(self, confirm: bool = True):
        self.confirm = confirm
        self.shown: list[Shown] = []

    def of(self, kind: str) -> list[Shown]:
        return [box for box in self.shown if box.kind == kind]

    def _record(self, kind: str, text) -> None:
        self.shown.append(Shown(kind, str(text), QApplication.overrideCursor() is not None))

    def install(self, monkeypatch) -> "MessageBoxes":
        import slicer

        monkeypatch.setattr(slicer.app, "testingEnabled", lambda: False)
        for kind in ("error", "warning", "info"):
            monkeypatch.setattr(slicer.util, f"{kind}Display",
                                lambda text, *args, kind=kind, **kwargs: self._record(kind, text))

        def confirm(text, *args, **kwargs):
            self._record("confirm", text)
            return self.confirm

        monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm)
        return self
