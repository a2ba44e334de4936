"""Native (CPython) tests of the pure logic of webrt.wasm: the TVM FFI ABI, arg frames, WASI,
kernel launch specs, the Pyodide bundle. The browser side is tests/browser/test_browser_runtime.py."""

from __future__ import annotations

import ast
import struct
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from webrt.wasm import ffi
from webrt.tools.bundle import build_bundle, bundle_files
from webrt.wasm.ffi import (
    ANY_SIZE,
    CPU,
    WEBGPU,
    DataType,
    DLTensorInfo,
    ObjectRef,
    OpaquePtr,
    TypeIndex,
    pack_args,
    split_error,
    unpack_any_head,
    unpack_dltensor,
    unpack_pod,
)
from webrt.wasm.memory import ArgStack, MemoryOps
from webrt.wasm.wasi import EBADF, ESUCCESS, ProcExit, Wasi
from webrt.wasm.webgpu import KernelSpec, check_library, f32_alternative, fold_grid, GPUInfo
from webrt.wasm.webgpu.buffers import RECYCLE_MAX_BYTES, BufferTable
from webrt.wasm.webgpu.device import LiveBuffers
from webrt.errors import FeatureNotSupportedError, ModelLibraryError

REPO = Path(__file__).resolve().parents[2]


class BytesMemory(MemoryOps):
    """Linear memory backed by a bytearray: `webrt.wasm.memory.Memory` on CPython."""

    def __init__(self, size: int):
        self.data = bytearray(size)

    def read(self, ptr: int, nbytes: int) -> bytes:
        if ptr < 0 or ptr + nbytes > len(self.data):
            raise IndexError(f"read [{ptr}, {ptr + nbytes}) outside memory of {len(self.data)} bytes")
        return bytes(self.data[ptr : ptr + nbytes])

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if ptr < 0 or ptr + n > len(self.data):
            raise IndexError(f"write [{ptr}, {ptr + n}) outside memory of {len(self.data)} bytes")
        self.data[ptr : ptr + n] = data

    def refresh(self) -> None:
        pass


def _anys(frame: bytes, n: int) -> list[tuple[int, int, int]]:
    return [struct.unpack_from("<iIq", frame, ANY_SIZE * i) for i in range(n)]


def test_pack_args_pods_and_result_slot() -> None:
    frame, res = pack_args([None, True, -5, 2.5, CPU, DataType.parse("float32"), OpaquePtr(12)], base=1000)
    assert res == 7 * ANY_SIZE and len(frame) == 8 * ANY_SIZE
    heads = [unpack_any_head(frame, ANY_SIZE * i)[0] for i in range(8)]
    assert heads == [TypeIndex.NONE, TypeIndex.BOOL, TypeIndex.INT, TypeIndex.FLOAT, TypeIndex.DEVICE,
                     TypeIndex.DATA_TYPE, TypeIndex.OPAQUE_PTR, TypeIndex.NONE]
    assert [unpack_pod(frame, ANY_SIZE * i) for i in range(7)] == [
        None, True, -5, 2.5, CPU, DataType(2, 32, 1), 12]
    # padding word is zero for every non-small-string value
    assert all(struct.unpack_from("<I", frame, ANY_SIZE * i + 4)[0] == 0 for i in range(8))


def test_pack_args_strings_and_bytes_live_in_the_frame() -> None:
    base = 4096
    frame, res = pack_args(["héllo", b"\x00\x01\x02"], base=base)
    mem = BytesMemory(8192)
    mem.write(base, frame)
    (t0, _, p0), (t1, _, p1) = _anys(frame, 2)
    assert t0 == TypeIndex.RAW_STR and mem.read_cstr(p0) == "héllo"
    assert t1 == TypeIndex.BYTE_ARRAY_PTR
    data_ptr, size = struct.unpack("<II", mem.read(p1, 8))
    assert size == 3 and mem.read(data_ptr, 3) == b"\x00\x01\x02"
    assert res == 2 * ANY_SIZE and p0 > base + res  # extras after the result slot
    assert len(frame) % 8 == 0


