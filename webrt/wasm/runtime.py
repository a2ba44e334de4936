"""Load a WebGPU model library in the browser: instance + WebGPU bridge + relax VM + pipelines.

Sequence (the same as WebLLM's, in Python)::

    gpu = await request_device()                       # webrt.wasm.webgpu.device
    rt = await Runtime.load(wasm_bytes, gpu)           # instantiate, register the device API,
                                                       # VM on webgpu + pooled allocator, check metadata
    rt.check_memory(chat_config)                       # planned buffers vs the device's limits
    await rt.load_pipelines(progress=print)            # createComputePipelineAsync per kernel
    index = await cache.fetch_index(model_url)         # webrt.ndarray_cache.artifact_cache
    params = await upload_params(rt, rt.param_names, cache.iter_shards(model_url, index.shards))
                                                       # webrt.wasm.weights (see wasm/loader.py)

Blocking inside the VM (Asyncify / JSPI): webrt's model libraries never need to block inside a
call into the wasm. Every host<->GPU transfer the model functions do is either a write
(`deviceCopyToGPU`, a queue write that needs no waiting) or happens outside the VM: logits and
sampled tokens are read back by Python after the call returns (`WebGPUContext.read`, which
blocks with JSPI's `run_sync` from plain Python frames). TVM's C++ only wants to block in
`DeviceAPI::StreamSync` (via `__asyncify.WebGPUWaitForTasks`) and in a GPU->CPU
`CopyDataFromTo`; neither is reached by prefill/decode/embed/sampling or the paged KV cache
(the tests assert `stats.stream_syncs == 0` and `stats.deferred_reads == 0`). The libraries are
linked without Asyncify (no `asyncify_*` exports) and none is needed. Had a library needed it,
JSPI would do it without relinking: import the blocking callback as
`WebAssembly.Suspending(js_fn)` and call that export through `WebAssembly.promising(export)`,
awaiting (or `run_sync`-ing) the promise from Python -- checked in this Chromium with a hand-made
module (tests/browser/test_browser_runtime.py), not wired into the runtime because nothing needs it. (Plain `run_sync` inside a callback from the wasm fails:
"Cannot stack switch because the Python entrypoint was a synchronous function" -- JS frames of
the wasm call sit between Python and the suspension point.)
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Sequence

from webrt.engine.progress import InitProgressCallback, InitProgressReport
from webrt.errors import DeviceLostError, GPUTimeoutError, ModelLibraryError
from webrt.wasm.ffi import WEBGPU, AllocatorKind, Device, DeviceType
from webrt.wasm.instance import Instance
from webrt.wasm.objects import Module
from webrt.wasm.webgpu.context import WebGPUContext
from webrt.wasm.webgpu.device import GPUInfo
from webrt.wasm.webgpu.device_api import register_device_api
from webrt.wasm.webgpu.features import check_library
from webrt.wasm.webgpu.memory_plan import MemoryPlan, check_plan, plan_memory


#: `_metadata()["webrt"]["device"]` of the two kinds of browser library (`webrt compile --device`).
WEBGPU_LIBRARY, CPU_LIBRARY = "webgpu", "wasm"


class LibraryDeviceError(ModelLibraryError):
    """A model library compiled for another device than the path loading it (a CPU ``--device
    wasm`` library handed to the WebGPU path, or a WebGPU library to the CPU path)."""


def open_vm(inst: Instance, device_type: int, expect: str) -> Module:
    """The relax VM of `inst`'s system library, initialised on `device_type` (CPU host), with
    pooled allocators (WebLLM's arguments). `expect` is the library kind the caller can run
    (`WEBGPU_LIBRARY` or `CPU_LIBRARY`); the other kind raises LibraryDeviceError before the VM
    is initialised (initialising it on a device the library has no runtime for would abort the
    instance, and a WebGPU library cannot even create its system library without the WebGPU
    device API registered)."""
    # TVM's WebGPU runtime (webgpu_runtime.cc) registers `device_api.webgpu` when the instance
    # starts; a CPU library is linked without it (webrt.compiler.linking.web_runtime.CPU_RUNTIME_OBJECTS).
    has_webgpu = inst.get_global("device_api.webgpu") is not None
    if expect == WEBGPU_LIBRARY and not has_webgpu:
        raise LibraryDeviceError(
            "this model library has no WebGPU kernels: it is a CPU library (`webrt compile --device wasm`). "
            "Name it as the ModelRecord's model_lib_cpu (model_lib is the WebGPU library), or compile "
            "one with `webrt compile --device webgpu`.")
    if expect == CPU_LIBRARY and has_webgpu:
        raise LibraryDeviceError(
            "this model library is a WebGPU library; the CPU path needs one compiled with "
            "`webrt compile --device wasm` (name it as the ModelRecord's model_lib_cpu).")
    system_lib = inst.system_lib()
    loader = system_lib.get_function("vm_load_executable")
    if loader is None:
        raise ModelLibraryError("the .wasm has no vm_load_executable: it is not a relax VM model library.")
    vm: Module = loader()
    init = vm.get_function("vm_initialization")
    if init is None:
        raise ModelLibraryError("the VM module has no vm_initialization")
    init(device_type, 0, AllocatorKind.POOLED, DeviceType.CPU, 0, AllocatorKind.POOLED)
    return vm


def read_metadata(vm: Module, expect: str) -> dict[str, Any]:
    """`_metadata()` of the library, parsed; LibraryDeviceError if its ``webrt.device`` names the
    other kind of library (MLC's libraries have no ``webrt`` block and pass)."""
    meta_fn = vm.get_function("_metadata")
    if meta_fn is None:
        raise ModelLibraryError("the model library has no _metadata function; it is not a webrt/MLC model "
                                "library (recompile it with `webrt compile`).")
    metadata = json.loads(meta_fn())
    device = (metadata.get("webrt") or {}).get("device")
    if device is not None and device != expect:
        raise LibraryDeviceError(
            f"the model library was compiled with `--device {device}`, but this path runs `--device {expect}` "
            f"libraries; recompile it with `webrt compile --device {expect}`.")
    return metadata


class Runtime:
    """A model library instance with its WebGPU context and relax VM."""

    #: the device of the VM's tensors (`webrt.wasm.cpu.CPURuntime` has CPU)
    device: Device = WEBGPU

    def __init__(self, inst: Instance, gpu: GPUInfo, gpu_ctx: WebGPUContext, vm: Module, metadata: dict[str, Any]):
        self.inst, self.gpu, self.gpu_ctx, self.vm, self.metadata = inst, gpu, gpu_ctx, vm, metadata
        self.timings: dict[str, float] = {}

    @classmethod
    async def load(cls, wasm: Any, gpu: GPUInfo, check: bool = True) -> Runtime:
        """Instantiate `wasm` and create its VM on `gpu` (pipelines are loaded separately)."""
        t0 = time.perf_counter()
        inst = await Instance.create(wasm)
        t1 = time.perf_counter()
        ctx = WebGPUContext(gpu, inst.memory)
        try:
            register_device_api(inst, ctx)
            vm = open_vm(inst, DeviceType.WEBGPU, WEBGPU_LIBRARY)
            metadata = read_metadata(vm, WEBGPU_LIBRARY)
        except BaseException:
            ctx.dispose()
            inst.dispose()
            raise
        if check:
            check_library(metadata, gpu)
        rt = cls(inst, gpu, ctx, vm, metadata)
        rt.timings["instantiate_s"] = t1 - t0
        rt.timings["vm_s"] = time.perf_counter() - t1
        return rt

    def check_memory(self, chat_config: dict[str, Any]) -> MemoryPlan:
        """The GPU memory the model plans with `chat_config` (its window sizes the KV cache);
        GPUOutOfMemoryError (and the runtime disposed) if one of its buffers is above what the
        device binds: checked before any weight is downloaded."""
        plan = plan_memory(self.metadata, chat_config)
        self.gpu_ctx.memory_plan = plan
        try:
            check_plan(plan, self.gpu.limits, self.gpu.description)
        except BaseException:
            self.dispose()
            raise
        return plan

    @property
    def param_names(self) -> list[str]:
        return [p["name"] for p in self.metadata.get("params", [])]

    def kernel_infos(self) -> dict[str, dict[str, Any]]:
        """name -> TVM FunctionInfo of every WGSL kernel in the library."""
        get_fmap = self.vm.get_function("webgpu.get_fmap")
        if get_fmap is None:
            raise ModelLibraryError("the model library has no WebGPU module (was it compiled for webgpu?)")
        return json.loads(get_fmap())

    async def load_pipelines(self, names: Sequence[str] | None = None, progress: InitProgressCallback | None = None,
                             report_every_s: float = 1.0, concurrency: int = 8) -> float:
        """Create the compute pipelines of `names` (default: every kernel) with
        `createComputePipelineAsync`, up to `concurrency` at a time (the browser compiles them in
        parallel); the others are created on first launch. A kernel the adapter rejects is
        recorded in `stats.kernels_failed` (its launch raises ModelLibraryError) instead of
        failing the load; a creation that does not end within `gpu.wait_timeout_s` fails it
        (GPUTimeoutError). Returns seconds."""
        fmap = self.kernel_infos()
        wanted = None if names is None else set(names)
        todo = [n for n in fmap if wanted is None or n in wanted]
        unknown = sorted((wanted or set()) - set(fmap))
        if unknown:
            raise ModelLibraryError(f"the model library has no kernel(s) {', '.join(unknown[:3])}")
        get_shader = self.vm["webgpu.get_shader"]
        update = self.vm["webgpu.update_prebuild"]
        t0 = time.perf_counter()
        last = t0
        done = 0
        slots = asyncio.Semaphore(max(1, concurrency))

        async def create(name: str) -> None:
            nonlocal done, last
            async with slots:
                try:
                    kernel = self.gpu_ctx.kernel(name) or await self.gpu_ctx.create_kernel_async(fmap[name],
                                                                                                 get_shader(name))
                except (GPUTimeoutError, DeviceLostError):
                    raise  # the device, not this kernel: the load fails
                except Exception as exc:  # noqa: BLE001 - GPUPipelineError: the adapter rejects the WGSL
                    # the model may never launch it; if it does, the launch raises ModelLibraryError
                    self.gpu_ctx.stats.kernels_failed[name] = str(exc).splitlines()[0]
                else:
                    fn = self.inst.raw_function(kernel.launch, name)
                    update(name, fn)
                    fn.dispose()
            done += 1
            now = time.perf_counter()
            if progress is not None and (now - last >= report_every_s or done == len(todo)):
                last = now
                frac = done / len(todo)
                progress(InitProgressReport(frac, now - t0, f"Loading GPU shader modules [{done}/{len(todo)}]: "
                                            f"{int(frac * 100)}% completed, {now - t0:.1f} secs elapsed."))

        await asyncio.gather(*(create(name) for name in todo))
        self.timings["pipelines_s"] = time.perf_counter() - t0
        self.timings["pipelines_n"] = len(todo)
        return self.timings["pipelines_s"]

    def launched_kernels(self) -> list[str]:
        """Kernels launched at least once so far (persist this to create only them next time)."""
        return [k.spec.name for k in self.gpu_ctx.kernels if k.launches]

    def dispose(self) -> None:
        self.gpu_ctx.dispose()
        self.inst.dispose()
