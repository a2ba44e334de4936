"""The WebGPU side of a TVM model library, in Python on Pyodide.

- `device`: `request_device` (adapter + device with the features a library needs, limits raised
  to what the adapter offers) and `GPUInfo`.
- `features`: `check_library` refuses a library whose metadata does not fit the adapter (f16
  without `shader-f16`, a subgroup build on an adapter with smaller subgroups), naming the build
  to use instead (`f32_alternative`).
- `context`: `WebGPUContext`, TVM's WebGPU device API (alloc/free/copies/readback) and command
  recording for one instance; `buffers`: its buffer table and bind group cache.
- `kernels`: `KernelSpec` (TVM's launch convention) and `Kernel.launch`; `pipelines`: their
  compute pipelines; `device_api`: the globals TVM's C++ looks up (`register_device_api`).
- `memory_plan`: what a library will allocate (`plan_memory`), checked against the device's buffer
  limits before the weights are fetched (`check_plan`); GPUOutOfMemoryError names it and the
  smaller options.
- `waits`: every wait on the GPU bounded (`GPUInfo.wait_timeout_s`, GPUTimeoutError); a lost
  device's rejected promises become DeviceLostError.
- `stats`: the bridge's counters.
"""

from webrt.wasm.webgpu.context import WebGPUContext
from webrt.wasm.webgpu.device import OPTIONAL_FEATURES, RAISED_LIMITS, GPUInfo, request_device
from webrt.wasm.webgpu.device_api import register_device_api
from webrt.wasm.webgpu.features import check_library, f32_alternative
from webrt.wasm.webgpu.kernels import Kernel, KernelSpec, fold_grid
from webrt.wasm.webgpu.stats import Stats

__all__ = [
    "OPTIONAL_FEATURES", "RAISED_LIMITS", "GPUInfo", "Kernel", "KernelSpec", "Stats", "WebGPUContext",
    "check_library", "f32_alternative", "fold_grid", "register_device_api", "request_device",
]
