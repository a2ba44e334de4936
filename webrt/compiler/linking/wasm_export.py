"""Export a TVM relax executable to a model library (.wasm), and read .wasm imports.

`export_wasm` links the executable's objects (host code for wasm32 plus the packed WebGPU shader
table) with TVM's web runtime objects (`web_runtime.ensure_web_runtime`) using Emscripten. The
host objects are written as wasm objects (`object_format = "o"`): TVM's default LLVM-22 bitcode
cannot be read by Emscripten 3.1.6's wasm-ld 14.

A CPU library (``webrt compile --device wasm``: every kernel is wasm32+simd128 code, no shaders)
is linked the same way with ``webgpu=False``: against `wasm_runtime` and `tvmjs_support` only.
It also links webrt's thread pool object over a shared, imported memory
(`webrt.compiler.linking.thread_pool`), so the browser may run TVM's parallel loops on several
workers (`webrt.wasm.threads`); it imports ``env.memory`` besides a WebGPU library's 11 imports,
and exports that memory again (`export_memory`: TVM's JS runtime reads ``exports.memory``).
It links in about 1.6 s at -O1 for SmolLM2.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from webrt.compiler.linking.web_runtime import (
    EMCC_INSTALL_HINT,
    emcc_env,
    ensure_web_runtime,
    find_emcc,
    object_paths,
)
from webrt.compiler.linking.thread_pool import LINK_FLAGS as THREAD_LINK_FLAGS
from webrt.compiler.linking.thread_pool import ensure_thread_pool_object
from webrt.errors import ModelLibraryError, ToolchainError

#: Link flags: TVM's `create_tvmjs_wasm` set, with -O1 (-O3 spends minutes in wasm-opt for the
#: same code). No ASYNCIFY: TVM's model libraries do not need it (and it doubles the size).
LINK_FLAGS: tuple[str, ...] = (
    "-O1",
    "--no-entry",
    "-s", "WASM_BIGINT=1",
    "-s", "ERROR_ON_UNDEFINED_SYMBOLS=0",
    "-s", "STANDALONE_WASM=1",
    "-s", "ALLOW_MEMORY_GROWTH=1",
    "-s", "INITIAL_MEMORY=160MB",
)
_LINK_TIMEOUT_S = 900


class _Exportable(Protocol):
    def export_library(self, file_name: str, *, fcompile: Any = ..., **kwargs: Any) -> Any: ...


class _EmccLinker:
    """An `export_library` fcompile that links with emcc against the web runtime objects."""

    object_format = "o"

    def __init__(self, emcc: str, runtime_objects: Sequence[Path], options: Sequence[str]):
        self.emcc = emcc
        self.runtime_objects = [str(p) for p in runtime_objects]
        self.options = list(options)

    def __call__(self, output: str, objects: Sequence[str], options: Any = None, **_: Any) -> None:
        extra = [options] if isinstance(options, str) else list(options or [])
        cmd = [self.emcc, *LINK_FLAGS, "-o", output]
        cmd += [*self.runtime_objects, *objects, *self.options, *extra]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=emcc_env(), timeout=_LINK_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise ToolchainError(f"emcc link timed out after {_LINK_TIMEOUT_S} s") from exc
        except OSError as exc:
            raise ToolchainError(f"could not run {self.emcc}: {exc}; {EMCC_INSTALL_HINT}") from exc
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-60:])
            raise ToolchainError(f"emcc link failed (exit {proc.returncode}):\n{tail}")


def export_wasm(
    executable: _Exportable,
    output_path: str | os.PathLike[str],
    *,
    runtime_dir: Path | None = None,
    options: Sequence[str] = (),
    webgpu: bool = True,
) -> Path:
    """Export `executable` (from `tvm.relax.build` with a wasm32 host, `system_lib=True`) to a .wasm file.

    `runtime_dir` holds the web runtime objects (default: `ensure_web_runtime()`, which builds
    them on first use); `options` are extra emcc link flags; `webgpu=False` leaves TVM's WebGPU
    runtime out (a CPU library). The file appears atomically.
    """
    if not hasattr(executable, "export_library"):
        raise TypeError(f"expected a relax executable or runtime Module, got {type(executable)!r}")
    out = Path(output_path)
    emcc = find_emcc()
    objects = object_paths(runtime_dir if runtime_dir is not None else ensure_web_runtime(), webgpu=webgpu)
    if not webgpu:  # a CPU library: the thread pool over shared memory
        objects.append(ensure_thread_pool_object())
        options = [*THREAD_LINK_FLAGS, *options]
    missing = [p for p in objects if not p.is_file()]
    if missing:
        raise ToolchainError(f"web runtime objects missing: {', '.join(map(str, missing))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # emcc picks the output kind from the suffix, so the temporary name must end in .wasm.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".partial.wasm", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tempfile.TemporaryDirectory(prefix="webrt-export-") as workspace:
            executable.export_library(
                str(tmp), fcompile=_EmccLinker(emcc, objects, options), workspace_dir=workspace
            )
        if tmp.stat().st_size == 0:
            raise ToolchainError(f"emcc produced an empty {tmp.name}")
        if not webgpu:
            tmp.write_bytes(export_memory(tmp.read_bytes()))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# --- a small reader of the wasm binary format ------------------------------------------------

_WASM_MAGIC = b"\0asm"
_SECTION_IMPORT, _SECTION_EXPORT = 2, 7


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ModelLibraryError("truncated wasm binary")
        self.pos += 1
        return self.data[self.pos - 1]

    def uleb(self) -> int:
        result, shift = 0, 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ModelLibraryError("malformed LEB128 integer in wasm binary")

    def name(self) -> str:
        n = self.uleb()
        if self.pos + n > self.end:
            raise ModelLibraryError("truncated name in wasm binary")
        self.pos += n
        return self.data[self.pos - n : self.pos].decode("utf-8")

    def limits(self) -> None:
        flags = self.byte()
        self.uleb()
        if flags & 1:
            self.uleb()


def _sections(data: bytes) -> list[tuple[int, int, int]]:
    """(id, start, end) of each section."""
    if data[:4] != _WASM_MAGIC or len(data) < 8:
        raise ModelLibraryError("not a WebAssembly binary (bad magic)")
    r, out = _Reader(data, 8), []
    while r.pos < len(data):
        sid, size = r.byte(), r.uleb()
        if r.pos + size > len(data):
            raise ModelLibraryError("truncated section in wasm binary")
        out.append((sid, r.pos, r.pos + size))
        r.pos += size
    return out


def _skip_import_desc(r: _Reader, kind: int) -> None:
    if kind == 0:  # function: type index
        r.uleb()
    elif kind == 1:  # table: reftype, limits
        r.byte()
        r.limits()
    elif kind == 2:  # memory: limits
        r.limits()
    elif kind == 3:  # global: valtype, mutability
        r.byte()
        r.byte()
    elif kind == 4:  # tag: attribute, type index
        r.byte()
        r.uleb()
    else:
        raise ModelLibraryError(f"unknown wasm import kind {kind}")


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def export_memory(data: bytes, name: str = "memory") -> bytes:
    """`data` (a .wasm that imports its memory) with that memory exported too, as `name`.

    wasm-ld 14 cannot export an imported memory; TVM's JS runtime (and webrt's host) read
    ``exports.memory``. Re-exporting an import is valid wasm."""
    if name in wasm_exports_of(data):
        return data
    _sections(data)  # validates the header and every section's size
    r = _Reader(data, 8)
    while r.pos < len(data):
        header, sid = r.pos, r.byte()
        size = r.uleb()
        start, end = r.pos, r.pos + size
        if sid == _SECTION_EXPORT:
            r = _Reader(data, start, end)
            count = r.uleb()
            body = _uleb(count + 1) + data[r.pos:end] + _uleb(len(name)) + name.encode() + b"\x02" + _uleb(0)
            return data[:header] + bytes([_SECTION_EXPORT]) + _uleb(len(body)) + body + data[end:]
        r.pos = end
    raise ModelLibraryError("the .wasm has no export section")


def wasm_imports(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(module, name) of every import of a .wasm file, in declaration order."""
    data = Path(path).read_bytes()
    result: list[tuple[str, str]] = []
    for sid, start, end in _sections(data):
        if sid == _SECTION_IMPORT:
            r = _Reader(data, start, end)
            for _ in range(r.uleb()):
                module, name = r.name(), r.name()
                _skip_import_desc(r, r.byte())
                result.append((module, name))
    return result


def wasm_exports(path: str | os.PathLike[str]) -> list[str]:
    """Names of every export of a .wasm file, in declaration order."""
    return wasm_exports_of(Path(path).read_bytes())


def wasm_exports_of(data: bytes) -> list[str]:
    """Names of every export of a wasm binary, in declaration order."""
    result: list[str] = []
    for sid, start, end in _sections(data):
        if sid == _SECTION_EXPORT:
            r = _Reader(data, start, end)
            for _ in range(r.uleb()):
                result.append(r.name())
                r.byte()
                r.uleb()
    return result
