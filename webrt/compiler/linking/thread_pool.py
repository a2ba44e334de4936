"""webrt's thread pool object (`threads/webrt_threads.c`) and the link flags of a CPU library that uses it.

A CPU library (``webrt compile --device wasm``) is linked with a shared, imported linear memory so
that the browser can run TVM's parallel loops on several Web Workers (`webrt.wasm.threads`), each
an instance of the same module on that memory. Emscripten 3.1.6 refuses ``-pthread`` with
``STANDALONE_WASM``, so the library is linked as plain wasm with ``--shared-memory``:

- TVM's web runtime objects and the kernels were compiled without the atomics feature; wasm-ld's
  feature check would refuse them (``--no-check-features``). That is sound here because only the
  thread that owns the runtime (the one that instantiated it) ever runs its C++ code or dlmalloc;
  the other threads run kernel task bodies only, and their workspace requests go to their own
  arenas (the object's ``__wrap_TVMBackendAllocWorkspace``).
- ``--wrap`` sends the kernels' `TVMBackendParallelLaunch` and workspace calls to the object:
  without a started pool they call TVM's own functions, so the library runs one thread as before.
- With ``--shared-memory`` wasm-ld initialises the data segments once, in a start function every
  instance runs (later instances skip it), so a worker instance never re-initialises the heap.

The object is compiled once (``-matomics`` for wait/notify) and cached next to the web runtime
objects, keyed by a hash of its source and the toolchain.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from webrt.compiler.linking.web_runtime import EMCC_INSTALL_HINT, cache_root, emcc_env, emcc_version, find_emcc
from webrt.errors import ToolchainError
from webrt.wasm.threads import MEMORY_INITIAL_BYTES, MEMORY_MAXIMUM_BYTES

SOURCE = Path(__file__).with_name("threads") / "webrt_threads.c"
COMPILE_FLAGS: tuple[str, ...] = ("-O3", "-matomics", "-mbulk-memory", "-Wall", "-Werror")
#: the functions the kernels call that the pool object wraps
WRAPPED: tuple[str, ...] = ("TVMBackendParallelLaunch", "TVMBackendAllocWorkspace", "TVMBackendFreeWorkspace")
#: emcc flags of a CPU library (after `wasm_export.LINK_FLAGS`, whose memory sizes these replace)
LINK_FLAGS: tuple[str, ...] = (
    "-s", f"INITIAL_MEMORY={MEMORY_INITIAL_BYTES}",
    "-s", f"MAXIMUM_MEMORY={MEMORY_MAXIMUM_BYTES}",
    "-Wl," + ",".join(("--shared-memory", "--import-memory", f"--max-memory={MEMORY_MAXIMUM_BYTES}",
                       "--no-check-features", *(f"--wrap={name}" for name in WRAPPED))),
)
_COMPILE_TIMEOUT_S = 300


def ensure_thread_pool_object() -> Path:
    """Compile `threads/webrt_threads.c` if not cached; return the object's path."""
    emcc = find_emcc()
    key = hashlib.sha256(
        SOURCE.read_bytes() + repr((COMPILE_FLAGS, emcc_version(emcc))).encode()
    ).hexdigest()[:16]
    out = cache_root() / "tvm-web" / f"webrt-threads-{key}.o"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".o", dir=out.parent)
    os.close(fd)
    try:
        try:
            proc = subprocess.run([emcc, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", tmp], capture_output=True,
                                  text=True, env=emcc_env(), timeout=_COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise ToolchainError(f"emcc timed out after {_COMPILE_TIMEOUT_S} s on {SOURCE.name}") from exc
        except OSError as exc:
            raise ToolchainError(f"could not run {emcc}: {exc}; {EMCC_INSTALL_HINT}") from exc
        if proc.returncode != 0:
            raise ToolchainError(f"emcc failed on {SOURCE.name} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
