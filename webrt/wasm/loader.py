"""The engine's `ModelLoader` in the browser: files through the cache, the library on WebGPU.

    loader = WebGPUModelLoader(app_config)                 # its cache_backend picks the store
    engine = Engine(app_config, loader=loader, init_progress_callback=print)
    await engine.reload("SmolLM2-135M-Instruct-q4f32_1")

For a `ModelRecord` it resolves the files as WebLLM does (``record.model`` + ``resolve/main/``
unless it names a revision; `webrt.ndarray_cache.urls`), reads ``mlc-chat-config.json`` and the
tokenizer files through the cache, requests a WebGPU device with the record's
``required_features`` (a missing ``shader-f16`` raises FeatureNotSupportedError naming the f32
build), fetches the library (cached), then loads the weights (cached shards, verified, straight
to the GPU) while the compute pipelines are created, reporting ``{progress, timeElapsed, text}``.

Kernel list: the first load creates every pipeline of the library. While the model runs, the
backend notices kernels launched for the first time and saves their names in the cache; the next
load creates only those, and any other kernel is still created on its first launch (TVM's
lazy ``wasm.WebGPUCreateShader``), after which the saved list grows. Pipeline creation dominates
load time on slow adapters (SwiftShader), so this is where a second load gains most.

The CPU library: a record may also name ``model_lib_cpu``, a library compiled with
``webrt compile --device wasm`` (wasm32+simd128 kernels, tensors in wasm memory; see
`webrt.wasm.cpu`). `choose_library` picks it when the record (``device="cpu"``) or the loader
(``WebGPUModelLoader(device="cpu")``) asks for it, or, with ``device="auto"``, when the page has
no usable WebGPU: no ``navigator.gpu``, no adapter, a device without the record's required
features, or a fallback (software) adapter (``GPUAdapter.info.isFallbackAdapter``; Chromium's
SwiftShader is one, and a software GPU runs these models far slower than wasm on the same CPU).
Without ``model_lib_cpu`` the loader uses ``model_lib`` on whatever adapter there is, as before.
The CPU library runs TVM's parallel loops on ``threads`` CPU threads (`webrt.wasm.threads`): by
default as many as the page allows (the cores, at most 4, on a cross-origin isolated page with the
engine in a worker; one elsewhere).

WebGPU kernel variants: ``model_lib`` is normally built with ``--kernels gpu`` (coalesced kernels
for real GPUs, as WebLLM loads it); a record may also name ``model_lib_fallback``, the same model
built with ``--kernels fallback`` (barrier-free kernels, several times faster on a software
adapter). On a fallback adapter the loader prefers ``model_lib_cpu``, then ``model_lib_fallback``,
then ``model_lib``; on a real adapter it uses ``model_lib``. A library whose ``_metadata`` needs
what the adapter lacks (shader-f16, a subgroup size) is refused with a FeatureNotSupportedError
that names the record's other libraries to use instead.

All the libraries read the same weights, through the same cache (each library is cached under its
own URL).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Sequence

from webrt.chat_config import CHAT_CONFIG_FILE
from webrt.engine.config import AppConfig, ModelRecord
from webrt.engine.progress import InitProgressCallback, ProgressReporter
from webrt.errors import FeatureNotSupportedError, ModelConfigError
from webrt.ndarray_cache.artifact_cache import ArtifactCache
from webrt.ndarray_cache.cache_helpers import library_url, model_base_url
from webrt.ndarray_cache.fetch import DEFAULT_POLICY, FetchPolicy
from webrt.ndarray_cache.integrity import ModelIntegrity
from webrt.ndarray_cache.urls import absolute_url, join_url
from webrt.wasm.backend import WasmBackend
from webrt.wasm.cpu import CPURuntime
from webrt.wasm.objects import Array
from webrt.wasm.runtime import Runtime
from webrt.wasm.threads import check_threads, resolve_threads
from webrt.wasm.webgpu.device import GPUInfo, request_device
from webrt.wasm.webgpu.features import check_library
from webrt.wasm.weights import upload_params

#: `LoaderChoice.library` values
WEBGPU, CPU = "webgpu", "cpu"
LOADER_DEVICES = ("auto", WEBGPU, CPU)
#: the ModelRecord fields naming libraries, and what each one is
LIBRARY_FIELDS = {
    "model_lib": "the WebGPU library",
    "model_lib_fallback": "the WebGPU library for fallback adapters (--kernels fallback)",
    "model_lib_cpu": "the CPU library (--device wasm)",
}

#: Share of the progress bar for each phase (weights and pipelines run concurrently).
_WEIGHTS_SHARE = 0.5


def quantization_of(record: ModelRecord, chat_config: dict[str, Any]) -> str | None:
    """The record's quantization: mlc-chat-config.json's, else the one its model id names."""
    quant = chat_config.get("quantization")
    if isinstance(quant, str) and quant:
        return quant
    for text in (record.model_id, record.model_lib):
        for piece in text.replace("/", "-").replace(".", "-").split("-"):
            if _is_quantization_name(piece):
                return piece
    return None


def _is_quantization_name(piece: str) -> bool:
    """MLC's names: q<bits>f<bits>, optionally _<variant> (q4f16_1, q0f32)."""
    head, _, variant = piece.partition("_")
    if not head.startswith("q") or "f" not in head or (variant and not variant.isdigit()):
        return False
    bits, _, float_bits = head[1:].partition("f")
    return bits.isdigit() and float_bits.isdigit()


