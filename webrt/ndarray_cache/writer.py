"""Write a tensor cache: tensors packed into shards of at most 32 MB, each with its md5sum.

Pure Python over bytes-like objects (numpy arrays work through the buffer protocol).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from webrt.ndarray_cache.format import INDEX_NAMES, DTYPE_BYTES, ShardRecord, TensorCacheIndex, TensorRecord

SHARD_CAP_BYTES = 32 * 1024 * 1024


def _shard_name(i: int) -> str:
    return f"params_shard_{i}.bin"


def write_tensor_cache(
    out_dir: str | Path,
    tensors: Iterable[tuple[str, tuple[int, ...], str, memoryview | bytes]],
    shard_cap_bytes: int = SHARD_CAP_BYTES,
    logical_param_count: int | None = None,
) -> TensorCacheIndex:
    """Pack ``(name, shape, dtype, data)`` into shards in ``out_dir`` and write both index names.

    Tensors keep their given order; a tensor larger than the cap gets a shard of its own.
    ``logical_param_count`` is the model's parameter count before quantization packing (MLC's
    ``ParamSize``); by default, the number of stored elements.
    """
    out = Path(out_dir)
    shards: list[ShardRecord] = []
    pending: list[TensorRecord] = []
    md5 = hashlib.md5()
    offset = 0
    handle = None
    param_count = 0
    param_bytes = 0

    def close_shard() -> None:
        nonlocal handle, pending, md5, offset
        if handle is None:
            return
        handle.close()
        shards.append(ShardRecord(_shard_name(len(shards)), offset, md5.hexdigest(), tuple(pending)))
        handle, pending, md5, offset = None, [], hashlib.md5(), 0

    for name, shape, dtype, data in tensors:
        view = memoryview(data).cast("B")
        if handle is not None and offset + view.nbytes > shard_cap_bytes:
            close_shard()
        if handle is None:
            handle = open(out / _shard_name(len(shards)), "wb")
        handle.write(view)
        md5.update(view)
        pending.append(TensorRecord(name, tuple(shape), dtype, "raw", view.nbytes, offset))
        offset += view.nbytes
        count = 1
        for d in shape:
            count *= d
        param_count += count
        param_bytes += view.nbytes
        if dtype in DTYPE_BYTES and count * DTYPE_BYTES[dtype] != view.nbytes:
            raise ValueError(f"{name}: {view.nbytes} bytes do not match shape {shape} of {dtype}")
    close_shard()

    size = logical_param_count if logical_param_count is not None else param_count
    metadata = {
        "ParamSize": size,
        "ParamBytes": param_bytes,
        "BitsPerParam": round(param_bytes * 8 / size, 4) if size else 0.0,
    }
    index = TensorCacheIndex(metadata, tuple(shards))
    text = index.dumps()
    for index_name in INDEX_NAMES:
        (out / index_name).write_text(text)
    return index
