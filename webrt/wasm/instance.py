"""A TVM model library (.wasm) instantiated from Python on Pyodide, speaking TVM's FFI.

`Instance.create(wasm_bytes)` instantiates the module with `js.WebAssembly.instantiate`, providing
every import it has: the WASI subset (`webrt.wasm.wasi`), `env.TVMFFIWasmSafeCall` /
`env.TVMFFIWasmFunctionDeleter` (the wasm calls Python callables registered as packed
functions through these) and `env.emscripten_notify_memory_growth` (rebuilds memory views).

Calling convention (Python -> wasm): arguments are laid out as a `TVMFFIAny[]` frame on an
argument stack in wasm memory (`webrt.wasm.ffi.pack_args`), the call is
`TVMFFIFunctionCall(func, args, n, result)`, the result Any is owned by the caller and turned into
a Python value or an owning wrapper (`webrt.wasm.objects`). A non-zero return code becomes
`WasmRuntimeError` with TVM's message (`TVMFFIWasmGetLastError`).

Callbacks (wasm -> Python): a Python callable becomes a packed function with
`TVMFFIWasmFunctionCreate(table_index)`; the wasm calls `TVMFFIWasmSafeCall(table_index, args,
n, result)`. Arguments that are objects or strings are converted to owned values in place
(`TVMFFIAnyViewToOwnedAny`), as TVM's JS runtime does; the return value is written as an owned
Any. A Python exception becomes a TVM error (`TVMFFIErrorSetRaisedFromCStr`) and, when it reaches
the outer Python call, the original exception is raised again. "Raw" callbacks receive
(args_ptr, nargs, result_ptr) and decode themselves (kernel launches use this).

Traps: the library is built without C++ exception support, so a C++ error deep inside TVM (a
failed ICHECK, an error thrown through C++ frames) logs to stderr and aborts the instance
(`unreachable`). Such an instance is dead: `WasmTrapError` carries the logged message and every
later call refuses. Validate arguments in Python before calling in.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Sequence

from webrt.wasm.ffi import (
    ANY_SIZE,
    OBJECT_HEADER_SIZE,
    DataType,
    Device,
    OpaquePtr,
    TypeIndex,
    WasmRuntimeError,
    WasmTrapError,
    pack_args,
    split_error,
    unpack_any_head,
    unpack_byte_array,
    unpack_pod,
)
from webrt.wasm.memory import ArgStack, JsMemory
from webrt.wasm.objects import Array, Function, Module, Object, ShapeTuple, Tensor, TensorView
from webrt.wasm.wasi import Wasi

RawCallback = Callable[[int, int, int], int]

#: exports every TVM model library has that this runtime calls
REQUIRED_EXPORTS = (
    "memory", "TVMWasmAllocSpace", "TVMWasmFreeSpace", "TVMFFIWasmFunctionCreate", "TVMFFIWasmGetLastError",
    "TVMFFIFunctionCall", "TVMFFIFunctionGetGlobal", "TVMFFIFunctionSetGlobal", "TVMFFIObjectDecRef",
    "TVMFFIObjectIncRef", "TVMFFIAnyViewToOwnedAny", "TVMFFIErrorSetRaisedFromCStr", "TVMFFIGetTypeInfo",
)
_POD_TYPES = (type(None), bool, int, float, str, bytes, bytearray, memoryview, Device, DataType, OpaquePtr)
_OWN_IN_PLACE = (TypeIndex.RAW_STR, TypeIndex.BYTE_ARRAY_PTR, TypeIndex.OBJECT_RVALUE_REF)


def _console_log(fd: int, line: str) -> None:
    import js

    (js.console.error if fd == 2 else js.console.log)(f"[webrt wasm] {line}")


class Instance:
    """One instantiated model library (see the module docstring)."""

    def __init__(self, log: Callable[[int, str], None] | None = _console_log):
        self.wasi = Wasi(log=log, monotonic_ns=_perf_ns, realtime_ns=_date_ns)
        self.dead: str | None = None
        self._callbacks: list[RawCallback | None] = [None]
        self._free_slots: list[int] = []
        self._globals: dict[str, Function | None] = {}
        self._type_keys: dict[int, str] = {}
        self._pending_exc: BaseException | None = None
        self._shapes: dict[tuple[int, ...], ShapeTuple] = {}
        self._proxies: list[Any] = []
        self.memory: JsMemory
        self.exports: Any = None
        #: the compiled WebAssembly.Module, and the memory it imports (None: the module has its own)
        self.module: Any = None
        self.imported_memory: Any = None

    # --- creation ---------------------------------------------------------------------------------
    @classmethod
    async def create(cls, wasm: Any, log: Callable[[int, str], None] | None = _console_log) -> Instance:
        """Instantiate `wasm` (bytes, a JS ArrayBuffer/Uint8Array, or a compiled WebAssembly.Module)."""
        import js
        from pyodide.ffi import to_js

        from webrt.wasm.threads import imports_memory, new_shared_memory

        inst = cls(log)
        if isinstance(wasm, (bytes, bytearray, memoryview)):
            wasm = to_js(bytes(wasm))
        if str(js.Object.prototype.toString.call(wasm)) != "[object WebAssembly.Module]":
            wasm = await js.WebAssembly.compile(wasm)
        inst.module = wasm
        # a CPU library imports a shared memory (webrt.wasm.threads); a WebGPU library has its own
        inst.imported_memory = new_shared_memory() if imports_memory(wasm) else None
        imports = inst._import_object()
        instance = await js.WebAssembly.instantiate(wasm, imports)
        inst._attach(instance)
        return inst

    def _import_object(self) -> Any:
        import js
        from pyodide.ffi import create_proxy, to_js

        def proxy(fn: Callable[..., Any]) -> Any:
            p = create_proxy(fn)
            self._proxies.append(p)
            return p

        env = {
            "TVMFFIWasmSafeCall": proxy(self._safe_call),
            "TVMFFIWasmFunctionDeleter": proxy(self._function_deleter),
            "emscripten_notify_memory_growth": proxy(self._on_memory_growth),
        }
        if self.imported_memory is not None:
            env["memory"] = self.imported_memory
        wasi = {name: proxy(fn) for name, fn in self.wasi.imports().items()}
        return to_js({"env": env, "wasi_snapshot_preview1": wasi}, dict_converter=js.Object.fromEntries)

    def _attach(self, instance: Any) -> None:
        exports = instance.exports
        missing = [n for n in REQUIRED_EXPORTS if getattr(exports, n, None) is None]
        if missing:
            raise WasmRuntimeError(f"the .wasm lacks {', '.join(missing)}: it is not a TVM model library "
                                   "(build it with `webrt compile --device webgpu`)", "ValueError")
        self.exports = exports
        self.memory = JsMemory(exports.memory)
        self.wasi.memory = self.memory
        e = exports
        self._x_call = e.TVMFFIFunctionCall
        self._x_decref = e.TVMFFIObjectDecRef
        self._x_incref = e.TVMFFIObjectIncRef
        self._x_view_to_owned = e.TVMFFIAnyViewToOwnedAny
        self._x_last_error = e.TVMFFIWasmGetLastError
        self._x_set_raised = e.TVMFFIErrorSetRaisedFromCStr
        self._x_func_create = e.TVMFFIWasmFunctionCreate
        self._x_get_global = e.TVMFFIFunctionGetGlobal
        self._x_set_global = e.TVMFFIFunctionSetGlobal
        self._x_type_info = e.TVMFFIGetTypeInfo
        init = getattr(e, "_initialize", None)
        if init is not None:  # WASI reactor: runs the C++ static initializers (global registry)
            self._guard(init)
        self.stack = ArgStack(e.TVMWasmAllocSpace, e.TVMWasmFreeSpace)

    # --- imports ------------------------------------------------------------------------------------
    def _safe_call(self, index: int, args: int, nargs: int, result: int) -> int:
        fn = self._callbacks[index]
        if fn is None:
            return self._raise_into_wasm(RuntimeError(f"packed function slot {index} was deleted"))
        try:
            return fn(args, nargs, result)
        except BaseException as exc:  # noqa: BLE001 - handed to TVM, re-raised at the outer call
            return self._raise_into_wasm(exc)

    def _function_deleter(self, index: int) -> None:
        if 0 < index < len(self._callbacks) and self._callbacks[index] is not None:
            self._callbacks[index] = None
            self._free_slots.append(index)

    def _on_memory_growth(self, memory_index: int) -> None:
        self.memory.refresh()

    def _raise_into_wasm(self, exc: BaseException) -> int:
        self._pending_exc = exc
        name = type(exc).__name__
        kind = name if name.endswith("Error") else "RuntimeError"
        message = f"{name}: {exc}" if kind != name else str(exc) or name
        frame = kind.encode() + b"\0"
        msg_off = len(frame)
        frame += message.encode("utf-8", "replace").replace(b"\0", b" ") + b"\0"
        ptr = self.stack.push(len(frame))
        try:
            self.memory.write(ptr, frame)
            self._x_set_raised(ptr, ptr + msg_off)
        finally:
            self.stack.pop(ptr)
        return -1

    # --- errors -------------------------------------------------------------------------------------
    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call an export; turn a trap into WasmTrapError (and mark the instance dead)."""
        if self.dead:
            raise WasmTrapError(f"the model library instance is dead: {self.dead}")
        try:
            return fn(*args)
        except BaseException as exc:
            self._on_trap(exc)
            raise AssertionError("unreachable") from exc

    def _on_trap(self, exc: BaseException) -> None:
        pending, self._pending_exc = self._pending_exc, None
        logged = self.wasi.recent_output(16)
        kind, message = split_error(logged) if logged else ("RuntimeError", "")
        self.dead = f"{kind}: {message}" if message else f"{type(exc).__name__}: {exc}"
        if pending is not None and pending is not exc:
            raise pending from WasmTrapError(self.dead, kind)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        reason = f"{type(exc).__name__}: {exc}"
        raise WasmTrapError(
            (f"{kind}: {message}\n" if message else "")
            + f"(the model library aborted -- {reason} -- and this instance cannot be used any more; "
            "TVM's C++ runtime in the .wasm has no exception support, so any C++ error is fatal)",
            kind,
        ) from exc

    def _check(self, rc: int) -> None:
        if rc == 0:
            return
        what = self.memory.read_cstr(self._x_last_error())
        pending, self._pending_exc = self._pending_exc, None
        if pending is not None:
            raise pending
        kind, message = split_error(what)
        raise WasmRuntimeError(message, kind)

    # --- references -------------------------------------------------------------------------------
    def dec_ref(self, handle: int) -> None:
        if handle and not self.dead and self.exports is not None:
            self._x_decref(handle)

    def inc_ref(self, handle: int) -> None:
        self._guard(self._x_incref, handle)

    def type_key(self, type_index: int) -> str:
        """TVM's type key for a type index ("ffi.Tensor", "relax.VMClosure", ...)."""
        if type_index not in self._type_keys:
            info = self._guard(self._x_type_info, type_index)
            # TVMFFITypeInfo: int32 type_index, int32 type_depth, TVMFFIByteArray type_key, ...
            ptr, size = unpack_byte_array(self.memory.read(info + 8, 8))
            self._type_keys[type_index] = self.memory.read(ptr, size).decode()
        return self._type_keys[type_index]

    # --- values -----------------------------------------------------------------------------------
    def _prepare(self, values: Sequence[Any], temps: list[Object]) -> list[Any]:
        out = []
        for v in values:
            if isinstance(v, _POD_TYPES) or isinstance(v, (Object, TensorView)):
                out.append(v)
            elif isinstance(v, (list, tuple)):
                arr = self.array(v)
                temps.append(arr)
                out.append(arr)
            elif callable(v):
                fn = self.function(v)
                temps.append(fn)
                out.append(fn)
            else:
                raise TypeError(f"cannot pass {type(v).__name__} to a TVM function")
        return out

    def take_any(self, raw: bytes | bytearray | memoryview, off: int = 0) -> Any:
        """The Python value of an owned Any (its reference moves into the returned wrapper)."""
        tindex = unpack_any_head(raw, off)[0]
        if tindex < TypeIndex.STATIC_OBJECT_BEGIN:
            return unpack_pod(raw, off)
        handle = unpack_pod(raw, off)
        if tindex == TypeIndex.TENSOR:
            return Tensor(self, handle)
        if tindex in (TypeIndex.STR, TypeIndex.BYTES):
            ptr, size = unpack_byte_array(self.memory.read(handle + OBJECT_HEADER_SIZE, 8))
            data = self.memory.read(ptr, size) if size else b""
            self.dec_ref(handle)
            return data.decode("utf-8", "replace") if tindex == TypeIndex.STR else data
        if tindex == TypeIndex.FUNCTION:
            return Function(self, handle)
        if tindex == TypeIndex.MODULE:
            return Module(self, handle)
        if tindex == TypeIndex.SHAPE:
            return ShapeTuple(self, handle)
        if tindex == TypeIndex.ARRAY:
            return Array(self, handle)
        return Object(self, handle, tindex)

    # --- calls ------------------------------------------------------------------------------------
    def call_packed(self, handle: int, args: Sequence[Any]) -> Any:
        """Call the packed function `handle` with Python values; return the converted result."""
        if self.dead:
            raise WasmTrapError(f"the model library instance is dead: {self.dead}")
        temps: list[Object] = []
        values = self._prepare(args, temps)
        stack = self.stack
        base = stack.base + stack.top
        frame, res_off = pack_args(values, base)
        ptr = stack.push(len(frame))
        if ptr != base:
            frame, res_off = pack_args(values, ptr)
        try:
            self.memory.write(ptr, frame)
            try:
                rc = self._x_call(handle, ptr, len(values), ptr + res_off)
            except BaseException as exc:
                self._on_trap(exc)
            self._check(rc)
            raw = self.memory.read(ptr + res_off, ANY_SIZE)
        finally:
            stack.pop(ptr)
            for t in temps:
                t.dispose()
        return self.take_any(raw)

    def function(self, fn: Callable[..., Any]) -> Function:
        """Wrap a Python callable as a TVM packed function (values are converted both ways)."""
        return self.raw_function(self._wrap_callable(fn), getattr(fn, "__name__", ""))

    def raw_function(self, raw: RawCallback, name: str = "") -> Function:
        """A packed function whose body gets (args_ptr, nargs, result_ptr) and returns 0 / -1."""
        if self._free_slots:
            index = self._free_slots.pop()
            self._callbacks[index] = raw
        else:
            index = len(self._callbacks)
            self._callbacks.append(raw)
        ptr = self.stack.push(8)
        try:
            self._check(self._guard(self._x_func_create, index, ptr))
            handle = self.memory.read_u32(ptr)
        finally:
            self.stack.pop(ptr)
        return Function(self, handle, name)

    def _wrap_callable(self, fn: Callable[..., Any]) -> RawCallback:
        inst = weakref.proxy(self)

        def raw(args: int, nargs: int, result: int) -> int:
            values = inst.read_callback_args(args, nargs)
            rv = fn(*values)
            if rv is not None:
                inst.write_result(rv, result)
            return 0

        return raw

    def read_callback_args(self, args: int, nargs: int) -> list[Any]:
        """Python values of a callback's AnyView arguments (objects/strings taken as owned)."""
        if not nargs:
            return []
        raw = self.memory.read(args, ANY_SIZE * nargs)
        values: list[Any] = []
        for i in range(nargs):
            off = ANY_SIZE * i
            tindex = unpack_any_head(raw, off)[0]
            if tindex >= TypeIndex.STATIC_OBJECT_BEGIN or tindex in _OWN_IN_PLACE:
                p = args + off
                self._check(self._guard(self._x_view_to_owned, p, p))
                values.append(self.take_any(self.memory.read(p, ANY_SIZE)))
            elif tindex == TypeIndex.DLTENSOR_PTR:
                values.append(TensorView(self, unpack_pod(raw, off)))
            else:
                values.append(unpack_pod(raw, off))
        return values

    def write_result(self, value: Any, result: int) -> None:
        """Store `value` as an owned Any at `result` (a callback's return slot)."""
        temps: list[Object] = []
        values = self._prepare([value], temps)
        base = self.stack.base + self.stack.top
        frame, _ = pack_args(values, base, with_result=False)
        ptr = self.stack.push(len(frame))
        if ptr != base:
            frame, _ = pack_args(values, ptr, with_result=False)
        try:
            self.memory.write(ptr, frame)
            self._check(self._guard(self._x_view_to_owned, ptr, result))
        finally:
            self.stack.pop(ptr)
            for t in temps:
                t.dispose()

    # --- globals ------------------------------------------------------------------------------------
    def _name_frame(self, name: str, extra: int) -> tuple[int, bytes]:
        data = name.encode()
        ptr = self.stack.push(8 + extra + len(data) + 1)
        frame = (ptr + 8 + extra).to_bytes(4, "little") + len(data).to_bytes(4, "little") + bytes(extra) + data + b"\0"
        return ptr, frame

    def get_global(self, name: str) -> Function | None:
        """The global packed function `name`, or None (not cached)."""
        ptr, frame = self._name_frame(name, 8)
        try:
            self.memory.write(ptr, frame)
            self._check(self._guard(self._x_get_global, ptr, ptr + 8))
            handle = self.memory.read_u32(ptr + 8)
        finally:
            self.stack.pop(ptr)
        return Function(self, handle, name) if handle else None

    def global_function(self, name: str) -> Function:
        """The global packed function `name` (cached); KeyError if it does not exist."""
        fn = self._globals.get(name)
        if fn is None:
            fn = self.get_global(name)
            if fn is None:
                raise KeyError(f"the model library has no global function {name!r}")
            self._globals[name] = fn
        return fn

    def register_func(self, name: str, fn: Callable[..., Any] | Function, override: bool = False,
                      raw: bool = False) -> None:
        """Register `fn` as the TVM global `name` (a Python callable, raw callback or Function)."""
        if isinstance(fn, Function):
            func = fn
        else:
            func = self.raw_function(fn, name) if raw else self.function(fn)  # type: ignore[arg-type]
        ptr, frame = self._name_frame(name, 0)
        try:
            self.memory.write(ptr, frame)
            self._check(self._guard(self._x_set_global, ptr, func.handle, int(override)))
        finally:
            self.stack.pop(ptr)
            if func is not fn:
                func.dispose()
        self._globals.pop(name, None)

    # --- common runtime helpers ---------------------------------------------------------------------
    def system_lib(self) -> Module:
        return self.global_function("ffi.SystemLib")()

    def module_get_function(self, mod: Module, name: str, query_imports: bool = True) -> Function | None:
        fn = self.global_function("ffi.ModuleGetFunction")(mod, name, query_imports)
        return fn if isinstance(fn, Function) else None

    def shape_tuple(self, values: Iterable[int]) -> ShapeTuple:
        """An `ffi.Shape` (cached by value: shapes are immutable)."""
        vals = tuple(int(v) for v in values)
        st = self._shapes.get(vals)
        if st is None:
            st = self.global_function("ffi.Shape")(*vals)
            st.know_values(vals)
            if len(self._shapes) >= 4096:
                self._shapes.clear()
            self._shapes[vals] = st
        return st

    def borrow_any(self, raw: bytes | bytearray | memoryview, off: int = 0) -> Any:
        """The Python value of an Any owned by someone else (objects get their own reference)."""
        tindex = unpack_any_head(raw, off)[0]
        if tindex >= TypeIndex.STATIC_OBJECT_BEGIN:
            self.inc_ref(unpack_pod(raw, off))
        return self.take_any(raw, off)

    def array(self, items: Sequence[Any]) -> Array:
        return self.global_function("ffi.Array")(*items)

    def empty(self, shape: Sequence[int], dtype: str | DataType, device: Device) -> Tensor:
        """A new uninitialised tensor."""
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        dt = DataType.parse(dtype) if isinstance(dtype, str) else dtype
        tensor = self.global_function("runtime.TVMTensorAllocWithScope")(self.shape_tuple(shape), str(dt), device, None)
        tensor.know_shape(shape)
        return tensor

    def view(self, tensor: Tensor, shape: Sequence[int]) -> Tensor:
        """`tensor`'s storage under another shape with the same element count."""
        shape = tuple(int(d) for d in shape)
        old, new = 1, 1
        for d in tensor.shape:
            old *= d
        for d in shape:
            if d < 0:
                raise ValueError(f"negative dimension in shape {shape}")
            new *= d
        if old != new:
            raise ValueError(f"cannot view a tensor of shape {tensor.shape} as {shape}")
        out = self.global_function("vm.builtin.reshape")(tensor, self.shape_tuple(shape))
        out.know_shape(shape)
        return out

    def dispose(self) -> None:
        """Release the Python side (proxies, stack); the wasm instance is garbage collected by JS."""
        self._globals.clear()
        for p in self._proxies:
            try:
                p.destroy()
            except Exception:  # noqa: BLE001
                pass
        self._proxies.clear()
        self.dead = self.dead or "disposed"


def _perf_ns() -> int:
    import js

    return int(js.performance.now() * 1e6)


def _date_ns() -> int:
    import js

    return int(js.Date.now() * 1e6)
