"""Several CPU threads for a CPU model library (``webrt compile --device wasm``) in the browser.

The library is linked with a shared, imported linear memory and webrt's thread pool object
(`webrt.compiler.linking.thread_pool`): TVM's parallel loops call the pool instead of TVM's
one-task `TVMBackendParallelLaunch`. `ThreadPool.start` makes ``threads - 1`` Web Workers
(``js/cpu_thread.js``), each an instance of the same ``WebAssembly.Module`` on the same shared
``WebAssembly.Memory``, on its own stack, waiting in the pool's loop; from then on each parallel
loop runs on every thread, the calling one included, entirely inside wasm (wake-ups through
``memory.atomic.wait32/notify`` after a short spin). Without a started pool the library runs one
thread, as TVM's web runtime does.

Where threads are possible (`thread_support`): the page is cross-origin isolated (``webrt serve``
sends COOP/COEP), so shared memory can be posted to workers, and the engine runs in a worker (a
window's main thread may not block in ``Atomics.wait``). Elsewhere the same library runs one
thread: a shared ``WebAssembly.Memory`` can be created on any page (checked in headless Chromium
156 without COOP/COEP); only posting it to a worker needs isolation. Asking for more than one thread
there raises `ThreadsUnavailableError` naming the fix. Every wait is bounded: a worker that does not
start within `START_TIMEOUT_S` fails the load, one that does not finish its task of a parallel loop
within `TASK_TIMEOUT_MS` fails that call (a TVM error from the pool) and turns the pool off.
"""

from __future__ import annotations

import asyncio
from typing import Any

from webrt.errors import ModelConfigError, ThreadsUnavailableError

#: the library's linear memory (one rule for the linker's flags and the memory the host creates)
MEMORY_INITIAL_BYTES = 160 << 20
#: 2 GiB: the library's pointers are i32 values in JS, negative above 2 GiB
MEMORY_MAXIMUM_BYTES = 2 << 30
WASM_PAGE_BYTES = 65536
#: threads the pool object can hold (WEBRT_MAX_THREADS in webrt_threads.c), the caller included
MAX_THREADS = 16
#: threads used when the caller does not say: the browser's cores, at most this many
DEFAULT_MAX_THREADS = 4
#: each worker's stack and its arena for workspaces that kernels ask for inside parallel loops
WORKER_STACK_BYTES = 1 << 20
WORKER_ARENA_BYTES = 4 << 20
#: polls of the shared words before a thread blocks (a decode step runs ~200 short parallel loops)
SPIN_POLLS = 20000
START_TIMEOUT_S = 30.0
TASK_TIMEOUT_MS = 30000
WORKER_SCRIPT = "cpu_thread.js"
#: exports of a library that has the pool
POOL_EXPORTS = ("webrt_pool_init", "webrt_pool_stack_top", "webrt_pool_start", "webrt_pool_ready",
                "webrt_pool_stop", "webrt_pool_threads", "webrt_pool_tasks_run", "webrt_worker_loop")

_ISOLATION_FIX = ("serve the page cross-origin isolated (COOP: same-origin, COEP: require-corp, as `webrt serve` "
                  "does)")
_WORKER_FIX = "run the engine in a worker (boot.js: bootWorker), where a thread may wait"


def thread_support() -> tuple[int, str]:
    """(the most CPU threads this context can use, why): 1 without isolation, shared memory or a
    context that may block; else the browser's cores, at most `DEFAULT_MAX_THREADS`."""
    import js

    if not getattr(js, "crossOriginIsolated", False):
        return 1, f"the page is not cross-origin isolated: {_ISOLATION_FIX}"
    if getattr(js, "SharedArrayBuffer", None) is None or getattr(js, "Worker", None) is None:
        return 1, "this context has no SharedArrayBuffer or Worker"
    if getattr(js, "document", None) is not None:
        return 1, f"the engine runs on the window's main thread, which may not block: {_WORKER_FIX}"
    cores = int(getattr(js.navigator, "hardwareConcurrency", 1) or 1)
    return max(1, min(cores, DEFAULT_MAX_THREADS)), f"{cores} cores, cross-origin isolated worker"


def check_threads(requested: int | None) -> None:
    """ModelConfigError for a thread count out of range (None or 0: automatic)."""
    if requested is not None and not 0 <= requested <= MAX_THREADS:
        raise ModelConfigError(f"threads must be between 0 (automatic) and {MAX_THREADS}, got {requested}")


def resolve_threads(requested: int | None) -> int:
    """The thread count for a load: `requested`, or (None or 0) what `thread_support` allows.

    Raises ThreadsUnavailableError when more than one thread is asked for where there can be only
    one, ModelConfigError for a count out of range."""
    check_threads(requested)
    available, why = thread_support()
    if not requested:
        return available
    if requested > 1 and available == 1:
        raise ThreadsUnavailableError(f"{requested} CPU threads were asked for, but {why}; ask for 1 thread "
                                      "(or none: automatic) to run on one thread here")
    return requested


def imports_memory(module: Any) -> bool:
    """Whether a compiled ``WebAssembly.Module`` imports its memory (a library with the pool)."""
    import js

    return any(str(imp.kind) == "memory" for imp in js.WebAssembly.Module.imports(module))


