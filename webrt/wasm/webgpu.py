"""The WebGPU side of a TVM model library, in Python on Pyodide.

- `request_device`: adapter + device with the features a library needs (`shader-f16`,
  `subgroups`) and limits raised to what the adapter offers; a missing feature raises
  `FeatureNotSupportedError` naming the build to use instead. `check_library` refuses a library
  whose metadata does not fit the adapter (f16 without `shader-f16`, a subgroup build on an
  adapter with smaller subgroups).
- `WebGPUContext`: TVM's WebGPU device API (alloc/free/copies, registered as the
  `wasm.WebGPUDeviceAPI` global the C++ side looks up), shader creation (`wasm.WebGPUCreateShader`
  for kernels created lazily, `load_pipelines` for all or some kernels up front with
  `createComputePipelineAsync` and progress reports) and kernel launches.

Launch convention of TVM's WGSL codegen: buffer arguments at `@binding(i)` in argument order
(`storage` or `read-only-storage` from the `paramWriteAccess` tag), then one uniform `PODArgs`
with every scalar as 32 bits plus `packGridDimX`; a grid x of 65536 or more is folded into z.

Recording: all launches and GPU->GPU copies go into one command encoder and compute pass;
it is submitted only when the host writes into a buffer (queue writes are not ordered with
unsubmitted commands), reads back, or syncs. Each launch of a batch gets its own 256-byte slot
of one uniform buffer (dynamic offset); the slots are written with one `writeBuffer` at submit.
Bind groups are cached per (kernel, buffers) and dropped when a buffer is freed. Freed buffers
are destroyed (or, when small, recycled) only after the next submit. Nothing allocates per launch
on the JS side except what Pyodide needs to call a method.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from webrt.errors import DeviceLostError, FeatureNotSupportedError, ModelLibraryError

#: Limits raised to the adapter's value when it offers more than the default.
RAISED_LIMITS = (
    "maxBufferSize",
    "maxStorageBufferBindingSize",
    "maxComputeWorkgroupStorageSize",
    "maxStorageBuffersPerShaderStage",
    "maxComputeInvocationsPerWorkgroup",
    "maxComputeWorkgroupSizeX",
    "maxComputeWorkgroupSizeY",
    "maxComputeWorkgroupSizeZ",
    "maxComputeWorkgroupsPerDimension",
)
#: Optional features turned on whenever the adapter has them.
OPTIONAL_FEATURES = ("shader-f16", "subgroups", "timestamp-query")
UNIFORM_SLOT = 256
UNIFORM_SLOTS = 1024
_READ_POOL = 4
_RECYCLE_MAX_BYTES = 1 << 20
ProgressCallback = Callable[[dict[str, Any]], None]


# --- adapter / device ------------------------------------------------------------------------------
def f32_alternative(quantization: str | None) -> str:
    """The f32 build of the same scheme: q4f16_1 -> q4f32_1, q0f16 -> q0f32."""
    if quantization and "f16" in quantization:
        return quantization.replace("f16", "f32")
    return "q4f32_1"


@dataclass
class GPUInfo:
    """A WebGPU device and what its adapter offers."""

    adapter: Any
    device: Any
    features: frozenset[str]
    limits: dict[str, int]
    info: dict[str, Any]
    subgroup_min_size: int = 0
    subgroup_max_size: int = 0
    lost: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        i = self.info
        parts = [i.get("vendor"), i.get("architecture"), i.get("description")]
        name = " ".join(p for p in parts if p) or "unknown adapter"
        return name + (" (fallback adapter)" if i.get("isFallbackAdapter") else "")


def _js_dict(obj: Any, keys: Iterable[str]) -> dict[str, Any]:
    out = {}
    for k in keys:
        v = getattr(obj, k, None)
        if v is not None and not callable(v):
            out[k] = v
    return out


def _missing_feature_message(feature: str, quantization: str | None, adapter: str) -> str:
    if feature == "shader-f16":
        return (f"this adapter ({adapter}) has no shader-f16, which the "
                f"{quantization or 'f16'} model library needs; use the {f32_alternative(quantization)} build "
                "of the model instead.")
    if feature == "subgroups":
        return (f"this adapter ({adapter}) has no WebGPU subgroups, which this model library was compiled "
                "for; use a build compiled without subgroups.")
    return f"this adapter ({adapter}) lacks the WebGPU feature {feature!r} the model library needs."


async def request_device(required_features: Sequence[str] = (), quantization: str | None = None,
                         power_preference: str = "high-performance") -> GPUInfo:
    """Find the adapter and create a device; raise FeatureNotSupportedError if a feature is missing."""
    import js
    from pyodide.ffi import create_proxy, to_js

    gpu = getattr(js.navigator, "gpu", None)
    if gpu is None:
        raise FeatureNotSupportedError("this browser has no WebGPU (navigator.gpu is undefined); use a recent "
                                       "Chrome/Edge, or Chromium with --enable-unsafe-webgpu.")
    adapter = await gpu.requestAdapter(to_js({"powerPreference": power_preference},
                                             dict_converter=js.Object.fromEntries))
    if adapter is None:
        raise FeatureNotSupportedError("no WebGPU adapter is available (requestAdapter returned null): the GPU "
                                       "is blocklisted or WebGPU is disabled.")
    features = frozenset(str(f) for f in js.Array.from_(adapter.features))
    info_obj = adapter.info
    info = _js_dict(info_obj, ("vendor", "architecture", "device", "description", "isFallbackAdapter",
                               "subgroupMinSize", "subgroupMaxSize"))
    desc = GPUInfo(adapter, None, features, {}, info).description
    for feature in required_features:
        if feature not in features:
            raise FeatureNotSupportedError(_missing_feature_message(feature, quantization, desc))
    limits: dict[str, int] = {}
    for name in RAISED_LIMITS:
        value = getattr(adapter.limits, name, None)
        if value is not None:
            limits[name] = int(value)
    wanted = sorted(set(required_features) | {f for f in OPTIONAL_FEATURES if f in features})
    descriptor = to_js({"requiredFeatures": wanted, "requiredLimits": limits}, dict_converter=js.Object.fromEntries)
    device = await adapter.requestDevice(descriptor)
    if device is None:
        raise FeatureNotSupportedError(f"requestDevice failed on {desc}")
    dev_limits = {name: int(getattr(device.limits, name)) for name in
                  (*RAISED_LIMITS, "minUniformBufferOffsetAlignment", "maxUniformBufferBindingSize",
                   "maxDynamicUniformBuffersPerPipelineLayout")
                  if getattr(device.limits, name, None) is not None}
    result = GPUInfo(adapter, device, frozenset(str(f) for f in js.Array.from_(device.features)), dev_limits, info,
                     int(info.get("subgroupMinSize") or 0), int(info.get("subgroupMaxSize") or 0))

    def on_error(event: Any) -> None:
        msg = str(getattr(event.error, "message", event.error))
        result.errors.append(msg)
        js.console.error(f"[webrt webgpu] uncaptured error: {msg}")

    def on_lost(info: Any) -> None:
        result.lost = f"{getattr(info, 'reason', '')}: {getattr(info, 'message', '')}"

    result._listeners = [create_proxy(on_error), create_proxy(on_lost)]  # type: ignore[attr-defined]
    device.addEventListener("uncapturederror", result._listeners[0])  # type: ignore[attr-defined]
    device.lost.then(result._listeners[1])  # type: ignore[attr-defined]
    return result


def check_library(metadata: dict[str, Any], gpu: GPUInfo) -> None:
    """Refuse a library that cannot run correctly on this device (typed errors)."""
    webrt = metadata.get("webrt") or {}
    device = webrt.get("device", "webgpu")
    if device != "webgpu":
        raise ModelLibraryError(f"the model library was compiled for {device}, not webgpu; "
                                "build it with `webrt compile --device webgpu`.")
    quant = metadata.get("quantization") or webrt.get("quantization")
    required = list(webrt.get("required_features") or [])
    if webrt.get("model_dtype") == "float16" and "shader-f16" not in required:
        required.append("shader-f16")
    for feature in required:
        if feature not in gpu.features:
            raise FeatureNotSupportedError(_missing_feature_message(feature, quant, gpu.description))
    sg = int(webrt.get("subgroup_size") or 0)
    if sg > 0:
        if "subgroups" not in gpu.features:
            raise FeatureNotSupportedError(_missing_feature_message("subgroups", quant, gpu.description))
        have = gpu.subgroup_min_size
        if not have or have < sg:
            raise FeatureNotSupportedError(
                f"the model library was compiled for subgroups of {sg} lanes but this adapter "
                f"({gpu.description}) has subgroups of {have or 'unknown size'}{' to ' + str(gpu.subgroup_max_size) if gpu.subgroup_max_size and gpu.subgroup_max_size != have else ''}; "
                f"its results would be wrong. Use a build compiled without subgroups (subgroup_size 0)."
            )


# --- kernels ---------------------------------------------------------------------------------------
@dataclass
class KernelSpec:
    """What a launch needs from TVM's FunctionInfo of one kernel."""

    name: str
    arg_types: list[str]
    buffer_args: list[int]
    pod_args: list[int]
    write_access: list[int]
    dispatch_to_dim: list[int]

    @staticmethod
    def from_info(finfo: dict[str, Any]) -> KernelSpec:
        dispatch: list[int] = []
        access: list[int] = []
        for tag in finfo.get("launch_param_tags", []):
            if tag.startswith("blockIdx."):
                dispatch.append("xyz".index(tag[-1]))
            elif tag.startswith("threadIdx."):
                dispatch.append(3 + "xyz".index(tag[-1]))
            elif tag.startswith("paramWriteAccess:"):
                access = [int(x) for x in json.loads(tag[len("paramWriteAccess:"):])]
            else:
                raise ModelLibraryError(f"kernel {finfo.get('name')}: unknown launch tag {tag!r}")
        buffers, pods = [], []
        for i, t in enumerate(finfo["arg_types"]):
            if t == "handle":
                buffers.append(i)
            elif t.startswith(("int", "uint", "float")):
                pods.append(i)
            else:
                raise ModelLibraryError(f"kernel {finfo.get('name')}: cannot pass a {t} argument to WebGPU")
        if len(access) != len(buffers):
            if access:
                raise ModelLibraryError(f"kernel {finfo.get('name')}: paramWriteAccess has {len(access)} entries "
                                        f"for {len(buffers)} buffers")
            access = [1] * len(buffers)
        return KernelSpec(finfo["name"], list(finfo["arg_types"]), buffers, pods, access, dispatch)

    def arg_struct(self) -> struct.Struct:
        """Decodes the kernel's TVMFFIAny[] arguments into (args..., launch params...)."""
        fmt = "<"
        for t in self.arg_types:
            fmt += "8xI4x" if t == "handle" else ("8xd" if t.startswith("float") else "8xq")
        fmt += "8xq" * len(self.dispatch_to_dim)
        return struct.Struct(fmt)

    def pod_struct(self) -> struct.Struct:
        """Encodes the PODArgs uniform: every scalar as 32 bits, then packGridDimX."""
        fmt = "<"
        for i in self.pod_args:
            t = self.arg_types[i]
            fmt += "f" if t.startswith("float") else ("I" if t.startswith("uint") else "i")
        return struct.Struct(fmt + "I")


