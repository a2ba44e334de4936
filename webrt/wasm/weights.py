"""Weights onto the device: tensor-cache records from JS ArrayBuffers into new device tensors
(GPU buffers for a WebGPU library, wasm memory for a CPU one).

The shards themselves come from `webrt.ndarray_cache.artifact_cache.ArtifactCache` (fetched
through the browser cache, verified); `upload_record` writes one record from a shard's buffer
straight into a new GPU tensor (`GPUQueue.writeBuffer` from the JS buffer, never copied into
Python), `upload_params` does it for the names a library asks for and returns the packed
parameter array (`vm.builtin.param_array_from_cache_by_name`).
"""

from __future__ import annotations

from typing import Any, AsyncIterable, Sequence

from webrt.ndarray_cache.format import ShardRecord, TensorRecord
from webrt.wasm.ffi import CPU, WEBGPU, Device
from webrt.wasm.objects import Array, Tensor


def upload_record(runtime: Any, record: TensorRecord, shard_data: Any, device: Device = WEBGPU) -> Tensor:
    """A new tensor on `device` holding `record` from `shard_data` (a JS ArrayBuffer).

    `runtime` is a `webrt.wasm.runtime.Runtime`. Raw records go straight from the JS buffer to
    the GPU; `f32-to-bf16` records are widened in wasm memory by TVM's
    `tvmjs.array.decode_bf16_to_f32_inplace`, then copied.
    """
    import js

    record.check()
    inst = runtime.inst
    tensor = inst.empty(record.shape, record.dtype, device)
    if record.nbytes == 0:
        return tensor
    if record.format == "raw":
        if device == WEBGPU:
            runtime.gpu_ctx.write_js(tensor.data, tensor.byte_offset, shard_data, record.byte_offset, record.nbytes)
        else:
            inst.memory.view(tensor.data + tensor.byte_offset, record.nbytes).set(
                js.Uint8Array.new(shard_data, record.byte_offset, record.nbytes))
        return tensor
    # f32-to-bf16: widen on the CPU side of the wasm, then copy to the device
    host = tensor if device == CPU else inst.empty(record.shape, "float32", CPU)
    inst.memory.view(host.data + host.byte_offset, record.nbytes).set(
        js.Uint8Array.new(shard_data, record.byte_offset, record.nbytes))
    inst.global_function("tvmjs.array.decode_bf16_to_f32_inplace")(host, record.nbytes)
    if host is not tensor:
        runtime.gpu_ctx.copy_to_gpu(host.data + host.byte_offset, tensor.data, tensor.byte_offset,
                                    host.nbytes)
    return tensor


async def upload_params(runtime: Any, names: Sequence[str], shards: AsyncIterable[tuple[ShardRecord, Any]]) -> Array:
    """Upload the tensors `names` from each `(shard, JS ArrayBuffer)` to `runtime.device` (the GPU,
    or wasm memory for a `webrt.wasm.cpu.CPURuntime`); return the packed parameter array
    (`vm.builtin.param_array_from_cache_by_name`)."""
    wanted = set(names)
    device = getattr(runtime, "device", WEBGPU)
    inst = runtime.inst
    update = inst.global_function("vm.builtin.tensor_cache.update")
    clear = inst.global_function("vm.builtin.tensor_cache.clear")
    clear()
    async for shard, data in shards:
        for record in shard.records:
            if record.name in wanted:
                update(record.name, upload_record(runtime, record, data, device), True)
    params = inst.global_function("vm.builtin.param_array_from_cache_by_name")(list(names))
    clear()
    if runtime.gpu_ctx is not None:
        runtime.gpu_ctx.flush()
    return params