def test_pack_args_objects_and_errors() -> None:
    frame, _ = pack_args([ObjectRef(TypeIndex.TENSOR, 0x1234)], base=0, with_result=False)
    assert _anys(frame, 1) == [(TypeIndex.TENSOR, 0, 0x1234)]
    with pytest.raises(ValueError, match="disposed"):
        pack_args([ObjectRef(TypeIndex.TENSOR, 0)], base=0)
    with pytest.raises(TypeError, match="cannot pass"):
        pack_args([object()], base=0)
    with pytest.raises(OverflowError):
        pack_args([1 << 63], base=0)
    with pytest.raises(ValueError, match="NUL"):
        pack_args(["a\0b"], base=0)


def test_small_strings_and_bytes_unpack() -> None:
    raw = struct.pack("<iI", TypeIndex.SMALL_STR, 3) + b"abc\0\0\0\0\0"
    assert unpack_pod(raw) == "abc"
    raw = struct.pack("<iI", TypeIndex.SMALL_BYTES, 2) + b"\x00\xff" + bytes(6)
    assert unpack_pod(raw) == b"\x00\xff"


def test_dtypes() -> None:
    for name in ("float32", "float16", "int32", "uint8", "int64", "bfloat16", "bool", "float16x4"):
        assert str(DataType.parse(name)) == name
    assert DataType.parse("float16").itemsize == 2 and DataType.parse("bool").itemsize == 1
    with pytest.raises(ValueError):
        DataType.parse("complex64")


def test_dltensor_layout_is_decoded() -> None:
    info = DLTensorInfo(7, WEBGPU, 3, DataType.parse("int32"), 0x100, 0, 64)
    # the C layout: data ptr, device {type, id}, ndim, dtype {code, bits, lanes}, shape ptr, strides ptr,
    # 4 bytes of padding, byte_offset (uint64 at 32)
    raw = struct.pack("<IiiiBBHII4xQ", 7, WEBGPU.device_type, WEBGPU.device_id, 3, 0, 32, 1, 0x100, 0, 64)
    assert len(raw) == ffi.DLTENSOR_SIZE
    assert struct.unpack_from("<Q", raw, 32)[0] == 64  # byte_offset at 32 (8-aligned)
    assert unpack_dltensor(raw) == info


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("Traceback (most recent call last):\n  File \"x.cc\", line 1, in f\nTypeError: bad arg\nmore",
         "TypeError", "bad arg\nmore"),
        ("[FATAL] src/a.cc:12: Check failed: x", "InternalError", "src/a.cc:12: Check failed: x"),
        ("ValueError: first\nIndexError: Index 5 out of bounds 1", "IndexError", "Index 5 out of bounds 1"),
        ("something odd", "RuntimeError", "something odd"),
    ],
)
def test_split_error(text: str, kind: str, message: str) -> None:
    assert split_error(text) == (kind, message)


def test_arg_stack_nests_and_spills() -> None:
    allocs: list[tuple[int, int]] = []
    next_addr = [1 << 16]

    def alloc(n: int) -> int:
        ptr = next_addr[0]
        next_addr[0] += (n + 7) & ~7
        allocs.append((ptr, n))
        return ptr

    freed: list[int] = []
    stack = ArgStack(alloc, freed.append, size=64)
    a = stack.push(20)
    b = stack.push(10)
    assert a == stack.base and b == a + 24
    big = stack.push(100)  # does not fit: its own allocation
    assert big not in (a, b) and stack.top == 40 and allocs[-1][0] == big
    stack.pop(big)
    assert freed == [big] and stack.top == 40
    stack.pop(b)
    assert stack.top == 24
    stack.pop(a)
    assert stack.top == 0
    stack.dispose()
    assert freed[-1] == allocs[0][0]


