"""TVM FFI ABI on wasm32, in pure Python: type indices, struct layouts, packing of `TVMFFIAny`.

Everything here is plain `struct` over bytes, so it runs (and is unit-tested) on CPython as well as
on Pyodide. Layouts (wasm32, little endian):

- ``TVMFFIAny`` (16 bytes): ``int32 type_index; uint32 zero_padding | small_str_len;
  union {int64, double, void*, DLDataType, DLDevice, char[8]}``.
- ``TVMFFIObject`` header (24 bytes): ``uint64 combined_ref_count; int32 type_index;
  uint32 pad; void (*deleter)`` (8-byte slot). Object payloads follow the header:
  String/Bytes ``{const char* data; size_t size}``, Shape ``{const int64_t* data; size_t size}``,
  Tensor a ``DLTensor``.
- ``DLTensor`` (40 bytes): ``void* data; DLDevice device; int32 ndim; DLDataType dtype;
  int64_t* shape; int64_t* strides; uint64 byte_offset`` (at 32, 8-aligned).
- ``TVMFFIByteArray`` (8 bytes): ``const char* data; size_t size``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Sequence

from webrt.errors import WebrtError

ANY_SIZE = 16
OBJECT_HEADER_SIZE = 24
DLTENSOR_SIZE = 40


class TypeIndex:
    """`TVMFFITypeIndex` values (static ones; dynamic types start at DYN_OBJECT_BEGIN)."""

    NONE = 0
    INT = 1
    BOOL = 2
    FLOAT = 3
    OPAQUE_PTR = 4
    DATA_TYPE = 5
    DEVICE = 6
    DLTENSOR_PTR = 7
    RAW_STR = 8
    BYTE_ARRAY_PTR = 9
    OBJECT_RVALUE_REF = 10
    SMALL_STR = 11
    SMALL_BYTES = 12
    STATIC_OBJECT_BEGIN = 64
    OBJECT = 64
    STR = 65
    BYTES = 66
    ERROR = 67
    FUNCTION = 68
    SHAPE = 69
    TENSOR = 70
    ARRAY = 71
    MAP = 72
    MODULE = 73
    OPAQUE_PY_OBJECT = 74
    DYN_OBJECT_BEGIN = 128


class DeviceType:
    """DLPack device type codes webrt uses."""

    CPU = 1
    WEBGPU = 15


class AllocatorKind:
    """TVM VM allocator kinds (`vm_initialization` arguments)."""

    NAIVE = 1
    POOLED = 2


class WasmRuntimeError(WebrtError, RuntimeError):
    """An error raised inside the TVM runtime of a model library (with TVM's error kind)."""

    def __init__(self, message: str, kind: str = "RuntimeError"):
        super().__init__(message)
        self.kind = kind


class WasmTrapError(WasmRuntimeError):
    """The wasm instance trapped (a C++ abort): it is unusable from now on."""


@dataclass(frozen=True)
class Device:
    """A DLDevice (type code + id)."""

    device_type: int
    device_id: int = 0

    def __repr__(self) -> str:
        name = {DeviceType.CPU: "cpu", DeviceType.WEBGPU: "webgpu"}.get(self.device_type, str(self.device_type))
        return f"Device({name}:{self.device_id})"


CPU = Device(DeviceType.CPU, 0)
WEBGPU = Device(DeviceType.WEBGPU, 0)


@dataclass(frozen=True)
class OpaquePtr:
    """A raw `void*` argument (an address in wasm memory, or a WebGPU buffer id)."""

    value: int


#: DLDataTypeCode -> name prefix
_DTYPE_CODES = {0: "int", 1: "uint", 2: "float", 3: "handle", 4: "bfloat", 6: "bool"}
_DTYPE_NAMES = {v: k for k, v in _DTYPE_CODES.items()}


@dataclass(frozen=True)
class DataType:
    """A DLDataType; `str()` gives TVM's name ("float32", "int32", "bool", ...)."""

    code: int
    bits: int
    lanes: int = 1

    @staticmethod
    def parse(name: str) -> DataType:
        """'float32' -> DataType(2, 32, 1); also 'float16x4', 'bool'."""
        base, _, lanes = name.partition("x")
        if base == "bool":
            return DataType(6, 8, int(lanes or 1))
        for prefix in ("bfloat", "float", "uint", "int"):
            if base.startswith(prefix) and base[len(prefix):].isdigit():
                return DataType(_DTYPE_NAMES[prefix], int(base[len(prefix):]), int(lanes or 1))
        raise ValueError(f"unknown dtype {name!r}")

    @property
    def itemsize(self) -> int:
        return (self.bits * self.lanes + 7) // 8

    def __str__(self) -> str:
        if self.code == 6 and self.bits == 8:
            base = "bool"
        else:
            base = f"{_DTYPE_CODES.get(self.code, f'code{self.code}_')}{self.bits}"
        return base if self.lanes == 1 else f"{base}x{self.lanes}"


@dataclass(frozen=True)
class ObjectRef:
    """Anything that is a TVM object handle: packed as (type_index, handle)."""

    type_index: int
    handle: int


@dataclass(frozen=True)
class DLTensorInfo:
    """The fields of a DLTensor read from memory."""

    data: int
    device: Device
    ndim: int
    dtype: DataType
    shape_ptr: int
    strides_ptr: int
    byte_offset: int


_ANY = struct.Struct("<iIq")
_ANY_F = struct.Struct("<iId")
_ANY_DEV = struct.Struct("<iIii")
_ANY_DTYPE = struct.Struct("<iIBBH4x")
_ANY_HEAD = struct.Struct("<iI")
_BYTE_ARRAY = struct.Struct("<II")
_DLTENSOR = struct.Struct("<IiiiBBHII4xQ")


def align8(n: int) -> int:
    return (n + 7) & ~7


def pack_args(values: Sequence[Any], base: int, with_result: bool = True) -> tuple[bytearray, int]:
    """Lay out `values` as a `TVMFFIAny[]` at address `base`, plus a result slot.

    Returns (frame bytes, byte offset of the result slot, or -1). Strings become NUL-terminated
    `RawStr`s and bytes-likes `TVMFFIByteArray*`s, stored after the Any array in the same frame.
    Accepted values: None, bool, int, float, str, bytes-likes, Device, DataType, OpaquePtr and
    ObjectRef-like objects (anything with `type_index` and `handle`).
    """
    n = len(values)
    head = ANY_SIZE * n
    res_off = head if with_result else -1
    frame = bytearray(head + (ANY_SIZE if with_result else 0))
    for i, v in enumerate(values):
        off = ANY_SIZE * i
        if v is None:
            _ANY.pack_into(frame, off, TypeIndex.NONE, 0, 0)
        elif v is True or v is False:
            _ANY.pack_into(frame, off, TypeIndex.BOOL, 0, int(v))
        elif isinstance(v, int):
            if not -(1 << 63) <= v < (1 << 63):
                raise OverflowError(f"argument {i}: {v} does not fit in int64")
            _ANY.pack_into(frame, off, TypeIndex.INT, 0, v)
        elif isinstance(v, float):
            _ANY_F.pack_into(frame, off, TypeIndex.FLOAT, 0, v)
        elif isinstance(v, str):
            data = v.encode()
            if b"\0" in data:
                raise ValueError(f"argument {i}: string contains a NUL byte")
            ptr = base + len(frame)
            frame += data + b"\0"
            frame += bytes(align8(len(frame)) - len(frame))
            _ANY.pack_into(frame, off, TypeIndex.RAW_STR, 0, ptr)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            data = bytes(v)
            arr_ptr = base + len(frame)
            data_ptr = arr_ptr + 8
            frame += _BYTE_ARRAY.pack(data_ptr, len(data)) + data
            frame += bytes(align8(len(frame)) - len(frame))
            _ANY.pack_into(frame, off, TypeIndex.BYTE_ARRAY_PTR, 0, arr_ptr)
        elif isinstance(v, Device):
            _ANY_DEV.pack_into(frame, off, TypeIndex.DEVICE, 0, v.device_type, v.device_id)
        elif isinstance(v, DataType):
            _ANY_DTYPE.pack_into(frame, off, TypeIndex.DATA_TYPE, 0, v.code, v.bits, v.lanes)
        elif isinstance(v, OpaquePtr):
            _ANY.pack_into(frame, off, TypeIndex.OPAQUE_PTR if v.value else TypeIndex.NONE, 0, v.value)
        elif hasattr(v, "type_index") and hasattr(v, "handle"):
            handle = v.handle
            if not handle:
                raise ValueError(f"argument {i}: {type(v).__name__} has been disposed")
            _ANY.pack_into(frame, off, v.type_index, 0, handle)
        else:
            raise TypeError(f"argument {i}: cannot pass {type(v).__name__} to a TVM function")
    if with_result:
        _ANY.pack_into(frame, res_off, TypeIndex.NONE, 0, 0)
    return frame, res_off


def unpack_any_head(raw: bytes | bytearray | memoryview, off: int = 0) -> tuple[int, int]:
    """(type_index, small_str_len) of the Any at `off`."""
    return _ANY_HEAD.unpack_from(raw, off)


def unpack_pod(raw: bytes | bytearray | memoryview, off: int = 0) -> Any:
    """The Python value of a POD Any (None/int/bool/float/opaque ptr/device/small str/bytes).

    Object-typed Anys return their handle (int); the caller wraps it.
    """
    tindex, small_len = _ANY_HEAD.unpack_from(raw, off)
    if tindex == TypeIndex.NONE:
        return None
    if tindex == TypeIndex.INT:
        return _ANY.unpack_from(raw, off)[2]
    if tindex == TypeIndex.BOOL:
        return _ANY.unpack_from(raw, off)[2] != 0
    if tindex == TypeIndex.FLOAT:
        return _ANY_F.unpack_from(raw, off)[2]
    if tindex == TypeIndex.DEVICE:
        _, _, dt, di = _ANY_DEV.unpack_from(raw, off)
        return Device(dt, di)
    if tindex == TypeIndex.DATA_TYPE:
        _, _, code, bits, lanes = _ANY_DTYPE.unpack_from(raw, off)
        return DataType(code, bits, lanes)
    if tindex == TypeIndex.SMALL_STR:
        return bytes(raw[off + 8 : off + 8 + small_len]).decode("utf-8", "replace")
    if tindex == TypeIndex.SMALL_BYTES:
        return bytes(raw[off + 8 : off + 8 + small_len])
    # pointers and object handles: the low 32 bits
    return _ANY.unpack_from(raw, off)[2] & 0xFFFFFFFF


def unpack_byte_array(raw: bytes | bytearray | memoryview, off: int = 0) -> tuple[int, int]:
    """(data pointer, size) of a `TVMFFIByteArray`."""
    return _BYTE_ARRAY.unpack_from(raw, off)


def unpack_dltensor(raw: bytes | bytearray | memoryview, off: int = 0) -> DLTensorInfo:
    """Decode a 40-byte DLTensor."""
    data, dev_type, dev_id, ndim, code, bits, lanes, shape_ptr, strides_ptr, byte_offset = _DLTENSOR.unpack_from(
        raw, off
    )
    return DLTensorInfo(data, Device(dev_type, dev_id), ndim, DataType(code, bits, lanes), shape_ptr, strides_ptr,
                        byte_offset)


def unpack_int64s(raw: bytes | bytearray | memoryview, count: int, off: int = 0) -> tuple[int, ...]:
    return struct.unpack_from(f"<{count}q", raw, off)


def split_error(what: str) -> tuple[str, str]:
    """Split TVM's error text into (kind, message).

    TVM prints errors as an optional Python-style traceback ("Traceback ...", indented "File"
    lines) followed by "Kind: message" (possibly several lines); fatal log lines look like
    "[FATAL] file:line: message". The last such error in `what` wins.
    """
    lines = what.strip().splitlines()
    found: tuple[int, str, str] | None = None
    for idx, line in enumerate(lines):
        if line.startswith("[FATAL] "):
            found = (idx, "InternalError", line[len("[FATAL] "):])
            continue
        if not line or line[0].isspace() or line.startswith("Traceback"):
            continue
        head, sep, rest = line.partition(": ")
        if sep and head.isidentifier() and head[0].isupper() and (head.endswith(("Error", "Exception"))
                                                                  or head == "InternalError"):
            found = (idx, head, rest)
    if found is None:
        return "RuntimeError", what.strip()
    idx, kind, first = found
    tail = [ln for ln in lines[idx + 1 :] if not ln.startswith("Traceback")]
    return kind, "\n".join([first, *tail]).strip()
