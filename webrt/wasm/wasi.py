"""The WASI subset a TVM model library imports (`wasi_snapshot_preview1`), in Python.

Only stdout/stderr exist (TVM's logging writes there; a fatal error logs its message before the
trap, so the last stderr lines are kept to explain a trap). No files, no environment. Clocks read
`performance.now()` / `Date.now()` through `now_ns` callables so the module imports on CPython.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from typing import Callable

from webrt.wasm.memory import Memory

ESUCCESS = 0
EBADF = 8
EINVAL = 28

#: the functions a TVM model library imports, in the order export_wasm lists them
IMPORTS = ("clock_time_get", "proc_exit", "fd_write", "fd_read", "fd_close", "environ_sizes_get", "environ_get",
           "fd_seek")

_IOVEC = struct.Struct("<II")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ProcExit(Exception):
    """The wasm called `proc_exit` (TVM aborts this way on some fatal errors)."""

    def __init__(self, code: int):
        super().__init__(f"the model library exited with code {code}")
        self.code = code


class Wasi:
    """Python implementations of the imported WASI functions over one instance's memory."""

    def __init__(self, memory: Memory | None = None, log: Callable[[int, str], None] | None = None,
                 monotonic_ns: Callable[[], int] | None = None, realtime_ns: Callable[[], int] | None = None,
                 keep_lines: int = 64):
        self.memory = memory
        self.log = log
        self.monotonic_ns = monotonic_ns or time.monotonic_ns
        self.realtime_ns = realtime_ns or time.time_ns
        self.lines: deque[str] = deque(maxlen=keep_lines)  # recent stdout+stderr lines
        self._partial = {1: b"", 2: b""}

    def imports(self) -> dict[str, Callable[..., int | None]]:
        """name -> callable, for the `wasi_snapshot_preview1` import object."""
        return {name: getattr(self, name) for name in IMPORTS}

    def _mem(self) -> Memory:
        if self.memory is None:
            raise RuntimeError("WASI used before the instance's memory was attached")
        return self.memory

    # --- clocks -------------------------------------------------------------------------------
    def clock_time_get(self, clock_id: int, precision: int, time_ptr: int) -> int:
        if clock_id == 0:
            now = self.realtime_ns()
        elif clock_id in (1, 2, 3):
            now = self.monotonic_ns()
        else:
            return EINVAL
        self._mem().write(time_ptr, _U64.pack(int(now) & 0xFFFFFFFFFFFFFFFF))
        return ESUCCESS

    # --- process --------------------------------------------------------------------------------
    def proc_exit(self, code: int) -> None:
        raise ProcExit(int(code))

    # --- fds ------------------------------------------------------------------------------------
    def fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        if fd not in (1, 2):
            return EBADF
        mem = self._mem()
        table = mem.read(iovs, 8 * iovs_len) if iovs_len else b""
        chunks = []
        total = 0
        for i in range(iovs_len):
            ptr, length = _IOVEC.unpack_from(table, 8 * i)
            if length:
                chunks.append(mem.read(ptr, length))
                total += length
        self._emit(fd, b"".join(chunks))
        mem.write(nwritten_ptr, _U32.pack(total))
        return ESUCCESS

    def _emit(self, fd: int, data: bytes) -> None:
        buf = self._partial[fd] + data
        *lines, rest = buf.split(b"\n")
        self._partial[fd] = rest
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if self.log is not None:
                self.log(fd, line)

    def flush(self) -> None:
        """Emit any unterminated output line."""
        for fd in (1, 2):
            if self._partial[fd]:
                self._emit(fd, b"\n")

    def fd_read(self, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
        return EBADF

    def fd_close(self, fd: int) -> int:
        return EBADF

    def fd_seek(self, fd: int, offset: int, whence: int, newoffset_ptr: int) -> int:
        return EBADF

    # --- environment ------------------------------------------------------------------------------
    def environ_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        mem = self._mem()
        mem.write(count_ptr, _U32.pack(0))
        mem.write(size_ptr, _U32.pack(0))
        return ESUCCESS

    def environ_get(self, environ_ptr: int, buf_ptr: int) -> int:
        return ESUCCESS

    def recent_output(self, n: int = 8) -> str:
        """The last `n` output lines (to explain a trap)."""
        self.flush()
        return "\n".join(list(self.lines)[-n:])
