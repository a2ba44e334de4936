"""Weights for a WebGPU model library: fetch a tensor cache and upload its records to the GPU.

Two separate steps so caching (Cache Storage / IndexedDB), md5 checks and progress can sit
between them: `fetch_index` / `fetch_shard` return the index and each shard's bytes as a JS
ArrayBuffer (never copied into Python), `upload_record` writes one record from such a buffer
straight into a new GPU tensor (`GPUQueue.writeBuffer` from the JS buffer). `load_params` does
both for the names a library asks for and returns the packed parameter array
(`vm.builtin.param_array_from_cache_by_name`).
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterable, AsyncIterator, Callable, Sequence

from webrt.errors import FetchError, WeightFileError
from webrt.ndarray_cache.format import (
    DTYPE_BYTES,
    INDEX_NAME,
    LEGACY_INDEX_NAME,
    ShardRecord,
    TensorCacheIndex,
    TensorRecord,
)
from webrt.wasm.ffi import CPU, WEBGPU, Device
from webrt.wasm.objects import Array, Tensor

ProgressCallback = Callable[[dict[str, Any]], None]


def join_url(base: str, name: str) -> str:
    return base + name if base.endswith("/") else f"{base}/{name}"


async def _fetch(url: str) -> Any:
    import js

    try:
        response = await js.fetch(url)
    except Exception as exc:  # noqa: BLE001 - a JS TypeError for network failures
        raise FetchError(f"could not fetch {url}: {exc}") from None
    if not response.ok:
        raise FetchError(f"could not fetch {url}: HTTP {response.status}")
    return response


async def fetch_index(base_url: str) -> TensorCacheIndex:
    """`tensor-cache.json` (or the legacy `ndarray-cache.json`) under `base_url`."""
    last: Exception | None = None
    for name in (INDEX_NAME, LEGACY_INDEX_NAME):
        try:
            response = await _fetch(join_url(base_url, name))
        except FetchError as exc:
            last = exc
            continue
        return TensorCacheIndex.loads(str(await response.text()), name)
    raise FetchError(f"{base_url} has neither {INDEX_NAME} nor {LEGACY_INDEX_NAME}: {last}")


async def fetch_shard(base_url: str, shard: ShardRecord) -> Any:
    """The bytes of one shard as a JS ArrayBuffer (checked against its recorded size)."""
    response = await _fetch(join_url(base_url, shard.data_path))
    data = await response.arrayBuffer()
    if int(data.byteLength) != shard.nbytes:
        raise WeightFileError(f"{shard.data_path} has {int(data.byteLength)} bytes but the index says "
                              f"{shard.nbytes}; the download is truncated or the index is stale.")
    return data


def _check_record(record: TensorRecord) -> None:
    if record.dtype not in DTYPE_BYTES:
        raise WeightFileError(f"{record.name}: unsupported dtype {record.dtype}")
    count = 1
    for d in record.shape:
        if d < 0:
            raise WeightFileError(f"{record.name}: negative dimension in {record.shape}")
        count *= d
    want = count * DTYPE_BYTES[record.dtype]
    if record.format == "f32-to-bf16":
        if record.dtype != "float32" or record.nbytes != count * 2:
            raise WeightFileError(f"{record.name}: f32-to-bf16 record of {record.nbytes} bytes for {record.shape}")
    elif record.nbytes != want:
        raise WeightFileError(f"{record.name}: {record.nbytes} bytes recorded for {record.shape} {record.dtype} "
                              f"({want} expected)")


def upload_record(runtime: Any, record: TensorRecord, shard_data: Any, device: Device = WEBGPU) -> Tensor:
    """A new tensor on `device` holding `record` from `shard_data` (a JS ArrayBuffer).

    `runtime` is a `webrt.wasm.runtime.Runtime`. Raw records go straight from the JS buffer to
    the GPU; `f32-to-bf16` records are widened in wasm memory by TVM's
    `tvmjs.array.decode_bf16_to_f32_inplace`, then copied.
    """
    import js

    _check_record(record)
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


def check_params(index: TensorCacheIndex, names: Sequence[str], expected: Sequence[dict[str, Any]],
                 where: str) -> None:
    """Raise WeightFileError unless `index` has every parameter `names` with the `expected` shapes."""
    located = index.tensors()
    missing = [n for n in names if n not in located]
    if missing:
        raise WeightFileError(f"{where} lacks {len(missing)} parameter(s) the library needs (e.g. {missing[0]}); "
                              "the weights and the library come from different models or quantizations.")
    for p in expected:
        rec = located[p["name"]][1]
        if list(rec.shape) != list(p["shape"]) or rec.dtype != p["dtype"]:
            raise WeightFileError(f"{p['name']} is {list(rec.shape)} {rec.dtype} in the weights but the library "
                                  f"expects {p['shape']} {p['dtype']}; re-run convert_weight with the library's "
                                  "quantization.")


def shards_needed(index: TensorCacheIndex, names: Sequence[str]) -> list[ShardRecord]:
    """The shards of `index` that hold at least one of the tensors `names`, in index order."""
    wanted = set(names)
    return [s for s in index.shards if any(t.name in wanted for t in s.records)]


async def upload_params(runtime: Any, names: Sequence[str], shards: AsyncIterable[tuple[ShardRecord, Any]]) -> Array:
    """Upload the tensors `names` from each `(shard, JS ArrayBuffer)` to the GPU; return the packed
    parameter array (`vm.builtin.param_array_from_cache_by_name`)."""
    wanted = set(names)
    inst = runtime.inst
    update = inst.global_function("vm.builtin.tensor_cache.update")
    clear = inst.global_function("vm.builtin.tensor_cache.clear")
    clear()
    async for shard, data in shards:
        for record in shard.records:
            if record.name in wanted:
                update(record.name, upload_record(runtime, record, data), True)
    params = inst.global_function("vm.builtin.param_array_from_cache_by_name")(list(names))
    clear()
    runtime.gpu_ctx.flush()
    return params


async def load_params(runtime: Any, base_url: str, names: Sequence[str], expected: Sequence[dict[str, Any]] = (),
                      progress: ProgressCallback | None = None) -> Array:
    """Fetch the tensor cache under `base_url`, upload the tensors `names`, return the param array.

    `expected`: the library's `params` metadata ({name, shape, dtype}) to check shapes against.
    """
    t0 = time.perf_counter()
    index = await fetch_index(base_url)
    check_params(index, names, expected, base_url)
    shards = shards_needed(index, names)
    total = sum(s.nbytes for s in shards) or 1

    async def fetched() -> AsyncIterator[tuple[ShardRecord, Any]]:
        done = 0
        for i, shard in enumerate(shards):
            yield shard, await fetch_shard(base_url, shard)
            done += shard.nbytes
            if progress is not None:
                elapsed = time.perf_counter() - t0
                progress({"progress": done / total, "timeElapsed": elapsed,
                          "text": f"Loading weights [{i + 1}/{len(shards)}]: {done >> 20} MB, {elapsed:.1f} s elapsed."})

    return await upload_params(runtime, names, fetched())
