"""The globals TVM's WebGPU runtime (webgpu_runtime.cc) looks up, registered on an instance:
the device API getter `wasm.WebGPUDeviceAPI`, `wasm.WebGPUCreateShader` (kernels created lazily)
and `__asyncify.WebGPUWaitForTasks` (C++ stream sync; never called by webrt's model functions)."""

from __future__ import annotations

import json
import struct
from typing import Any, Callable

from webrt.errors import ModelLibraryError
from webrt.wasm.webgpu.context import WebGPUContext


def register_device_api(inst: Any, ctx: WebGPUContext) -> None:
    """Register TVM's WebGPU globals on `inst` (a `webrt.wasm.instance.Instance`) over `ctx`."""
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
