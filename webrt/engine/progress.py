"""Loading progress: WebLLM's ``InitProgressReport`` and the one helper that emits it.

Every part of a load reports with :class:`InitProgressReport`: the engine, a host's model
loader, and in the browser the cache's shard downloads and WebGPU pipeline creation. A
:class:`ProgressReporter` stamps reports with the time since the load began and places a
part's own 0..1 on the whole load's bar. Pure Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass
class InitProgressReport:
    """Loading progress (WebLLM's ``InitProgressReport``): ``progress`` goes from 0 to 1,
    ``time_elapsed`` (WebLLM's ``timeElapsed``) counts seconds."""

    progress: float
    time_elapsed: float
    text: str


InitProgressCallback = Callable[[InitProgressReport], None]


class ProgressReporter:
    """Calls a progress callback (if any) with the time since the reporter was made.

    ``reporter(p, text)`` reports ``p`` of this reporter's range ``[start, end]`` of the bar.
    """

    def __init__(self, callback: InitProgressCallback | None, start: float = 0.0, end: float = 1.0):
        self.callback = callback
        self.start = start
        self.end = end
        self.began = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the reporter was made."""
        return time.monotonic() - self.began

    def __call__(self, progress: float, text: str) -> None:
        if self.callback is not None:
            value = self.start + (self.end - self.start) * progress
            self.callback(InitProgressReport(value, self.elapsed(), text))

    def phases(
        self, shares: Mapping[str, float], start: float = 0.0, end: float = 1.0
    ) -> dict[str, InitProgressCallback]:
        """One callback per phase of a load whose phases run concurrently: each phase's own
        reports (0..1) count for its share of ``[start, end]`` of this reporter's range."""
        done = dict.fromkeys(shares, 0.0)

        def callback_for(name: str) -> InitProgressCallback:
            def callback(report: InitProgressReport) -> None:
                done[name] = report.progress * shares[name]
                self(start + (end - start) * min(1.0, sum(done.values())), report.text)

            return callback

        return {name: callback_for(name) for name in shares}
