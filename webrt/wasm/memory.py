"""Access to a wasm instance's linear memory from Python, and the stack of argument frames.

`JsMemory` wraps a JS `WebAssembly.Memory` on Pyodide: every read is one `subarray` plus one
`to_bytes` (a single copy into Python), every write one `subarray` plus `assign` (a single copy out
of the Python buffer). Views are rebuilt when the instance reports memory growth
(`emscripten_notify_memory_growth`). Anything with `read`/`write`/`refresh` (`Memory`) will do,
e.g. a `bytearray`-backed one for tests of the pure logic on CPython.

`ArgStack` hands out argument frames (TVMFFIAny arrays, strings, result slots) from one block of
wasm memory, as a stack: a callback from wasm into Python that calls back into wasm gets a frame
above the caller's, whose arguments are still in use.
"""

from __future__ import annotations

import struct
from typing import Callable, Protocol

_U32 = struct.Struct("<I")


class Memory(Protocol):
    """Byte-level access to linear memory."""

    def read(self, ptr: int, nbytes: int) -> bytes: ...

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None: ...

    def refresh(self) -> None: ...


class MemoryOps:
    """Typed helpers shared by memory implementations (mixin over `read`/`write`)."""

    def read(self, ptr: int, nbytes: int) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        raise NotImplementedError

    def read_u32(self, ptr: int) -> int:
        return _U32.unpack(self.read(ptr, 4))[0]

    def read_cstr(self, ptr: int, limit: int = 1 << 20) -> str:
        """A NUL-terminated UTF-8 string (read in growing chunks)."""
        if ptr == 0:
            return ""
        out = bytearray()
        chunk = 256
        while len(out) < limit:
            piece = self.read(ptr + len(out), chunk)
            end = piece.find(b"\0")
            if end >= 0:
                out += piece[:end]
                break
            out += piece
            chunk = min(chunk * 4, 1 << 16)
        return out.decode("utf-8", "replace")


class JsMemory(MemoryOps):
    """A JS `WebAssembly.Memory` seen from Pyodide."""

    def __init__(self, wasm_memory: object):
        import js  # Pyodide only

        self._js = js
        self.memory = wasm_memory
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the views (call after the memory grew: its ArrayBuffer was replaced)."""
        self.buffer = self.memory.buffer  # type: ignore[attr-defined]
        self.u8 = self._js.Uint8Array.new(self.buffer)
        self._subarray = self.u8.subarray
        self.size = self.u8.length

    def read(self, ptr: int, nbytes: int) -> bytes:
        return self._subarray(ptr, ptr + nbytes).to_bytes()

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        self._subarray(ptr, ptr + len(data)).assign(data)

    def view(self, ptr: int, nbytes: int) -> object:
        """A JS Uint8Array aliasing [ptr, ptr + nbytes) (valid until the memory grows)."""
        return self._subarray(ptr, ptr + nbytes)


class ArgStack:
    """Frames of argument memory inside wasm, allocated as a stack.

    `alloc`/`free` are the instance's `TVMWasmAllocSpace`/`TVMWasmFreeSpace`. A frame that does
    not fit in the block gets its own allocation (freed when popped).
    """

    def __init__(self, alloc: Callable[[int], int], free: Callable[[int], None], size: int = 1 << 18):
        self._alloc, self._free = alloc, free
        self.size = size
        self.base = alloc(size)
        if not self.base:
            raise MemoryError("TVMWasmAllocSpace failed for the argument stack")
        self.top = 0
        self._spill: dict[int, int] = {}  # address -> previous top, for frames outside the block

    def push(self, nbytes: int) -> int:
        """Reserve `nbytes` (8-aligned); returns the address."""
        nbytes = (nbytes + 7) & ~7
        if self.top + nbytes <= self.size:
            ptr = self.base + self.top
            self.top += nbytes
            return ptr
        ptr = self._alloc(nbytes)
        if not ptr:
            raise MemoryError(f"TVMWasmAllocSpace({nbytes}) failed")
        self._spill[ptr] = self.top
        return ptr

    def pop(self, ptr: int) -> None:
        """Release the frame at `ptr` and everything pushed after it."""
        if ptr in self._spill:
            self.top = self._spill.pop(ptr)
            self._free(ptr)
        else:
            self.top = ptr - self.base

    def dispose(self) -> None:
        for ptr in list(self._spill):
            self._free(ptr)
        self._spill.clear()
        if self.base:
            self._free(self.base)
            self.base = 0