def fold_grid(x: int, z: int) -> tuple[int, int]:
    """TVM's fold of a grid x >= 65536 into z (the shader unpacks with packGridDimX)."""
    while x >= 65536:
        x = x // 2 if x % 2 == 0 else (x + 1) // 2
        z *= 2
    return x, z


@dataclass
class Stats:
    """Counters of the GPU bridge (host-side costs are what Python spends around them)."""

    dispatches: int = 0
    submits: int = 0
    writes: int = 0
    readbacks: int = 0
    wait_s: float = 0.0
    deferred_reads: int = 0
    stream_syncs: int = 0
    bind_group_misses: int = 0
    allocs: int = 0
    frees: int = 0
    kernels_created_lazily: list[str] = field(default_factory=list)
    #: kernel -> why this adapter rejected it when the pipelines were created up front
    kernels_failed: dict[str, str] = field(default_factory=dict)
    pipeline_s: dict[str, float] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                for k, v in self.__dict__.items()}


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
        self._storage_usage = usage.STORAGE | usage.COPY_SRC | usage.COPY_DST
        self._read_usage = usage.MAP_READ | usage.COPY_DST
        self._map_read = js.GPUMapMode.READ
        self.stats = Stats()
        # Buffers: TVM sees an id (index into `buffers`); each GPUBuffer also has a serial that
        # stays with it while it is recycled, so cached bind groups survive free + re-alloc.
        self.buffers: list[Any] = [None]  # id 0 is the null pointer
        self.serials: list[int] = [0]
        self._sizes: list[int] = [0]
        self._free_ids: list[int] = []
        self._next_serial = 1
        self._recycled: dict[int, list[tuple[Any, int]]] = {}
        self._after_submit_free: list[tuple[int, Any, int]] = []
        self._read_pool: list[Any] = []
        self._bind_groups: dict[tuple[int, ...], Any] = {}
        self._bg_keys_of: dict[int, list[tuple[int, ...]]] = {}  # serial -> bind group keys
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
        self._uniform = self._create_buffer(self._desc(size=len(self._ustage),
                                                       usage=usage.UNIFORM | usage.COPY_DST))
        self._offsets = js.Uint32Array.new(to_js([align * i for i in range(UNIFORM_SLOTS)]))
        self._submit_list = js.Array.new()

    def _desc(self, **kw: Any) -> Any:
        return self._to_js(kw, dict_converter=self._js.Object.fromEntries)

    # --- device API (called from TVM's C++ through packed functions) ------------------------------
    def alloc(self, nbytes: int) -> int:
        """A new storage buffer of at least `nbytes` (4-byte multiple); returns its id."""
        size = max(4, (int(nbytes) + 3) & ~3)
        pool = self._recycled.get(size)
        if pool:
            buf, serial = pool.pop()
        else:
            if size > self.gpu.limits.get("maxBufferSize", size):
                raise MemoryError(f"a {size}-byte buffer exceeds this device's maxBufferSize "
                                  f"({self.gpu.limits['maxBufferSize']})")
            buf = self._create_buffer(self._desc(size=size, usage=self._storage_usage))
            serial = self._next_serial
            self._next_serial += 1
        self.stats.allocs += 1
        if self._free_ids:
            ptr = self._free_ids.pop()
            self.buffers[ptr] = buf
            self.serials[ptr] = serial
            self._sizes[ptr] = size
        else:
            ptr = len(self.buffers)
            self.buffers.append(buf)
            self.serials.append(serial)
            self._sizes.append(size)
        return ptr

    def free(self, ptr: int) -> None:
        """Release buffer `ptr`: recycled (small) or destroyed, after the next submit."""
        buf = self.buffers[ptr]
        if buf is None:
            raise ValueError(f"WebGPU buffer {ptr} is already free")
        self.buffers[ptr] = None
        self._free_ids.append(ptr)
        self._after_submit_free.append((self._sizes[ptr], buf, self.serials[ptr]))
        self.serials[ptr] = 0
        self.stats.frees += 1
        if self._encoder is None:
            self._release_freed()

    def _release_freed(self) -> None:
        for size, buf, serial in self._after_submit_free:
            pool = self._recycled.setdefault(size, [])
            if size <= _RECYCLE_MAX_BYTES and len(pool) < 8:
                pool.append((buf, serial))
            else:
                for key in self._bg_keys_of.pop(serial, ()):
                    self._bind_groups.pop(key, None)
                buf.destroy()
        self._after_submit_free.clear()

    def _flush_if_pending(self, ptr: int) -> None:
        """Submit first if recorded commands use buffer `ptr` (queue writes overtake them)."""
        if ptr in self._pending:
            self.flush()

    def buffer(self, ptr: int) -> Any:
        buf = self.buffers[ptr] if 0 < ptr < len(self.buffers) else None
        if buf is None:
            raise ValueError(f"{ptr} is not a live WebGPU buffer")
        return buf

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
            staging = self._create_buffer(self._desc(size=max(n4, 256), usage=self._read_usage))
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
            staging.destroy()

    def read(self, ptr: int, offset: int, nbytes: int) -> bytes:
        """Buffer bytes -> Python, blocking (JSPI `run_sync`): the readback shares the last submit."""
        from pyodide.ffi import run_sync

        if offset % 4:
            raise ValueError(f"WebGPU source offset must be a multiple of 4, got {offset}")
        if nbytes == 0:
            return b""
        staging, n4 = self._stage_read(ptr, offset, nbytes)
        t0 = time.perf_counter()
        run_sync(staging.mapAsync(self._map_read, 0, n4))
        self.stats.wait_s += time.perf_counter() - t0
        data = self._js.Uint8Array.new(staging.getMappedRange(0, n4), 0, nbytes).to_bytes()
        self._recycle_read(staging)
        self.stats.readbacks += 1
        self._check_lost()
        return data

    async def read_async(self, ptr: int, offset: int, nbytes: int) -> bytes:
        """Like `read`, awaiting instead of blocking."""
        if nbytes == 0:
            return b""
        staging, n4 = self._stage_read(ptr, offset, nbytes)
        t0 = time.perf_counter()
        await staging.mapAsync(self._map_read, 0, n4)
        self.stats.wait_s += time.perf_counter() - t0
        data = self._js.Uint8Array.new(staging.getMappedRange(0, n4), 0, nbytes).to_bytes()
        self._recycle_read(staging)
        self.stats.readbacks += 1
        return data

    def sync(self) -> None:
        """Submit everything and block until the GPU (and deferred reads) are done."""
        from pyodide.ffi import run_sync

        self.flush()
        t0 = time.perf_counter()
        run_sync(self.queue.onSubmittedWorkDone())
        while self._pending_reads:
            run_sync(self._pending_reads.pop(0))
        self.stats.wait_s += time.perf_counter() - t0
        self._check_lost()

    async def sync_async(self) -> None:
        self.flush()
        await self.queue.onSubmittedWorkDone()
        while self._pending_reads:
            await self._pending_reads.pop(0)

    def stream_sync(self) -> None:
        """C++ `StreamSync`: submit; later host reads wait on the queue anyway."""
        self.stats.stream_syncs += 1
        self.flush()

    def _check_lost(self) -> None:
        if self.gpu.lost:
            raise DeviceLostError(f"the WebGPU device was lost ({self.gpu.lost}); reload the model.")

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
        if self._after_submit_free:
            self._release_freed()

    def bind_group(self, kernel: Kernel, key: tuple[int, ...], ptrs: Sequence[int]) -> Any:
        """Create and cache the bind group of `kernel` over buffer ids `ptrs` (key: kernel id and
        the buffers' serials)."""
        entries = [{"binding": i, "resource": {"buffer": self.buffer(ptr)}} for i, ptr in enumerate(ptrs)]
        entries.append({"binding": len(ptrs),
                        "resource": {"buffer": self._uniform, "offset": 0, "size": self.uniform_slot}})
        group = self._create_bind_group(self._desc(layout=kernel.bind_group_layout, entries=entries))
        self._bind_groups[key] = group
        for serial in set(key[1:]):
            self._bg_keys_of.setdefault(serial, []).append(key)
        self.stats.bind_group_misses += 1
        return group

    # --- kernels ------------------------------------------------------------------------------------
    def _layouts(self, spec: KernelSpec) -> tuple[Any, Any]:
        entries = []
        for b, write in enumerate(spec.write_access):
            entries.append({"binding": b, "visibility": self._js.GPUShaderStage.COMPUTE,
                            "buffer": {"type": "storage" if write else "read-only-storage"}})
        entries.append({"binding": len(spec.buffer_args), "visibility": self._js.GPUShaderStage.COMPUTE,
                        "buffer": {"type": "uniform", "hasDynamicOffset": True}})
        bgl = self.device.createBindGroupLayout(self._desc(entries=entries))
        layout = self.device.createPipelineLayout(self._desc(bindGroupLayouts=[bgl]))
        return bgl, layout

    def _pipeline_desc(self, spec: KernelSpec, code: str) -> tuple[Any, Any]:
        bgl, layout = self._layouts(spec)
        module = self.device.createShaderModule(self._desc(code=code))
        return bgl, self._desc(layout=layout, compute={"module": module, "entryPoint": spec.name})

    def create_kernel(self, finfo: dict[str, Any], code: str) -> Kernel:
        """Compile a kernel now (synchronous `createComputePipeline`)."""
        spec = KernelSpec.from_info(finfo)
        t0 = time.perf_counter()
        bgl, desc = self._pipeline_desc(spec, code)
        pipeline = self.device.createComputePipeline(desc)
        self.stats.pipeline_s[spec.name] = time.perf_counter() - t0
        return self._register(Kernel(self, spec, bgl, pipeline))

    async def create_kernel_async(self, finfo: dict[str, Any], code: str) -> Kernel:
        """Compile a kernel with `createComputePipelineAsync`."""
        spec = KernelSpec.from_info(finfo)
        t0 = time.perf_counter()
        bgl, desc = self._pipeline_desc(spec, code)
        pipeline = await self.device.createComputePipelineAsync(desc)
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
        self.flush()
        for buf in self.buffers:
            if buf is not None:
                buf.destroy()
        self.buffers = [None]
        for pool in self._recycled.values():
            for buf in pool:
                buf.destroy()
        self._recycled.clear()
        for buf in self._read_pool:
            buf.destroy()
        self._read_pool.clear()
        self._uniform.destroy()
        self._bind_groups.clear()


