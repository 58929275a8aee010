"""Clocks for the benchmark: a wall clock that waits for queued GPU work, a per-part clock wrapped around the
networks while the real pipeline runs, and the process's peak memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections import defaultdict
from typing import Callable, Iterable


def synchronize() -> None:
    """Wait for queued CUDA work: kernels run asynchronously, so without this the clock stops before they do."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_call(function: Callable, *args, **kwargs):
    """(seconds, result) of one call, queued GPU work included."""
    synchronize()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    synchronize()
    return time.perf_counter() - start, result


def spread(samples: Iterable[float]) -> dict[str, float]:
    """Median, minimum and maximum of repeated measurements (the median is the number reported)."""
    values = list(samples)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "repeats": len(values)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class PartClock:
    """Seconds spent inside named callables while other code calls them: `wrap(owner, attribute, name)` replaces
    the attribute (a method, a module's forward, a module-level function) with a timed call, `restore()` undoes
    every wrap. Used around the networks of a real pipeline run, so that network time and pipeline time come from
    the very same slices."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner, attribute: str, name: str) -> None:
        import torch

        if isinstance(getattr(owner, attribute), torch.nn.Module):  # time the module's forward, hooks and all
            owner, attribute = getattr(owner, attribute), "forward"
        original, had_own = getattr(owner, attribute), attribute in vars(owner)

        def timed(*args, **kwargs):
            seconds, result = time_call(original, *args, **kwargs)
            self.seconds[name] += seconds
            self.calls[name] += 1
            return result

        setattr(owner, attribute, timed)
        self._undo.append(lambda: setattr(owner, attribute, original) if had_own else delattr(owner, attribute))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
