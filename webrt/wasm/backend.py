"""The engine's `Backend` (webrt.engine.backend) on the browser runtime: a `.wasm` model library
plus its weights, driven from Pyodide. One class for both kinds of library: a WebGPU `Runtime`
(tensors in GPU buffers) and a `webrt.wasm.cpu.CPURuntime` (tensors in wasm memory).

    backend = await WebGPUModelLoader(app_config).load(record, chat_config, None)   # wasm/loader.py
    runner = ModelRunner(backend, window)     # unchanged engine code

`download` is synchronous, as the protocol says: it blocks on the GPU readback with JSPI's
`run_sync`, which works from Python entered through `runPythonAsync`, an async function called
from JS, or an asyncio task on Pyodide's webloop (checked by the browser tests). It does not work
from a synchronous Python callback invoked by JS (an event handler): call the engine from a task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from webrt.errors import ModelLibraryError
from webrt.wasm.ffi import DeviceType
from webrt.wasm.objects import Function, ShapeTuple, Tensor
from webrt.wasm.runtime import Runtime

if TYPE_CHECKING:
    from webrt.wasm.cpu import CPURuntime


class WasmBackend:
    """`Backend` over a `Runtime` or a `CPURuntime` (see module docstring)."""

    def __init__(self, runtime: Runtime | CPURuntime, params: Any):
        self.runtime = runtime
        self.device = runtime.device
        self.inst = runtime.inst
        self.metadata: dict[str, Any] = runtime.metadata
        self.params = params
        self._shapes: dict[tuple[int, ...], ShapeTuple] = {}
        self._fns: dict[str, Function | None] = {}
        self.closed = False

    # --- Backend protocol ---------------------------------------------------------------------------
    def has_function(self, name: str) -> bool:
        return self._lookup(name) is not None

    def _lookup(self, name: str) -> Function | None:
        if name not in self._fns:
            self._fns[name] = self.runtime.vm.get_function(name)
        return self._fns[name]

    def function(self, name: str) -> Callable[..., Any]:
        fn = self._lookup(name)
        if fn is None:
            raise ModelLibraryError(f"the model library has no function {name!r}; recompile it with `webrt compile`.")
        return fn

    def global_function(self, name: str) -> Callable[..., Any]:
        return self.inst.global_function(name)

    def shape_tuple(self, values: Sequence[int]) -> ShapeTuple:
        key = tuple(int(v) for v in values)
        st = self._shapes.get(key)
        if st is None:
            st = self._shapes[key] = self.inst.shape_tuple(key)
        return st

    def upload(self, data: bytes, shape: Sequence[int], dtype: str) -> Tensor:
        tensor = self.inst.empty(shape, dtype, self.device)
        if len(data) != tensor.nbytes:
            raise ValueError(f"{len(data)} bytes for a {tuple(shape)} {dtype} tensor ({tensor.nbytes} expected)")
        if not data:
            return tensor
        if self.device.device_type == DeviceType.CPU:
            self.inst.memory.write(tensor.data + tensor.byte_offset, data)
        else:
            self.runtime.gpu_ctx.write_bytes(tensor.data, tensor.byte_offset, data, fresh=True)
        return tensor

    def write(self, tensor: Tensor, data: bytes) -> None:
        if len(data) != tensor.nbytes:
            raise ValueError(f"{len(data)} bytes for a tensor of {tensor.nbytes}")
        if tensor.device.device_type == DeviceType.CPU:
            self.inst.memory.write(tensor.data + tensor.byte_offset, data)
        elif data:
            self.runtime.gpu_ctx.write_bytes(tensor.data, tensor.byte_offset, data)

    def download(self, tensor: Tensor, nbytes: int | None = None) -> bytes:
        total = tensor.nbytes
        n = total if nbytes is None else min(int(nbytes), total)
        if tensor.device.device_type == DeviceType.CPU:
            return self.inst.memory.read(tensor.data + tensor.byte_offset, n)
        return self.runtime.gpu_ctx.read(tensor.data, tensor.byte_offset, n)

    def view(self, tensor: Tensor, shape: Sequence[int]) -> Tensor:
        return self.inst.view(tensor, shape)

    def close(self) -> None:
        """Destroy every GPU buffer of the library (weights, KV cache pages, activations, staging) and
        dispose of the instance (a CPU library's tensors go with its memory); the backend cannot be
        used afterwards. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._fns.clear()
        self._shapes.clear()
        self.params = None
        self.runtime.dispose()

    # --- extras -------------------------------------------------------------------------------------
    @property
    def stats(self) -> Any:
        """The WebGPU bridge's counters (`webrt.wasm.webgpu.Stats`); None for a CPU library."""
        ctx = self.runtime.gpu_ctx
        return None if ctx is None else ctx.stats