def test_wasi_fd_write_clock_and_exit() -> None:
    mem = BytesMemory(4096)
    lines: list[tuple[int, str]] = []
    wasi = Wasi(mem, log=lambda fd, line: lines.append((fd, line)), monotonic_ns=lambda: 123456789012,
                realtime_ns=lambda: 5)
    mem.write(100, b"hello\nwor")
    mem.write(200, b"ld\n")
    mem.write(300, struct.pack("<IIII", 100, 9, 200, 3))
    assert wasi.fd_write(2, 300, 2, 400) == ESUCCESS
    assert struct.unpack("<I", mem.read(400, 4))[0] == 12
    assert lines == [(2, "hello"), (2, "world")]
    assert wasi.fd_write(5, 300, 2, 400) == EBADF
    assert wasi.clock_time_get(1, 0, 500) == ESUCCESS
    assert struct.unpack("<Q", mem.read(500, 8))[0] == 123456789012
    assert wasi.clock_time_get(0, 0, 500) == ESUCCESS and struct.unpack("<Q", mem.read(500, 8))[0] == 5
    assert wasi.environ_sizes_get(600, 604) == ESUCCESS and mem.read(600, 8) == bytes(8)
    with pytest.raises(ProcExit):
        wasi.proc_exit(1)
    assert "world" in wasi.recent_output()


FINFO = {
    "name": "k",
    "arg_types": ["handle", "int32", "handle", "float32", "uint32"],
    "launch_param_tags": ["blockIdx.x", "blockIdx.y", "threadIdx.x", "paramWriteAccess:[0,1]"],
}


def test_kernel_spec_decodes_launch_args_and_packs_uniforms() -> None:
    spec = KernelSpec.from_info(FINFO)
    assert spec.buffer_args == [0, 2] and spec.pod_args == [1, 3, 4]
    assert spec.write_access == [0, 1] and spec.dispatch_to_dim == [0, 1, 3]
    frame, _ = pack_args([OpaquePtr(3), -2, OpaquePtr(9), 0.5, 7, 70000, 2, 64], base=0, with_result=False)
    vals = spec.arg_struct().unpack(frame)
    assert vals == (3, -2, 9, 0.5, 7, 70000, 2, 64)
    uniform = spec.pod_struct().pack(-2, 0.5, 7, 70000)
    assert struct.unpack("<ifII", uniform) == (-2, 0.5, 7, 70000)
    with pytest.raises(ModelLibraryError, match="unknown launch tag"):
        KernelSpec.from_info({**FINFO, "launch_param_tags": ["vthread"]})


def test_grid_fold_matches_tvm() -> None:
    assert fold_grid(100, 1) == (100, 1)
    x, z = fold_grid(70001, 1)
    assert x < 65536 and x * z >= 70001 and z == 2
    x, z = fold_grid(1 << 20, 1)
    assert (x, z) == (32768, 32)


def _gpu(features: set[str], subgroup: int = 4) -> GPUInfo:
    return GPUInfo(None, None, frozenset(features), {}, {"vendor": "v", "architecture": "a"}, subgroup, subgroup)


def test_check_library_refusals() -> None:
    meta = {"quantization": "q4f16_1", "webrt": {"device": "webgpu", "model_dtype": "float16",
                                                  "required_features": ["shader-f16"], "subgroup_size": 0}}
    with pytest.raises(FeatureNotSupportedError, match="q4f32_1"):
        check_library(meta, _gpu({"subgroups"}))
    check_library(meta, _gpu({"shader-f16"}))
    sub = {"quantization": "q4f32_1", "webrt": {"device": "webgpu", "subgroup_size": 32}}
    with pytest.raises(FeatureNotSupportedError, match="subgroups of 32"):
        check_library(sub, _gpu({"subgroups"}, 4))
    check_library(sub, _gpu({"subgroups"}, 32))
    with pytest.raises(ModelLibraryError, match="cpu"):
        check_library({"webrt": {"device": "cpu"}}, _gpu(set()))
    assert f32_alternative("q0f16") == "q0f32" and f32_alternative(None) == "q4f32_1"


