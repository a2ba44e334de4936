"""Compute pipelines of TVM's WGSL kernels: one bind group layout per kernel (its buffers in
argument order, `storage` or `read-only-storage`, then the dynamic-offset `PODArgs` uniform)."""

from __future__ import annotations

from typing import Any

from webrt.wasm.webgpu.kernels import KernelSpec


def js_desc(**kw: Any) -> Any:
    """A WebGPU descriptor (a plain JS object) from keyword arguments."""
    import js
    from pyodide.ffi import to_js

    return to_js(kw, dict_converter=js.Object.fromEntries)


def _layouts(device: Any, spec: KernelSpec) -> tuple[Any, Any]:
    import js

    compute = js.GPUShaderStage.COMPUTE
    entries = []
    for b, write in enumerate(spec.write_access):
        entries.append({"binding": b, "visibility": compute,
                        "buffer": {"type": "storage" if write else "read-only-storage"}})
    entries.append({"binding": len(spec.buffer_args), "visibility": compute,
                    "buffer": {"type": "uniform", "hasDynamicOffset": True}})
    bgl = device.createBindGroupLayout(js_desc(entries=entries))
    layout = device.createPipelineLayout(js_desc(bindGroupLayouts=[bgl]))
    return bgl, layout


def pipeline_descriptor(device: Any, spec: KernelSpec, code: str) -> tuple[Any, Any]:
    """The kernel's bind group layout and its `GPUComputePipelineDescriptor` over `code` (WGSL)."""
    bgl, layout = _layouts(device, spec)
    module = device.createShaderModule(js_desc(code=code))
    return bgl, js_desc(layout=layout, compute={"module": module, "entryPoint": spec.name})