class Kernel:
    """One compiled WGSL kernel; `launch` is the raw packed-function body the wasm calls."""

    def __init__(self, ctx: WebGPUContext, spec: KernelSpec, bind_group_layout: Any, pipeline: Any):
        self.ctx, self.spec = ctx, spec
        self.bind_group_layout = bind_group_layout
        self.pipeline = pipeline
        self.id = -1
        self.launches = 0
        self.launch = self._make_launch()

    def _make_launch(self) -> Callable[[int, int, int], int]:
        ctx = self.ctx
        spec = self.spec
        unpack = spec.arg_struct().unpack
        nargs_expected = len(spec.arg_types) + len(spec.dispatch_to_dim)
        nbytes = 16 * nargs_expected
        buf_idx = tuple(spec.buffer_args)
        pod_idx = tuple(spec.pod_args)
        pack_pod = spec.pod_struct().pack_into
        nfixed = len(spec.arg_types)
        # where each grid dimension (blockIdx.x/y/z) comes from in the decoded values
        grid_src = [-1, -1, -1]
        for i, d in enumerate(spec.dispatch_to_dim):
            if d < 3:
                grid_src[d] = nfixed + i
        gx, gy, gz = grid_src
        ustage = ctx._ustage
        slot_size = ctx.uniform_slot
        bind_groups = ctx._bind_groups
        serials = ctx.serials
        pending_add = ctx._pending.add
        kernel = self
        pipeline = self.pipeline
        stats = ctx.stats
        read = ctx.memory.read
        name = spec.name

        def launch(args: int, nargs: int, result: int) -> int:
            if nargs != nargs_expected:
                raise ModelLibraryError(f"kernel {name} called with {nargs} arguments, expected {nargs_expected}")
            vals = unpack(read(args, nbytes))
            wx = vals[gx] if gx >= 0 else 1
            wy = vals[gy] if gy >= 0 else 1
            if gz >= 0 and vals[gz] != 1:
                raise ModelLibraryError(f"kernel {name}: blockIdx.z is reserved for WebGPU's grid folding")
            wz = 1
            pack_x = wx
            if wx >= 65536:
                wx, wz = fold_grid(wx, wz)
            ptrs = [vals[i] for i in buf_idx]
            key = (kernel.id, *[serials[p] for p in ptrs])
            group = bind_groups.get(key)
            if group is None:
                group = ctx.bind_group(kernel, key, ptrs)
            for p in ptrs:
                pending_add(p)
            slot = ctx._slots
            if slot >= UNIFORM_SLOTS:
                ctx.flush()
                slot = 0
            ctx._slots = slot + 1
            pack_pod(ustage, slot * slot_size, *[vals[i] for i in pod_idx], pack_x)
            if ctx._pass is None:
                ctx._begin_pass()
            ctx._set_pipeline(pipeline)
            ctx._set_bind_group(0, group, ctx._offsets, slot, 1)
            ctx._dispatch(wx, wy, wz)
            stats.dispatches += 1
            kernel.launches += 1
            return 0

        return launch


