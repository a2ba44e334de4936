"""CPU time a browser spends in a window of wall-clock time: the load-independent side of a benchmark.

On a machine whose cores other jobs share, a runtime's wall-clock decode step grows with their
load (and not equally for every runtime: one that waits on workers loses more). The CPU time the
browser's processes spend does not, for a single-threaded runtime: `CPUSampler` polls the user +
system time of every process in Chromium's process group (it runs in its own session) and
`cpu_ms` reads the time spent between two epoch timestamps the page reported (``Date.now()``),
interpolating between samples. Linux only (``/proc``); elsewhere it reports nothing.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
SAMPLE_INTERVAL_S = 0.05
#: samples between two scans of /proc for the group's processes (a scan reads every process)
RESCAN_EVERY = 10


def _stat(pid: int) -> list[str] | None:
    """The fields after the command name of /proc/<pid>/stat: state, ppid, pgrp, ..., utime (11), stime (12)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group `pgid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of `pids` (with all their threads)."""
    total = 0
    for pid in pids:
        if (fields := _stat(pid)) is not None:
            total += int(fields[11]) + int(fields[12])
    return total * _TICK_S


class CPUSampler:
    """Samples the CPU time of process group `pgid` every SAMPLE_INTERVAL_S in a thread while in
    its ``with`` block (a process that ends keeps its last reading)."""

    def __init__(self, pgid: int):
        self.pgid = pgid
        self.times: list[float] = []  # epoch ms
        self.cpu: list[float] = []  # CPU ms
        self._pids: list[int] = []
        self._gone = 0.0  # CPU ms of processes that were in the group and are gone
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        if len(self.times) % RESCAN_EVERY == 0:
            self._pids = group_pids(self.pgid)
        now = {pid: cpu_s([pid]) * 1e3 for pid in self._pids}
        self._gone += sum(v for pid, v in self._last.items() if pid not in now or now[pid] < v)
        self._last = now
        self.cpu.append(self._gone + sum(now.values()))
        self.times.append(time.time() * 1e3)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_INTERVAL_S)

    def __enter__(self) -> CPUSampler:
        if Path("/proc/self/stat").is_file():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            self._sample()  # one after the page reported its window

    def _at(self, epoch_ms: float) -> float:
        i = bisect.bisect_left(self.times, epoch_ms)
        if i == 0 or i >= len(self.times):
            raise ValueError("time outside the sampled window")
        t0, t1, c0, c1 = self.times[i - 1], self.times[i], self.cpu[i - 1], self.cpu[i]
        return c0 + (c1 - c0) * (epoch_ms - t0) / (t1 - t0)

    def cpu_ms(self, start_epoch_ms: float, end_epoch_ms: float) -> float | None:
        """CPU ms the group spent between two epoch timestamps; None when not sampled there."""
        try:
            return self._at(end_epoch_ms) - self._at(start_epoch_ms)
        except ValueError:
            return None
