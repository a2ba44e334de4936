"""`webrt.tools.bench.cpu_time`: the CPU time of a process group over a window of wall-clock time,
checked against the kernel's own account of a child that burns CPU (``getrusage`` of the ended child)."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from webrt.tools.bench.cpu_time import CPUSampler

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4:\n    pass\n"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_sampler_reads_the_cpu_time_of_a_process_group() -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen([sys.executable, "-c", f"import time\ntime.sleep(0.2)\n{BURN}time.sleep(0.2)\n"],
                             start_new_session=True)
    with CPUSampler(child.pid) as sampler:
        time.sleep(0.1)  # samples exist before the window; the child sleeps before it burns
        start = time.time() * 1e3
        child.wait(timeout=60)
        time.sleep(0.1)
        end = time.time() * 1e3
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used_ms = 1e3 * ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    measured = sampler.cpu_ms(start, end)
    assert used_ms >= 400
    # the window leaves out the child's interpreter start-up (tens of ms); readings are in 10 ms ticks
    assert measured is not None and used_ms - 120 <= measured <= used_ms + 20, (measured, used_ms)
    assert sampler.cpu_ms(start - 60_000, end) is None  # before the first sample: not measured
