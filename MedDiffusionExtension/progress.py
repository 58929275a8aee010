"""Progress reporting and cooperative cancellation, carried with every long call."""

from __future__ import annotations

import threading
from typing import Callable, Optional

from .errors import Cancelled

# progress(fraction in [0, 1], message)
ProgressCallback = Callable[[float, str], None]


class CancelToken:
    """Set from any thread (a GUI's Cancel button, a signal handler); checked by the engine between batches."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def report(progress: Optional[ProgressCallback], fraction: float, message: str) -> None:
    if progress is not None:
        progress(min(max(fraction, 0.0), 1.0), message)

