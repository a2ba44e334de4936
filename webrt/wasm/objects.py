"""Python wrappers of TVM objects living in a wasm instance: Object, Function, Module, Tensor,
ShapeTuple, Array.

A wrapper owns one reference: it is released when the wrapper is garbage collected (CPython's
reference counting makes that prompt) or explicitly with `dispose()`. Wrappers reach their
instance (`webrt.wasm.instance.Instance`) only through the `ObjectHost` protocol, so this module
does not import the instance module.
"""

from __future__ import annotations

import struct
from functools import reduce
from typing import Any, Iterator, Protocol, Sequence

from webrt.wasm.ffi import (
    ANY_SIZE,
    DLTENSOR_SIZE,
    OBJECT_HEADER_SIZE,
    DataType,
    Device,
    DLTensorInfo,
    TypeIndex,
    unpack_dltensor,
    unpack_int64s,
)
from webrt.wasm.memory import Memory


class ObjectHost(Protocol):
    """What the wrappers use of the instance that owns their objects."""

    memory: Memory

    def dec_ref(self, handle: int) -> None: ...

    def type_key(self, type_index: int) -> str: ...

    def call_packed(self, handle: int, args: Sequence[Any]) -> Any: ...

    def module_get_function(self, mod: Module, name: str, query_imports: bool = True) -> Function | None: ...

    def borrow_any(self, raw: bytes | bytearray | memoryview, off: int = 0) -> Any: ...


