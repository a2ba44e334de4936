"""The WebGPU adapter and device: `request_device` with the features a library needs and the
limits raised to what the adapter offers, and `GPUInfo`, what the device offers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from webrt.errors import FeatureNotSupportedError
from webrt.wasm.webgpu.features import missing_feature_message
from webrt.wasm.webgpu.waits import GPU_WAIT_S, wait_bounded

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


@dataclass
class LiveBuffers:
    """GPUBuffers created and not yet destroyed on one device, by every context on it."""

    count: int = 0
    nbytes: int = 0

    def created(self, size: int) -> None:
        self.count += 1
        self.nbytes += size

    def destroyed(self, size: int) -> None:
        self.count -= 1
        self.nbytes -= size


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
    #: uncaptured out-of-memory errors not yet reported (`WebGPUContext.check_device` raises them)
    out_of_memory: list[str] = field(default_factory=list)
    #: seconds any one wait on this device may take (`webrt.wasm.webgpu.waits`)
    wait_timeout_s: float = GPU_WAIT_S
    #: buffers alive on this device (storage, staging, uniforms of every model loaded on it)
    live: LiveBuffers = field(default_factory=LiveBuffers)
    #: the device's event listeners (JS proxies), kept alive with it
    listeners: list[Any] = field(default_factory=list, repr=False)

    @property
    def is_fallback(self) -> bool:
        """Whether the adapter is a fallback (software) one: ``GPUAdapter.info.isFallbackAdapter``,
        or the older ``GPUAdapter.isFallbackAdapter``. Chromium's SwiftShader is one."""
        if self.info.get("isFallbackAdapter"):
            return True
        return bool(getattr(self.adapter, "isFallbackAdapter", False))

    def lost_message(self, detail: str | None = None) -> str:
        """Why the device is gone, and what to do (DeviceLostError's message)."""
        why = f"lost ({self.lost})" if self.lost else "lost"
        detail = f"; {detail.rstrip('. ')}" if detail else ""
        return (f"the WebGPU device ({self.description}) was {why}{detail}. The request "
                "cannot finish; reload the model (`await engine.reload(model_id)`), which requests a new device.")

    @property
    def description(self) -> str:
        i = self.info
        parts = [i.get("vendor"), i.get("architecture"), i.get("description")]
        name = " ".join(p for p in parts if p) or "unknown adapter"
        return name + (" (fallback adapter)" if self.is_fallback else "")


def _js_dict(obj: Any, keys: Iterable[str]) -> dict[str, Any]:
    out = {}
    for k in keys:
        v = getattr(obj, k, None)
        if v is not None and not callable(v):
            out[k] = v
    return out


async def request_device(required_features: Sequence[str] = (), quantization: str | None = None,
                         power_preference: str = "high-performance") -> GPUInfo:
    """Find the adapter and create a device; raise FeatureNotSupportedError if a feature is missing."""
    import js
    from pyodide.ffi import create_proxy, to_js

    gpu = getattr(js.navigator, "gpu", None)
    if gpu is None:
        raise FeatureNotSupportedError("this browser has no WebGPU (navigator.gpu is undefined); use a recent "
                                       "Chrome/Edge, or Chromium with --enable-unsafe-webgpu.")
    adapter = await wait_bounded(gpu.requestAdapter(to_js({"powerPreference": power_preference},
                                                          dict_converter=js.Object.fromEntries)),
                                 GPU_WAIT_S, "requesting a WebGPU adapter")
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
            raise FeatureNotSupportedError(missing_feature_message(feature, quantization, desc))
    limits: dict[str, int] = {}
    for name in RAISED_LIMITS:
        value = getattr(adapter.limits, name, None)
        if value is not None:
            limits[name] = int(value)
    wanted = sorted(set(required_features) | {f for f in OPTIONAL_FEATURES if f in features})
    descriptor = to_js({"requiredFeatures": wanted, "requiredLimits": limits}, dict_converter=js.Object.fromEntries)
    device = await wait_bounded(adapter.requestDevice(descriptor), GPU_WAIT_S, "requesting a WebGPU device")
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
        if str(getattr(getattr(event.error, "constructor", None), "name", "")) == "GPUOutOfMemoryError":
            result.out_of_memory.append(msg or "a GPU allocation failed")
        js.console.error(f"[webrt webgpu] uncaptured error: {msg}")

    def on_lost(info: Any) -> None:
        result.lost = f"{getattr(info, 'reason', '')}: {getattr(info, 'message', '')}"

    result.listeners = [create_proxy(on_error), create_proxy(on_lost)]
    device.addEventListener("uncapturederror", result.listeners[0])
    device.lost.then(result.listeners[1])
    return result
