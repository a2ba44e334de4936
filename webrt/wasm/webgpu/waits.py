"""Bounded waits on the GPU: every promise the bridge waits for (a readback's `mapAsync`, the
queue's `onSubmittedWorkDone`, `createComputePipelineAsync`, the adapter and device requests)
ends within a timeout, else GPUTimeoutError names what it waited for. A lost device rejects
its pending promises; those become DeviceLostError.

`run_sync_bounded` blocks (JSPI's `run_sync`, from plain Python frames of a task) on a race of
the promise and a timer shared by the waits of the next timeout_s / 2 seconds (a timer per
readback cost a fifth of a small readback); `wait_bounded` is the `await` form (asyncio's
`wait_for`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from webrt.errors import GPUTimeoutError

#: Seconds one GPU wait may take (a readback after a long prefill chunk on a slow adapter, one
#: pipeline compiled by a software adapter) before it counts as a hung GPU.
GPU_WAIT_S = 120.0

_TIMED_OUT = "webrt: GPU wait timed out"


def timeout_message(what: str, timeout_s: float) -> str:
    return (f"{what} did not finish within {timeout_s:g} s: the GPU or its driver is hung or far too slow; "
            "reload the model (`await engine.reload(...)`) or use the CPU library (model_lib_cpu).")


#: timeout_s -> (perf_counter when armed, a JS promise resolving to _TIMED_OUT 1.5 x timeout_s later)
_deadlines: dict[float, tuple[float, Any]] = {}


def _deadline(timeout_s: float) -> Any:
    """A shared timer promise that settles no sooner than `timeout_s` from now (and no later than
    1.5 x): one JS timer per timeout_s / 2 seconds, not one per wait (a readback per token)."""
    import js
    from pyodide.ffi import create_once_callable

    now = time.perf_counter()
    armed = _deadlines.get(timeout_s)
    if armed is not None and now - armed[0] <= timeout_s / 2:
        return armed[1]

    def start_timer(resolve: Any, _reject: Any) -> None:
        js.setTimeout(resolve, int(timeout_s * 1500), _TIMED_OUT)

    promise = js.Promise.new(create_once_callable(start_timer))
    _deadlines[timeout_s] = (now, promise)
    return promise


def run_sync_bounded(promise: Any, timeout_s: float, what: str) -> Any:
    """Block until `promise` settles (its value; its rejection raises), giving up (GPUTimeoutError)
    between `timeout_s` and 1.5 x `timeout_s` after the call."""
    import js
    from pyodide.ffi import run_sync, to_js

    value = run_sync(js.Promise.race(to_js([promise, _deadline(timeout_s)])))
    if isinstance(value, str) and value == _TIMED_OUT:
        raise GPUTimeoutError(timeout_message(what, timeout_s))
    return value


async def wait_bounded(promise: Any, timeout_s: float, what: str) -> Any:
    """`await promise`, at most `timeout_s` seconds."""

    async def settle() -> Any:
        return await promise

    try:
        return await asyncio.wait_for(settle(), timeout_s)
    except asyncio.TimeoutError:
        raise GPUTimeoutError(timeout_message(what, timeout_s)) from None