class Object:
    """A reference-counted TVM object (`TVMFFIObject*` in wasm memory)."""

    __slots__ = ("inst", "handle", "type_index", "__weakref__")

    def __init__(self, inst: ObjectHost, handle: int, type_index: int = TypeIndex.OBJECT):
        self.inst = inst
        self.handle = handle
        self.type_index = type_index

    def dispose(self) -> None:
        """Drop this wrapper's reference now."""
        handle, self.handle = self.handle, 0
        if handle:
            self.inst.dec_ref(handle)

    def __del__(self) -> None:
        if getattr(self, "handle", 0):
            try:
                self.dispose()
            except Exception:  # noqa: BLE001 - the instance may already be gone
                pass

    @property
    def type_key(self) -> str:
        return self.inst.type_key(self.type_index)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.type_key} @{self.handle:#x}>"


class Function(Object):
    """A TVM packed function; call it with Python values."""

    __slots__ = ("name",)

    def __init__(self, inst: ObjectHost, handle: int, name: str = ""):
        super().__init__(inst, handle, TypeIndex.FUNCTION)
        self.name = name

    def __call__(self, *args: Any) -> Any:
        return self.inst.call_packed(self.handle, args)

    def __repr__(self) -> str:
        return f"<Function {self.name or '?'} @{self.handle:#x}>"


class Module(Object):
    """A runtime module (system library, VM executable)."""

    __slots__ = ("_functions",)

    def __init__(self, inst: ObjectHost, handle: int):
        super().__init__(inst, handle, TypeIndex.MODULE)
        self._functions: dict[str, Function | None] = {}

    def get_function(self, name: str, query_imports: bool = True) -> Function | None:
        """The function `name`, or None if the module has none (cached)."""
        key = f"{name}\0{int(query_imports)}"
        if key not in self._functions:
            fn = self.inst.module_get_function(self, name, query_imports)
            if fn is not None:
                fn.name = name
            self._functions[key] = fn
        return self._functions[key]

    def __getitem__(self, name: str) -> Function:
        fn = self.get_function(name)
        if fn is None:
            raise KeyError(f"the module has no function {name!r}")
        return fn

    def __contains__(self, name: str) -> bool:
        return self.get_function(name) is not None


class ShapeTuple(Object):
    """`ffi.Shape`: an immutable tuple of int64."""

    __slots__ = ("_values",)

    def __init__(self, inst: ObjectHost, handle: int, values: tuple[int, ...] | None = None):
        super().__init__(inst, handle, TypeIndex.SHAPE)
        self._values = values

    def know_values(self, values: tuple[int, ...]) -> None:
        """Record the values the shape was created with (saves reading them back)."""
        self._values = values

    @property
    def values(self) -> tuple[int, ...]:
        if self._values is None:
            raw = self.inst.memory.read(self.handle + OBJECT_HEADER_SIZE, 8)
            data, size = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")
            self._values = unpack_int64s(self.inst.memory.read(data, 8 * size), size) if size else ()
        return self._values

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[int]:
        return iter(self.values)

    def __repr__(self) -> str:
        return f"ShapeTuple{self.values}"


class Array(Object):
    """`ffi.Array`: items come back as Python values / wrappers.

    Read straight from memory: an ArrayObj is the object header followed by a
    `TVMFFISeqCell {void* data; int64 size; int64 capacity; deleter}` whose data is `TVMFFIAny[]`.
    """

    __slots__ = ()

    def __init__(self, inst: ObjectHost, handle: int):
        super().__init__(inst, handle, TypeIndex.ARRAY)

    def _cell(self) -> tuple[int, int]:
        data, size = struct.unpack("<I4xq", self.inst.memory.read(self.handle + OBJECT_HEADER_SIZE, 16))
        return data, size

    def __len__(self) -> int:
        return self._cell()[1]

    def __getitem__(self, index: int) -> Any:
        data, n = self._cell()
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for an Array of {n}")
        return self.inst.borrow_any(self.inst.memory.read(data + ANY_SIZE * index, ANY_SIZE))

    def __iter__(self) -> Iterator[Any]:
        data, n = self._cell()
        raw = self.inst.memory.read(data, ANY_SIZE * n) if n else b""
        return iter([self.inst.borrow_any(raw, ANY_SIZE * i) for i in range(n)])


class Tensor(Object):
    """A `tvm::runtime::Tensor` (DLTensor inside); `data` is a WebGPU buffer id on webgpu."""

    __slots__ = ("_info", "_shape")

    def __init__(self, inst: ObjectHost, handle: int):
        super().__init__(inst, handle, TypeIndex.TENSOR)
        self._info: DLTensorInfo | None = None
        self._shape: tuple[int, ...] | None = None

    def know_shape(self, shape: tuple[int, ...]) -> None:
        """Record the shape the tensor was created with (saves reading it back)."""
        self._shape = shape

    @property
    def dltensor_ptr(self) -> int:
        return self.handle + OBJECT_HEADER_SIZE

    @property
    def info(self) -> DLTensorInfo:
        if self._info is None:
            self._info = unpack_dltensor(self.inst.memory.read(self.dltensor_ptr, DLTENSOR_SIZE))
        return self._info

    @property
    def shape(self) -> tuple[int, ...]:
        if self._shape is None:
            info = self.info
            self._shape = unpack_int64s(self.inst.memory.read(info.shape_ptr, 8 * info.ndim), info.ndim) \
                if info.ndim else ()
        return self._shape

    @property
    def dtype(self) -> DataType:
        return self.info.dtype

    @property
    def device(self) -> Device:
        return self.info.device

    @property
    def data(self) -> int:
        """The data pointer: a wasm address on CPU, a buffer id on WebGPU."""
        return self.info.data

    @property
    def byte_offset(self) -> int:
        return self.info.byte_offset

    @property
    def nbytes(self) -> int:
        return reduce(lambda a, b: a * b, self.shape, 1) * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"<Tensor {self.shape} {self.dtype} on {self.device}>"


class TensorView:
    """A borrowed `DLTensor*` passed to a Python callback (valid only during the call)."""

    __slots__ = ("inst", "ptr", "_info")
    type_index = TypeIndex.DLTENSOR_PTR

    def __init__(self, inst: ObjectHost, ptr: int):
        self.inst, self.ptr = inst, ptr
        self._info = unpack_dltensor(inst.memory.read(ptr, DLTENSOR_SIZE))

    @property
    def handle(self) -> int:
        return self.ptr

    @property
    def info(self) -> DLTensorInfo:
        return self._info

    @property
    def shape(self) -> tuple[int, ...]:
        i = self._info
        return unpack_int64s(self.inst.memory.read(i.shape_ptr, 8 * i.ndim), i.ndim) if i.ndim else ()