def new_shared_memory() -> Any:
    """The shared ``WebAssembly.Memory`` a CPU library imports."""
    import js
    from pyodide.ffi import to_js

    limits = {"initial": MEMORY_INITIAL_BYTES // WASM_PAGE_BYTES, "maximum": MEMORY_MAXIMUM_BYTES // WASM_PAGE_BYTES,
              "shared": True}
    return js.WebAssembly.Memory.new(to_js(limits, dict_converter=js.Object.fromEntries))


def has_pool(exports: Any) -> bool:
    return all(getattr(exports, name, None) is not None for name in POOL_EXPORTS)


def worker_script_url() -> str:
    """Where ``js/cpu_thread.js`` is: next to boot.js, which records its folder at boot."""
    import js

    base = getattr(js, "webrtRuntimeURL", None)
    if not base:
        raise ThreadsUnavailableError("the page did not record where webrt's runtime scripts are (boot.js sets "
                                      "globalThis.webrtRuntimeURL); boot webrt with boot.js to use threads")
    return str(base) + WORKER_SCRIPT


class ThreadPool:
    """The workers of one library instance (see the module docstring)."""

    def __init__(self, exports: Any, threads: int):
        self.exports, self.threads = exports, threads
        self.workers: list[Any] = []
        self._proxies: list[Any] = []

    @classmethod
    async def start(cls, exports: Any, module: Any, memory: Any, threads: int,
                    timeout_s: float = START_TIMEOUT_S, script_url: str | None = None) -> ThreadPool:
        """Start ``threads - 1`` workers on `module` and `memory` and turn the pool on.

        Raises ThreadsUnavailableError where this context cannot have threads (`thread_support`),
        when the library has no pool, or a worker fails to start or is not waiting in its loop
        within `timeout_s` (the workers started are ended)."""
        if not has_pool(exports):
            raise ThreadsUnavailableError("this CPU library has no thread pool (it was built by an older webrt); "
                                          "rebuild it with `webrt compile --device wasm`, or load it with 1 thread")
        available, why = thread_support()
        if available == 1:
            raise ThreadsUnavailableError(f"the CPU thread pool cannot start here: {why}")
        pool = cls(exports, threads)
        try:
            await pool._start(module, memory, timeout_s, script_url or worker_script_url())
        except BaseException:
            pool.stop()
            raise
        return pool

    async def _start(self, module: Any, memory: Any, timeout_s: float, url: str) -> None:
        import js
        from pyodide.ffi import create_proxy, to_js

        rc = self.exports.webrt_pool_init(self.threads, 1, WORKER_STACK_BYTES, WORKER_ARENA_BYTES, SPIN_POLLS,
                                          TASK_TIMEOUT_MS)
        if rc != 0:
            raise ThreadsUnavailableError(f"the thread pool could not be set up for {self.threads} threads "
                                          "(out of memory for the workers' stacks?)")
        loop = asyncio.get_running_loop()
        ready = [loop.create_future() for _ in range(self.threads - 1)]

        def settle(i: int, value: Any = None, error: str | None = None) -> None:
            if not ready[i].done():
                if error is None:
                    ready[i].set_result(value)
                else:
                    ready[i].set_exception(ThreadsUnavailableError(f"CPU worker thread {i + 1} failed: {error}"))

        options = to_js({"type": "module", "name": "webrt-cpu-thread"}, dict_converter=js.Object.fromEntries)
        for index in range(1, self.threads):
            worker = js.Worker.new(url, options)
            self.workers.append(worker)

            def on_message(event: Any, i: int = index - 1) -> None:
                data = event.data
                if getattr(data, "error", None) is not None:
                    settle(i, error=str(data.error))
                elif getattr(data, "ready", None) is not None:
                    settle(i, True)

            def on_error(event: Any, i: int = index - 1) -> None:
                settle(i, error=str(getattr(event, "message", "") or "the worker script did not load"))
                event.preventDefault()

            for name, fn in (("onmessage", on_message), ("onerror", on_error)):
                proxy = create_proxy(fn)
                self._proxies.append(proxy)
                setattr(worker, name, proxy)
            message = {"module": module, "memory": memory, "index": index,
                       "stackTop": self.exports.webrt_pool_stack_top(index)}
            worker.postMessage(to_js(message, dict_converter=js.Object.fromEntries))
        deadline = loop.time() + timeout_s
        try:
            await asyncio.wait_for(asyncio.gather(*ready), timeout_s)
            while self.exports.webrt_pool_ready() != self.threads - 1:
                if loop.time() > deadline:
                    raise asyncio.TimeoutError
                await asyncio.sleep(0.002)
        except asyncio.TimeoutError:
            raise ThreadsUnavailableError(f"the CPU worker threads did not start within {timeout_s:.0f} s; "
                                          "load the model with 1 thread") from None
        if self.exports.webrt_pool_start() != 0:
            raise ThreadsUnavailableError("the thread pool did not start")

    @property
    def active_threads(self) -> int:
        """Threads the parallel loops run on now (1 once the pool stopped or gave up)."""
        return int(self.exports.webrt_pool_threads())

    def tasks_run(self) -> list[int]:
        """Parallel-loop tasks each thread ran (index 0: the calling thread)."""
        return [int(self.exports.webrt_pool_tasks_run(i)) for i in range(self.threads)]

    def stop(self) -> None:
        """Stop the workers and go back to one thread."""
        try:
            self.exports.webrt_pool_stop()
        except Exception:  # noqa: BLE001 - a dead instance: the workers are ended below anyway
            pass
        for worker in self.workers:
            worker.terminate()
        self.workers.clear()
        for p in self._proxies:
            p.destroy()
        self._proxies.clear()