def cpu_library_url(record: ModelRecord, base: str | None = None) -> str:
    """The absolute URL of a record's CPU library (``model_lib_cpu``)."""
    if not record.model_lib_cpu:
        raise ModelConfigError(f"model record {record.model_id!r} names no model_lib_cpu (a library compiled "
                               "with `webrt compile --device wasm`)")
    return absolute_url(record.model_lib_cpu, base)


@dataclass(frozen=True)
class LibraryChoice:
    """Which library a load uses (`WEBGPU` or `CPU`), the record field naming it, and why."""

    library: str
    reason: str
    field: str = "model_lib"


def refusal_naming_alternatives(exc: FeatureNotSupportedError, record: ModelRecord, field: str,
                                metadata: dict[str, Any]) -> FeatureNotSupportedError:
    """``exc`` (the adapter cannot run the library ``record.<field>`` names, whose ``_metadata`` is
    ``metadata``) naming the record's libraries that can run instead: the CPU library (no GPU
    features), and the fallback variant when the refused library needs subgroups (the fallback
    kernels use none). ``exc`` itself when there is none."""
    usable = ["model_lib_cpu"]
    if field != "model_lib_fallback" and int((metadata.get("webrt") or {}).get("subgroup_size") or 0) > 0:
        usable.append("model_lib_fallback")
    others = [f"{name} {getattr(record, name)!r} ({LIBRARY_FIELDS[name]})" for name in usable
              if getattr(record, name)]
    if not others:
        return exc
    return FeatureNotSupportedError(f"{exc} Load the record's {' or '.join(others)} instead.")


