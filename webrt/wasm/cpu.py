"""A CPU model library (``webrt compile --device wasm``) in the browser: no WebGPU at all.

The library's kernels are wasm32+simd128 code compiled by TVM's LLVM backend (the same CPU
pipeline and schedules as the native ``--device cpu`` library), linked with TVM's web runtime
objects without ``webgpu_runtime``. The host is the same as for a WebGPU library: the instance,
FFI, WASI and VM objects of `webrt.wasm`, with the VM initialised on the CPU (``kDLCPU``): every
tensor (weights, KV cache pages, activations, logits) lives in the instance's linear memory, so
uploads are memory writes and downloads are memory reads (no readback to wait for: `download`
works from any Python frame, JSPI or not).

    runtime = await CPURuntime.load(wasm_bytes)           # instantiate, VM on the CPU, metadata
    params = await upload_params(runtime, runtime.param_names, shards)   # webrt.wasm.weights
    backend = WasmBackend(runtime, params)                 # the engine's Backend, as on WebGPU

Threads: TVM's web runtime runs parallel loops serially (`TVMBackendParallelLaunch` in
``web/emcc/wasm_runtime.cc`` runs one task); the library also holds webrt's thread pool, which
`load(wasm, threads=n)` starts on ``n - 1`` Web Workers over the library's shared memory
(`webrt.wasm.threads`: cross-origin isolated pages, engine in a worker). On one thread, with the
wasm decode kernel (`webrt.compiler.schedules.wasm`), a SmolLM2 gguf_f32 decode step in headless Chromium costs 0.42-0.51x the CPU time per token of llama.cpp's
wasm build (wllama, same GGUF, one thread), paired rounds in BENCHMARKS.md.
"""

from __future__ import annotations

import time
from typing import Any

from webrt.wasm.ffi import CPU, Device, DeviceType
from webrt.wasm.instance import Instance
from webrt.wasm.objects import Module
from webrt.wasm.runtime import CPU_LIBRARY, open_vm, read_metadata
from webrt.wasm.threads import ThreadPool, has_pool


class CPURuntime:
    """A CPU model library instance with its relax VM on ``kDLCPU`` (the WebGPU `Runtime`'s sibling)."""

    #: the device of the VM's tensors
    device: Device = CPU
    #: no WebGPU context: tensors live in wasm memory
    gpu_ctx: None = None

    def __init__(self, inst: Instance, vm: Module, metadata: dict[str, Any]):
        self.inst, self.vm, self.metadata = inst, vm, metadata
        self.timings: dict[str, float] = {}
        #: the worker threads of TVM's parallel loops (None: one thread)
        self.pool: ThreadPool | None = None

    @classmethod
    async def load(cls, wasm: Any, threads: int = 1, required: bool = True) -> CPURuntime:
        """Instantiate `wasm` (a ``--device wasm`` library) and create its VM on the CPU; with
        `threads` > 1, start the library's thread pool (`webrt.wasm.threads.ThreadPool.start`;
        resolve the count with `webrt.wasm.threads.resolve_threads`). Unless `required`, a
        library built without the pool (an older webrt) runs on one thread instead of failing.

        A WebGPU library raises `webrt.wasm.runtime.LibraryDeviceError` naming the CPU build; a
        pool that cannot start raises `webrt.errors.ThreadsUnavailableError`."""
        t0 = time.perf_counter()
        inst = await Instance.create(wasm)
        t1 = time.perf_counter()
        pool = None
        try:
            vm = open_vm(inst, DeviceType.CPU, CPU_LIBRARY)
            metadata = read_metadata(vm, CPU_LIBRARY)
            if threads > 1 and (required or has_pool(inst.exports)):
                pool = await ThreadPool.start(inst.exports, inst.module, inst.imported_memory, threads)
        except BaseException:
            inst.dispose()
            raise
        rt = cls(inst, vm, metadata)
        rt.pool = pool
        rt.timings["instantiate_s"] = t1 - t0
        rt.timings["vm_s"] = time.perf_counter() - t1
        return rt

    @property
    def param_names(self) -> list[str]:
        return [p["name"] for p in self.metadata.get("params", [])]

    @property
    def memory_bytes(self) -> int:
        """The size of the instance's linear memory now (weights + KV cache + activations)."""
        return int(self.inst.memory.size)

    @property
    def threads(self) -> int:
        """Threads TVM's parallel loops run on now."""
        return self.pool.active_threads if self.pool is not None else 1

    def dispose(self) -> None:
        """Stop the worker threads and release the instance (its memory goes with it when JS drops
        the instance)."""
        if self.pool is not None:
            self.pool.stop()
            self.pool = None
        self.inst.dispose()