def test_bundle_holds_the_browser_packages_only() -> None:
    names = set(zipfile.ZipFile(BytesIO(build_bundle())).namelist())
    for must in ("webrt/__init__.py", "webrt/errors.py", "webrt/wasm/instance.py", "webrt/engine/model_runner.py",
                 "webrt/tokenizer/tokenizer.py", "webrt/conversation/__init__.py", "webrt/ndarray_cache/format.py"):
        assert must in names
    assert not any(n.startswith(("webrt/compiler/", "webrt/native/", "webrt/models/", "webrt/tools/")) for n in names)
    assert build_bundle() == build_bundle()  # deterministic


def test_browser_modules_import_nothing_native() -> None:
    """webrt.wasm imports only the stdlib, webrt's pure modules, and (lazily) js / pyodide."""
    allowed_roots = {"__future__", "json", "struct", "time", "typing", "dataclasses", "functools", "collections",
                     "weakref", "io", "zipfile", "pathlib", "webrt", "js", "pyodide", "asyncio"}
    for path in bundle_files():
        if not path.as_posix().endswith(".py") or "/wasm/" not in path.as_posix():
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed_roots, f"{path}: imports {roots - allowed_roots}"


def test_model_library_needs_no_asyncify() -> None:
    """The .wasm export_wasm links has no Asyncify instrumentation (see webrt.wasm.runtime)."""
    import shutil

    if shutil.which("emcc") is None:
        pytest.skip("emcc is not installed")
    import model_factory
    from webrt.compiler.linking.wasm_export import wasm_exports

    art = model_factory.tiny_artifacts("llama2", devices=("cpu", "webgpu"))
    exports = wasm_exports(art.libs["webgpu"])
    assert not [e for e in exports if e.startswith("asyncify")]
    from webrt.wasm.instance import REQUIRED_EXPORTS

    assert set(REQUIRED_EXPORTS) <= set(exports)


class _FakeBuffer:
    def __init__(self, size: int):
        self.size, self.destroyed = size, False

    def destroy(self) -> None:
        assert not self.destroyed
        self.destroyed = True


def test_buffer_table_recycles_small_buffers_and_counts_live_ones() -> None:
    """Freed buffers wait for `release_freed`; small ones are reused (same serial, bind groups kept),
    large ones destroyed with their bind groups; `destroy_all` leaves nothing live."""
    live = LiveBuffers()

    def create(size: int) -> _FakeBuffer:
        live.created(size)
        return _FakeBuffer(size)

    def destroy(buf: _FakeBuffer) -> None:
        live.destroyed(buf.size)
        buf.destroy()

    def check_size(size: int) -> None:  # the device's limit, as WebGPUContext passes it
        if size > 4 * RECYCLE_MAX_BYTES:
            raise MemoryError(f"a {size}-byte buffer exceeds this device's maxBufferSize")

    table = BufferTable(create, destroy, check_size)
    small, big = table.alloc(10), table.alloc(2 * RECYCLE_MAX_BYTES)
    assert table.buffer(small).size == 12 and (live.count, live.nbytes) == (2, 12 + 2 * RECYCLE_MAX_BYTES)
    table.remember_bind_group((0, table.serials[small]), "g-small")
    table.remember_bind_group((1, table.serials[big]), "g-big")
    serial = table.serials[small]
    table.free(small)
    table.free(big)
    assert table.has_freed and live.count == 2  # nothing released before the submit
    table.release_freed()
    assert live.count == 1 and not table.has_freed
    assert set(table.bind_groups) == {(0, serial)}  # the big buffer's bind group is gone
    again = table.alloc(12)
    assert table.serials[again] == serial and live.count == 1  # recycled, not created
    with pytest.raises(ValueError, match="not a live"):
        table.buffer(({small, big} - {again}).pop())  # ids are reused too
    with pytest.raises(MemoryError, match="maxBufferSize"):
        table.alloc(8 * RECYCLE_MAX_BYTES)
    table.free(again)
    table.destroy_all()
    assert (live.count, live.nbytes) == (0, 0) and table.bind_groups == {}