class KernelTrackingBackend(WasmBackend):
    """A `WasmBackend` that saves the kernels the model launched, whenever new ones appear.

    Checked after each download (every generated token reads one back): counting launched
    kernels is a loop over the library's ~70 kernels, a few microseconds.
    """

    def __init__(self, runtime: Runtime, params: Any, cache: ArtifactCache, wasm_url: str, wasm_bytes: int,
                 saved: Sequence[str] = ()):
        super().__init__(runtime, params)
        self._cache, self._wasm_url, self._wasm_bytes = cache, wasm_url, wasm_bytes
        self._saved = set(saved)
        self._launched = 0
        self._tasks: set[asyncio.Future[Any]] = set()

    def download(self, tensor: Any, nbytes: int | None = None) -> bytes:
        data = super().download(tensor, nbytes)
        self._check_kernels()
        return data

    def _check_kernels(self) -> None:
        kernels = self.runtime.gpu_ctx.kernels
        launched = sum(1 for k in kernels if k.launches)
        if launched == self._launched:
            return
        self._launched = launched
        names = set(self.runtime.launched_kernels())
        if names <= self._saved:
            return
        self._saved |= names
        task = asyncio.ensure_future(self._cache.save_launched_kernels(self._wasm_url, self._saved, self._wasm_bytes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def saved(self) -> list[str]:
        """Wait for pending saves; the kernel names saved so far."""
        self._check_kernels()
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
        return sorted(self._saved)


class WebGPUModelLoader:
    """`ModelLoader` for Pyodide + WebGPU (see the module docstring)."""

    def __init__(self, app_config: AppConfig | None = None, *, cache_backend: str | None = None,
                 concurrency: int = 4, use_kernel_list: bool = True, gpu: GPUInfo | None = None,
                 device: str = "auto", fetch_policy: FetchPolicy = DEFAULT_POLICY,
                 threads: int | None = None):
        if device not in LOADER_DEVICES:
            raise ModelConfigError(f"device must be one of {LOADER_DEVICES}, got {device!r}")
        check_threads(threads)
        #: CPU threads of the CPU library: None or 0 = what the page allows (several when cross-origin
        #: isolated and running in a worker, else 1); more than 1 where the page cannot have them
        #: raises ThreadsUnavailableError at load (`webrt.wasm.threads.resolve_threads`)
        self.threads = threads
        backend = cache_backend or (app_config.cache_backend if app_config is not None else "cache")
        #: downloads: retries, backoff and the stall timeout are ``fetch_policy``'s
        self.cache = ArtifactCache(backend, concurrency, fetch_policy)
        self.use_kernel_list = use_kernel_list
        self.gpu = gpu
        #: "auto", "webgpu" or "cpu": which library to use when a record names both (the record's
        #: own ``device`` wins when it is not "auto")
        self.device = device
        #: timings and fetch statistics of the last `load`
        self.last_load: dict[str, Any] = {}

    # --- ModelLoader --------------------------------------------------------------------------
    async def read_text(self, record: ModelRecord, filename: str) -> str | None:
        store = self.cache.config if filename == CHAT_CONFIG_FILE else self.cache.model
        url = join_url(model_base_url(record), filename)
        return await self.cache.fetch_text(store, url, integrity=record.integrity)

    async def load(self, record: ModelRecord, chat_config: dict[str, Any],
                   progress_callback: InitProgressCallback | None) -> WasmBackend:
        t0 = time.perf_counter()
        report = ProgressReporter(progress_callback)
        choice = await self.choose_library(record, chat_config)
        if choice.library == CPU:
            return await self._load_cpu(record, report, choice, t0)
        try:
            gpu = await self.gpu_device(record.required_features, quantization_of(record, chat_config))
        except FeatureNotSupportedError as exc:
            if record.model_lib_cpu:
                raise
            raise FeatureNotSupportedError(
                f"{exc} Or give the model record a CPU library for pages without WebGPU: model_lib_cpu, "
                "compiled with `webrt compile --device wasm`.") from exc
        wasm_url = absolute_url(getattr(record, choice.field)) if choice.field != "model_lib" else library_url(record)
        report(0.01, f"Fetching the model library {wasm_url.rsplit('/', 1)[-1]}")
        wasm = await self.cache.fetch_library(wasm_url, record.integrity, choice.field)
        t_wasm = time.perf_counter()
        runtime = await Runtime.load(wasm, gpu, check=False)
        try:
            check_library(runtime.metadata, gpu)
        except FeatureNotSupportedError as exc:
            runtime.dispose()
            refusal = refusal_naming_alternatives(exc, record, choice.field, runtime.metadata)
            if refusal is exc:
                raise
            raise refusal from exc
        except BaseException:
            runtime.dispose()
            raise
        runtime.check_memory(chat_config)  # GPUOutOfMemoryError before any weight is downloaded
        kernels = await self.cache.launched_kernels(wasm_url) if self.use_kernel_list else None
        known = runtime.kernel_infos()
        wanted = None if kernels is None else [k for k in kernels if k in known]
        progress = report.phases({"weights": _WEIGHTS_SHARE, "pipelines": 1 - _WEIGHTS_SHARE}, 0.05, 0.99)
        t_phases = time.perf_counter()
        weights = asyncio.ensure_future(
            self._load_params(runtime, model_base_url(record), progress["weights"], record.integrity))
        pipelines = asyncio.ensure_future(
            runtime.load_pipelines(wanted, progress["pipelines"]))
        try:
            params, pipelines_s = await asyncio.gather(weights, pipelines)
        except BaseException:
            for task in (weights, pipelines):  # a failed download need not wait for the pipelines
                task.cancel()
            await asyncio.gather(weights, pipelines, return_exceptions=True)
            runtime.dispose()
            raise
        backend = KernelTrackingBackend(runtime, params, self.cache, wasm_url, int(wasm.byteLength), wanted or ())
        self.last_load = {
            "model_id": record.model_id,
            "library": WEBGPU,
            "library_field": choice.field,
            "kernels": runtime.metadata.get("webrt", {}).get("kernels"),
            "reason": choice.reason,
            "library_s": t_wasm - t0,
            "instantiate_s": runtime.timings.get("instantiate_s", 0.0) + runtime.timings.get("vm_s", 0.0),
            "weights_s": runtime.timings.get("weights_s", 0.0),
            "pipelines_s": pipelines_s,
            "weights_and_pipelines_s": time.perf_counter() - t_phases,
            "pipelines_n": runtime.timings.get("pipelines_n", 0),
            "kernels_total": len(known),
            "kernel_list": wanted is not None,
            "load_s": time.perf_counter() - t0,
            "fetch": self.cache.stats.to_json(),
        }
        return backend

    async def _load_cpu(self, record: ModelRecord, report: ProgressReporter, choice: LibraryChoice,
                        t0: float) -> WasmBackend:
        """The CPU library (``model_lib_cpu``) and the weights into its memory."""
        url = cpu_library_url(record)
        threads = resolve_threads(self.threads)  # before any download: a page without threads fails now
        report(0.01, f"Fetching the CPU model library {url.rsplit('/', 1)[-1]} ({choice.reason})")
        wasm = await self.cache.fetch_library(url, record.integrity, "model_lib_cpu")
        t_wasm = time.perf_counter()
        runtime = await CPURuntime.load(wasm, threads, required=bool(self.threads))
        progress = report.phases({"weights": 1.0}, 0.05, 0.99)
        try:
            params = await self._load_params(runtime, model_base_url(record), progress["weights"], record.integrity)
        except BaseException:
            runtime.dispose()
            raise
        self.last_load = {
            "model_id": record.model_id,
            "library": CPU,
            "reason": choice.reason,
            "library_s": t_wasm - t0,
            "instantiate_s": runtime.timings.get("instantiate_s", 0.0) + runtime.timings.get("vm_s", 0.0),
            "weights_s": runtime.timings.get("weights_s", 0.0),
            "memory_bytes": runtime.memory_bytes,
            "threads": runtime.threads,
            "load_s": time.perf_counter() - t0,
            "fetch": self.cache.stats.to_json(),
        }
        return WasmBackend(runtime, params)

    # --- parts --------------------------------------------------------------------------------
    async def choose_library(self, record: ModelRecord, chat_config: dict[str, Any] | None = None) -> LibraryChoice:
        """The library to load for `record` (see the module docstring); requests the WebGPU device
        when it has to look at the adapter (kept for the WebGPU load that follows)."""
        wanted = record.device if record.device != "auto" else self.device
        if wanted == CPU:
            if not record.model_lib_cpu:
                raise ModelConfigError(f"the loader asks for the CPU library, but model record {record.model_id!r} "
                                       "names no model_lib_cpu; compile one with `webrt compile --device wasm`")
            return LibraryChoice(CPU, "asked for the CPU library", "model_lib_cpu")
        use_cpu = bool(record.model_lib_cpu) and wanted != WEBGPU
        if not use_cpu and not record.model_lib_fallback:
            why = "asked for the WebGPU library" if wanted == WEBGPU else "the record names no other library"
            return LibraryChoice(WEBGPU, why)
        quantization = quantization_of(record, chat_config or {})
        try:
            gpu = await self.gpu_device(record.required_features, quantization)
        except FeatureNotSupportedError as exc:
            if use_cpu:
                return LibraryChoice(CPU, f"no usable WebGPU: {str(exc).splitlines()[0]}", "model_lib_cpu")
            return LibraryChoice(WEBGPU, "no usable WebGPU (the load reports why)")
        if gpu.is_fallback:
            why = f"the WebGPU adapter is a fallback adapter ({gpu.description})"
            if use_cpu:
                return LibraryChoice(CPU, why, "model_lib_cpu")
            if record.model_lib_fallback:
                return LibraryChoice(WEBGPU, why, "model_lib_fallback")
        return LibraryChoice(WEBGPU, f"WebGPU adapter {gpu.description}")

    async def gpu_device(self, required_features: Sequence[str] = (), quantization: str | None = None) -> GPUInfo:
        """The loader's device, (re)requested when it is lost or lacks a required feature."""
        gpu = self.gpu
        if gpu is None or gpu.lost or any(f not in gpu.features for f in required_features):
            gpu = await request_device(required_features, quantization)
            self.gpu = gpu
        return gpu

    async def _load_params(self, runtime: Runtime | CPURuntime, base_url: str, progress: Any,
                           integrity: ModelIntegrity | None = None) -> Array:
        """Weights from the cache (or network) straight to the device (GPU buffers or wasm memory),
        checked against the record's ``integrity``; the packed parameter array."""
        t0 = time.perf_counter()
        index = await self.cache.fetch_index(base_url, integrity)
        names = runtime.param_names
        index.check_params(names, runtime.metadata.get("params", []), base_url)
        shards = self.cache.iter_shards(base_url, index.shards_holding(names), progress, integrity)
        try:
            params = await upload_params(runtime, names, shards)
        finally:
            await shards.aclose()  # stops the downloads still running if an upload failed
        runtime.timings["weights_s"] = time.perf_counter() - t0
        return params