def register_device_api(inst: Any, ctx: WebGPUContext) -> None:
    """Register the globals TVM's WebGPU runtime (webgpu_runtime.cc) looks up: the device API
    getter `wasm.WebGPUDeviceAPI`, `wasm.WebGPUCreateShader` (lazily created kernels) and
    `__asyncify.WebGPUWaitForTasks` (C++ stream sync; never called by webrt's model functions)."""
    mem = ctx.memory
    result_float = struct.Struct("<iId")

    def raw(kinds: str, body: Callable[..., Any]) -> Callable[[int, int, int], int]:
        """kinds: one letter per argument, 'p' pointer or 'i' int64."""
        st = struct.Struct("<" + "".join("8xI4x" if k == "p" else "8xq" for k in kinds))
        n = len(kinds)

        def call(args: int, nargs: int, result: int) -> int:
            if nargs != n:
                raise TypeError(f"expected {n} arguments, got {nargs}")
            rv = body(*st.unpack(mem.read(args, 16 * n)))
            if rv is not None:
                mem.write(result, result_float.pack(3, 0, float(rv)))  # kTVMFFIFloat
            return 0

        return call

    api = {
        "deviceAllocDataSpace": raw("i", ctx.alloc),
        "deviceFreeDataSpace": raw("p", ctx.free),
        "deviceCopyToGPU": raw("ppii", ctx.copy_to_gpu),
        "deviceCopyFromGPU": raw("pipi", ctx.copy_from_gpu),
        "deviceCopyWithinGPU": raw("pipii", ctx.copy_within_gpu),
    }
    functions = {name: inst.raw_function(fn, name) for name, fn in api.items()}

    def device_api(name: str) -> Any:
        if name not in functions:
            raise ValueError(f"unknown WebGPU device API function {name!r}")
        return functions[name]

    def create_shader(info: str, code: str) -> Any:
        finfo = json.loads(info)
        failed = ctx.stats.kernels_failed.get(finfo["name"])
        if failed is not None:  # a synchronous retry would give an invalid pipeline silently
            raise ModelLibraryError(f"kernel {finfo['name']} of the model library does not compile on this adapter "
                                    f"({failed}); rebuild the library with a webrt whose WebGPU codegen handles it.")
        kernel = ctx.kernel(finfo["name"]) or ctx.create_kernel(finfo, code)
        ctx.stats.kernels_created_lazily.append(finfo["name"])
        return inst.raw_function(kernel.launch, finfo["name"])

    inst.register_func("wasm.WebGPUDeviceAPI", device_api, override=True)
    inst.register_func("wasm.WebGPUCreateShader", create_shader, override=True)
    inst.register_func("__asyncify.WebGPUWaitForTasks", lambda: ctx.stream_sync(), override=True)
    ctx._device_api_functions = functions  # type: ignore[attr-defined]
