"""`WebGPUContext`: TVM's WebGPU device API for one model-library instance over one GPUDevice:
buffers, host<->GPU copies, readback, command recording, and the kernels created on it.

Recording: all launches and GPU->GPU copies go into one command encoder and compute pass;
it is submitted only when the host writes into a buffer (queue writes are not ordered with
unsubmitted commands), reads back, or syncs. Each launch of a batch gets its own uniform slot
of one uniform buffer (dynamic offset); the slots are written with one `writeBuffer` at submit.
Freed buffers are destroyed (or, when small, recycled) only after the next submit. Nothing
allocates per launch on the JS side except what Pyodide needs to call a method.

Faults: a storage buffer above the device's binding limits is GPUOutOfMemoryError (with the
model's memory plan); every wait is bounded (`webrt.wasm.webgpu.waits`); after each readback
`check_device` turns a lost device into DeviceLostError and an uncaptured out-of-memory error
into GPUOutOfMemoryError.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from webrt.errors import DeviceLostError
from webrt.wasm.webgpu.buffers import BufferTable
from webrt.wasm.webgpu.device import GPUInfo
from webrt.wasm.webgpu.kernels import UNIFORM_SLOT, UNIFORM_SLOTS, Kernel, KernelSpec
from webrt.wasm.webgpu.memory_plan import MemoryPlan, buffer_limit, buffer_too_large, out_of_memory
from webrt.wasm.webgpu.pipelines import js_desc, pipeline_descriptor
from webrt.wasm.webgpu.stats import Stats
from webrt.wasm.webgpu.waits import run_sync_bounded, wait_bounded

_READ_POOL = 4


class WebGPUContext:
    """TVM's WebGPU device API + kernels for one instance, over one GPUDevice."""

    def __init__(self, gpu: GPUInfo, memory: Any):
        import js
        from pyodide.ffi import to_js

        self._js = js
        self._to_js = to_js
        self.gpu = gpu
        self.device = gpu.device
        self.memory = memory
        self.queue = self.device.queue
        self._write_buffer = self.queue.writeBuffer
        self._submit = self.queue.submit
        self._create_buffer = self.device.createBuffer
        self._create_bind_group = self.device.createBindGroup
        self._create_encoder = self.device.createCommandEncoder
        usage = js.GPUBufferUsage
        storage_usage = usage.STORAGE | usage.COPY_SRC | usage.COPY_DST
        self._read_usage = usage.MAP_READ | usage.COPY_DST
        self._map_read = js.GPUMapMode.READ
        self.stats = Stats()
        #: what the model plans to allocate (set by `Runtime.check_memory`; named by out-of-memory errors)
        self.memory_plan: MemoryPlan | None = None
        self.max_buffer_bytes = buffer_limit(gpu.limits)
        self.storage = BufferTable(lambda size: self._new_buffer(size, storage_usage), self._destroy_buffer,
                                   self._check_buffer_size)
        self._read_pool: list[Any] = []
        self._pending: set[int] = set()  # ids used by recorded, unsubmitted commands
        self._kernels: list[Kernel] = []
        self._kernels_by_name: dict[str, Kernel] = {}
        self._pending_reads: list[Any] = []
        # recording state
        self._encoder: Any = None
        self._pass: Any = None
        self._set_pipeline: Any = None
        self._set_bind_group: Any = None
        self._dispatch: Any = None
        align = max(UNIFORM_SLOT, int(gpu.limits.get("minUniformBufferOffsetAlignment", UNIFORM_SLOT)))
        self.uniform_slot = align
        self._slots = 0
        self._ustage = bytearray(align * UNIFORM_SLOTS)
        self._ustage_js = js.Uint8Array.new(len(self._ustage))
        self._uniform = self._new_buffer(len(self._ustage), usage.UNIFORM | usage.COPY_DST)
        self._offsets = js.Uint32Array.new(to_js([align * i for i in range(UNIFORM_SLOTS)]))
        self._submit_list = js.Array.new()
        self.disposed = False

    # --- buffers ------------------------------------------------------------------------------------
    def _new_buffer(self, size: int, usage: int) -> Any:
        buf = self._create_buffer(js_desc(size=size, usage=usage))
        self.gpu.live.created(size)
        return buf

    def _destroy_buffer(self, buf: Any) -> None:
        self.gpu.live.destroyed(int(buf.size))
        buf.destroy()

    def _check_buffer_size(self, size: int) -> None:
        """GPUOutOfMemoryError for a storage buffer above the device's binding limits (WebGPU would
        hand back an invalid buffer and fail every later use of it)."""
        limit = self.max_buffer_bytes
        if limit is not None and size > limit:
            raise buffer_too_large("the model library", size, limit, self.memory_plan, self.gpu.description,
                                   window_helps=True)

    # --- device API (called from TVM's C++ through packed functions) ------------------------------
    def alloc(self, nbytes: int) -> int:
        """A new storage buffer of at least `nbytes` (4-byte multiple); returns its id."""
        ptr = self.storage.alloc(nbytes)
        self.stats.allocs += 1
        return ptr

    def free(self, ptr: int) -> None:
        """Release buffer `ptr`: recycled (small) or destroyed, after the next submit."""
        self.storage.free(ptr)
        self.stats.frees += 1
        if self._encoder is None:
            self.storage.release_freed()

    def _flush_if_pending(self, ptr: int) -> None:
        """Submit first if recorded commands use buffer `ptr` (queue writes overtake them)."""
        if ptr in self._pending:
            self.flush()

    def buffer(self, ptr: int) -> Any:
        """The live GPUBuffer of id `ptr`."""
        return self.storage.buffer(ptr)

    def copy_to_gpu(self, from_ptr: int, to: int, to_offset: int, nbytes: int) -> None:
        """wasm memory [from_ptr, +nbytes) -> buffer `to` at `to_offset`."""
        if to_offset % 4:
            raise ValueError(f"WebGPU destination offset must be a multiple of 4, got {to_offset}")
        self._flush_if_pending(to)
        if nbytes % 4:
            padded = self._js.Uint8Array.new((nbytes + 3) & ~3)
            padded.set(self.memory.view(from_ptr, nbytes))
            self._write_buffer(self.buffer(to), to_offset, padded, 0, padded.length)
        else:
            self._write_buffer(self.buffer(to), to_offset, self.memory.buffer, from_ptr, nbytes)
        self.stats.writes += 1

    def write_js(self, to: int, to_offset: int, data: Any, data_offset: int, nbytes: int) -> None:
        """JS ArrayBuffer/TypedArray bytes -> buffer `to` (no copy through Python)."""
        if to_offset % 4:
            raise ValueError(f"WebGPU destination offset must be a multiple of 4, got {to_offset}")
        self._flush_if_pending(to)
        if nbytes % 4:
            padded = self._js.Uint8Array.new((nbytes + 3) & ~3)
            padded.set(self._js.Uint8Array.new(getattr(data, "buffer", data),
                                               getattr(data, "byteOffset", 0) + data_offset, nbytes))
            self._write_buffer(self.buffer(to), to_offset, padded, 0, padded.length)
        else:
            self._write_buffer(self.buffer(to), to_offset, data, data_offset, nbytes)
        self.stats.writes += 1

    def write_bytes(self, to: int, to_offset: int, data: bytes | bytearray | memoryview, fresh: bool = False) -> None:
        """Python bytes -> buffer `to`. `fresh`: the buffer is new, so pending commands cannot use it."""
        n = len(data)
        if to_offset % 4:
            raise ValueError(f"WebGPU destination offset must be a multiple of 4, got {to_offset}")
        if not fresh:
            self._flush_if_pending(to)
        if n % 4:
            data = bytes(data) + bytes(4 - n % 4)
            n = len(data)
        if n <= 65536:
            self._write_buffer(self.buffer(to), to_offset, self._to_js(data), 0, n)
        else:
            from pyodide.ffi import create_proxy

            proxy = create_proxy(data)
            view = proxy.getBuffer("u8")
            try:
                self._write_buffer(self.buffer(to), to_offset, view.data, 0, n)
            finally:
                view.release()
                proxy.destroy()
        self.stats.writes += 1

    def copy_from_gpu(self, from_ptr: int, from_offset: int, to_ptr: int, nbytes: int) -> None:
        """Buffer -> wasm memory, completed asynchronously (TVM's C++ cannot block here); `sync()`
        waits for it."""
        from pyodide.ffi import create_once_callable

        if from_offset % 4:
            raise ValueError(f"WebGPU source offset must be a multiple of 4, got {from_offset}")
        if nbytes == 0:
            return
        staging, n4 = self._stage_read(from_ptr, from_offset, nbytes)
        memory = self.memory

        def done(_: Any) -> None:
            memory.view(to_ptr, nbytes).set(self._js.Uint8Array.new(staging.getMappedRange(0, n4), 0, nbytes))
            self._recycle_read(staging)

        self._pending_reads.append(staging.mapAsync(self._map_read, 0, n4).then(create_once_callable(done)))
        self.stats.deferred_reads += 1

    def copy_within_gpu(self, from_ptr: int, from_offset: int, to_ptr: int, to_offset: int, nbytes: int) -> None:
        """Buffer -> buffer, recorded in order with the launches."""
        self._end_pass()
        if self._encoder is None:
            self._encoder = self._create_encoder()
        self._encoder.copyBufferToBuffer(self.buffer(from_ptr), from_offset, self.buffer(to_ptr), to_offset,
                                         (nbytes + 3) & ~3)
        self._pending.add(from_ptr)
        self._pending.add(to_ptr)

    # --- readback -----------------------------------------------------------------------------------
    def _stage_read(self, ptr: int, offset: int, nbytes: int) -> tuple[Any, int]:
        n4 = (nbytes + 3) & ~3
        staging = None
        for i, buf in enumerate(self._read_pool):
            if buf.size >= n4:
                staging = self._read_pool.pop(i)
                break
        if staging is None:
            staging = self._new_buffer(max(n4, 256), self._read_usage)
        self._end_pass()
        if self._encoder is None:
            self._encoder = self._create_encoder()
        self._encoder.copyBufferToBuffer(self.buffer(ptr), offset, staging, 0, n4)
        self.flush()
        return staging, n4

    def _recycle_read(self, staging: Any) -> None:
        staging.unmap()
        if len(self._read_pool) < _READ_POOL:
            self._read_pool.append(staging)
        else:
            self._destroy_buffer(staging)

    def read(self, ptr: int, offset: int, nbytes: int) -> bytes:
        """Buffer bytes -> Python, blocking (JSPI `run_sync`, bounded by `gpu.wait_timeout_s`): the
        readback shares the last submit. DeviceLostError / GPUOutOfMemoryError / GPUTimeoutError
        when the device cannot deliver them."""
        if offset % 4:
            raise ValueError(f"WebGPU source offset must be a multiple of 4, got {offset}")
        if nbytes == 0:
            return b""
        self.check_device()
        staging, n4 = self._stage_read(ptr, offset, nbytes)
        t0 = time.perf_counter()
        try:
            self._wait(staging.mapAsync(self._map_read, 0, n4), "reading GPU results back (mapAsync)")
        except BaseException:
            self._destroy_buffer(staging)  # its mapping may still be pending: not reusable
            raise
        self.stats.wait_s += time.perf_counter() - t0
        data = self._js.Uint8Array.new(staging.getMappedRange(0, n4), 0, nbytes).to_bytes()
        self._recycle_read(staging)
        self.stats.readbacks += 1
        self.check_device()
        return data

    def sync(self) -> None:
        """Submit everything and block until the GPU (and deferred reads) are done (each wait
        bounded by `gpu.wait_timeout_s`)."""
        self.flush()
        t0 = time.perf_counter()
        self._wait(self.queue.onSubmittedWorkDone(), "waiting for the GPU queue (onSubmittedWorkDone)")
        while self._pending_reads:
            self._wait(self._pending_reads.pop(0), "reading GPU results back (mapAsync)")
        self.stats.wait_s += time.perf_counter() - t0
        self.check_device()

    def stream_sync(self) -> None:
        """C++ `StreamSync`: submit; later host reads wait on the queue anyway."""
        self.stats.stream_syncs += 1
        self.flush()

    def _wait(self, promise: Any, what: str) -> Any:
        """Block on a GPU promise, bounded; a rejection (the device was lost or destroyed meanwhile)
        is DeviceLostError."""
        from pyodide.ffi import JsException

        try:
            return run_sync_bounded(promise, self.gpu.wait_timeout_s, what)
        except JsException as exc:
            js_error = str(exc).strip().splitlines()[-1].rsplit("JsException: ", 1)[-1]
            raise DeviceLostError(self.gpu.lost_message(f"{what} failed: {js_error}")) from None

    def check_device(self) -> None:
        """DeviceLostError if the device was lost; GPUOutOfMemoryError if it reported running out of
        memory since the last check (its allocations failed, so the results are garbage)."""
        if self.gpu.lost:
            raise DeviceLostError(self.gpu.lost_message())
        if self.gpu.out_of_memory:
            detail = "; ".join(self.gpu.out_of_memory[:3])
            self.gpu.out_of_memory.clear()
            raise out_of_memory(detail, self.memory_plan, self.max_buffer_bytes, self.gpu.description)

    # --- recording ----------------------------------------------------------------------------------
    def _begin_pass(self) -> None:
        if self._encoder is None:
            self._encoder = self._create_encoder()
        p = self._encoder.beginComputePass()
        self._pass = p
        self._set_pipeline = p.setPipeline
        self._set_bind_group = p.setBindGroup
        self._dispatch = p.dispatchWorkgroups

    def _end_pass(self) -> None:
        if self._pass is not None:
            self._pass.end()
            self._pass = None

    def flush(self) -> None:
        """Write the batch's uniforms and submit the recorded commands."""
        if self._encoder is None:
            return
        self._end_pass()
        if self._slots:
            n = self._slots * self.uniform_slot
            self._ustage_js.subarray(0, n).assign(memoryview(self._ustage)[:n])
            self._write_buffer(self._uniform, 0, self._ustage_js.buffer, 0, n)
            self._slots = 0
        lst = self._submit_list
        lst[0] = self._encoder.finish()
        self._submit(lst)
        self._encoder = None
        self._pending.clear()
        self.stats.submits += 1
        if self.storage.has_freed:
            self.storage.release_freed()

    def use_buffers(self, ptrs: Sequence[int]) -> None:
        """Note that recorded, unsubmitted commands use buffers `ptrs` (a later write submits first)."""
        self._pending.update(ptrs)

    def dispatch(self, pipeline: Any, group: Any, pack_uniforms: Callable[..., None], values: Sequence[Any],
                 x: int, y: int, z: int) -> None:
        """Record one launch of `pipeline` over bind group `group`: its uniforms (`values`, written by
        `pack_uniforms(buffer, offset, *values)`) go into the batch's next slot."""
        slot = self._slots
        if slot >= UNIFORM_SLOTS:
            self.flush()
            slot = 0
        self._slots = slot + 1
        pack_uniforms(self._ustage, slot * self.uniform_slot, *values)
        if self._pass is None:
            self._begin_pass()
        self._set_pipeline(pipeline)
        self._set_bind_group(0, group, self._offsets, slot, 1)
        self._dispatch(x, y, z)
        self.stats.dispatches += 1

    def bind_group(self, kernel: Kernel, key: tuple[int, ...], ptrs: Sequence[int]) -> Any:
        """Create and cache the bind group of `kernel` over buffer ids `ptrs` (key: kernel id and
        the buffers' serials)."""
        entries = [{"binding": i, "resource": {"buffer": self.buffer(ptr)}} for i, ptr in enumerate(ptrs)]
        entries.append({"binding": len(ptrs),
                        "resource": {"buffer": self._uniform, "offset": 0, "size": self.uniform_slot}})
        group = self._create_bind_group(js_desc(layout=kernel.bind_group_layout, entries=entries))
        self.storage.remember_bind_group(key, group)
        self.stats.bind_group_misses += 1
        return group

    # --- kernels ------------------------------------------------------------------------------------
    def create_kernel(self, finfo: dict[str, Any], code: str) -> Kernel:
        """Compile a kernel now (synchronous `createComputePipeline`)."""
        spec = KernelSpec.from_info(finfo)
        t0 = time.perf_counter()
        bgl, desc = pipeline_descriptor(self.device, spec, code)
        pipeline = self.device.createComputePipeline(desc)
        self.stats.pipeline_s[spec.name] = time.perf_counter() - t0
        return self._register(Kernel(self, spec, bgl, pipeline))

    async def create_kernel_async(self, finfo: dict[str, Any], code: str) -> Kernel:
        """Compile a kernel with `createComputePipelineAsync`."""
        spec = KernelSpec.from_info(finfo)
        t0 = time.perf_counter()
        bgl, desc = pipeline_descriptor(self.device, spec, code)
        pipeline = await wait_bounded(self.device.createComputePipelineAsync(desc), self.gpu.wait_timeout_s,
                                      f"creating the compute pipeline of kernel {spec.name}")
        self.stats.pipeline_s[spec.name] = time.perf_counter() - t0
        return self._register(Kernel(self, spec, bgl, pipeline))

    def _register(self, kernel: Kernel) -> Kernel:
        kernel.id = len(self._kernels)
        self._kernels.append(kernel)
        self._kernels_by_name[kernel.spec.name] = kernel
        return kernel

    def kernel(self, name: str) -> Kernel | None:
        return self._kernels_by_name.get(name)

    @property
    def kernels(self) -> list[Kernel]:
        return list(self._kernels)

    def dispose(self) -> None:
        """Destroy every buffer this context created (TVM's tensors, staging, uniforms); once."""
        if self.disposed:
            return
        self.disposed = True
        self.flush()
        self.storage.destroy_all()
        for buf in self._read_pool:
            self._destroy_buffer(buf)
        self._read_pool.clear()
        self._destroy_buffer(self._uniform)
