"""What a model library will allocate on the GPU, checked against the device before the weights
are downloaded, and the GPUOutOfMemoryError that names it and the smaller options.

`plan_memory` reads the library's ``memory_plan`` (``{params_bytes, kv_cache_bytes,
temp_buffer_bytes, total_bytes}``) when the compiler recorded one, else derives it from what the
metadata always has: the parameter list (shapes x dtypes), ``memory_usage`` (the static memory
plan of each function; the largest counts) and, from the chat config, the KV cache TVM's paged
cache allocates: one buffer per layer of ``pages x 2 x kv_heads x 16 x head_dim`` elements with
``pages = ceil(window / 16) + 1`` (+2 with a sliding window), plus, off CUDA and CPU, two
tree-attention masks of 256 x 256 int32 per sequence whatever the window (TVM's
paged_kv_cache.cc / attn_utils.h).

WebGPU does not tell how much memory a device has, only the largest buffer it binds
(``maxStorageBufferBindingSize``, ``maxBufferSize``): `check_plan` refuses a model whose
largest weight or KV-cache layer is above it; an allocation that fails later (a temporary
buffer, an out-of-memory error from the device) gives the same error with the same advice.
Pure Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from webrt.engine.model_runner import PAGE_SIZE, kv_cache_pages
from webrt.errors import GPUOutOfMemoryError

#: The paged cache's tree-attention masks on WebGPU: kPagedKVCacheMaxBlockDepth (2) buffers of
#: kTreeAttnMaxTreeSize^2 (256 x 256) int32 for the one sequence webrt keeps.
KV_MASKS, KV_MASK_BYTES = 2, 256 * 256 * 4
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "uint32": 4, "int8": 1, "uint8": 1,
                "int16": 2, "uint16": 2, "float64": 8, "int64": 8, "bool": 1}
_MIB = 1 << 20


def dtype_bytes(dtype: str) -> int:
    """Bytes of one element of `dtype` (4 when unknown)."""
    return _DTYPE_BYTES.get(dtype, 4)


@dataclass(frozen=True)
class MemoryPlan:
    """The GPU memory one model will use, and its largest single buffers."""

    params_bytes: int
    kv_cache_bytes: int
    temp_buffer_bytes: int
    #: the largest weight: (name, bytes)
    largest_param: tuple[str, int]
    #: layers of the KV cache, one pages buffer each (its bytes; bytes per page in it)
    kv_layers: int
    kv_layer_bytes: int
    kv_layer_bytes_per_page: int
    #: each of the KV cache's tree-attention masks (the same for any window)
    kv_mask_bytes: int
    window: int
    sliding: bool

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.kv_cache_bytes + self.temp_buffer_bytes

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["total_bytes"] = self.total_bytes
        return out

    def largest_window_within(self, limit: int) -> int:
        """The largest window whose per-layer KV buffer fits `limit` bytes (0 if none does)."""
        if not self.kv_layer_bytes_per_page:
            return self.window
        pages = limit // self.kv_layer_bytes_per_page - kv_cache_pages(0, self.sliding)  # the pages beyond the window's
        return max(0, pages * PAGE_SIZE)

    def describe(self) -> str:
        return (f"The model plans {self.total_bytes / _MIB:.1f} MiB of GPU memory: weights "
                f"{self.params_bytes / _MIB:.1f} MiB, KV cache {self.kv_cache_bytes / _MIB:.1f} MiB "
                f"({self.window}-token {'sliding ' if self.sliding else 'context '}window), temporary buffers "
                f"{self.temp_buffer_bytes / _MIB:.1f} MiB")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def plan_memory(metadata: Mapping[str, Any], chat_config: Mapping[str, Any]) -> MemoryPlan:
    """The plan of a library (`_metadata()`) run with `chat_config` (mlc-chat-config.json with
    the overrides laid over it; its window is the one the KV cache is created with)."""
    largest = ("", 0)
    params = 0
    for p in metadata.get("params") or []:
        n = dtype_bytes(str(p.get("dtype", "float32")))
        for d in p.get("shape") or []:
            n *= max(int(d), 0)
        params += n
        if n > largest[1]:
            largest = (str(p.get("name", "")), n)
    usage = metadata.get("memory_usage") or {}
    temp = max((_int(v) for v in usage.values()), default=0)

    model = chat_config.get("model_config") or {}
    layers = _int(model.get("num_hidden_layers"))
    heads = _int(model.get("num_attention_heads"))
    kv_heads = _int(model.get("num_key_value_heads")) or heads
    head_dim = _int(model.get("head_dim")) or (_int(model.get("hidden_size")) // heads if heads else 0)
    webrt = metadata.get("webrt") or {}
    quant = str(metadata.get("quantization") or chat_config.get("quantization") or "")
    dtype = webrt.get("model_dtype") or ("float16" if "f16" in quant else "float32")
    sliding = _int(chat_config.get("sliding_window_size"))
    window = sliding or _int(chat_config.get("context_window_size")) or _int(metadata.get("context_window_size"))
    per_page = 2 * kv_heads * PAGE_SIZE * head_dim * dtype_bytes(dtype)
    pages = kv_cache_pages(window, bool(sliding))
    kv_layer = pages * per_page
    kv = layers * kv_layer + KV_MASKS * KV_MASK_BYTES

    recorded = metadata.get("memory_plan")
    if isinstance(recorded, Mapping):  # the compiler's own figures win where it gives them
        params = _int(recorded.get("params_bytes")) or params
        temp = _int(recorded.get("temp_buffer_bytes")) or temp
        if _int(recorded.get("kv_cache_bytes")) and window == _int(metadata.get("context_window_size")):
            kv = _int(recorded["kv_cache_bytes"])
    return MemoryPlan(params, kv, temp, largest, layers, kv_layer, per_page, KV_MASK_BYTES, window, bool(sliding))


def buffer_limit(limits: Mapping[str, int]) -> int | None:
    """The largest storage buffer the device binds (None when it does not say)."""
    found = [int(limits[k]) for k in ("maxBufferSize", "maxStorageBufferBindingSize") if limits.get(k)]
    return min(found) if found else None


def ways_out(plan: MemoryPlan | None, limit: int | None, window_helps: bool) -> str:
    """The smaller options, the first one sized for this device when it can be."""
    options = []
    if plan is not None and window_helps and limit is not None:
        fit = plan.largest_window_within(limit)
        if 0 < fit < plan.window:
            options.append(f"reload with a smaller context window: chat_opts {{'context_window_size': {fit}}} "
                           f"(or the model record's overrides), the largest whose KV cache fits")
    elif plan is not None and window_helps:
        options.append("reload with a smaller context window (chat_opts or the model record's overrides: "
                       "context_window_size)")
    options.append("a smaller model or a smaller quantization (q4f16_1 / q4f32_1 instead of q0f16 / q0f32)")
    options.append("the CPU library (the model record's model_lib_cpu, compiled with `webrt compile --device wasm`)")
    return "Ways out: " + "; ".join(options) + "."


def buffer_too_large(what: str, nbytes: int, limit: int, plan: MemoryPlan | None, adapter: str,
                     window_helps: bool) -> GPUOutOfMemoryError:
    """The error for a buffer of `nbytes` above the device's `limit`."""
    planned = f" {plan.describe()}." if plan is not None else ""
    return GPUOutOfMemoryError(
        f"{what} needs a GPU buffer of {nbytes} bytes, but this device ({adapter}) binds at most {limit} bytes "
        f"(maxStorageBufferBindingSize / maxBufferSize).{planned} {ways_out(plan, limit, window_helps)}")


def check_plan(plan: MemoryPlan, limits: Mapping[str, int], adapter: str) -> None:
    """Refuse (GPUOutOfMemoryError) a plan whose largest weight, KV-cache layer or KV-cache mask
    exceeds the device's largest storage buffer."""
    limit = buffer_limit(limits)
    if limit is None:
        return
    name, nbytes = plan.largest_param
    if nbytes > limit:
        raise buffer_too_large(f"weight {name!r}", nbytes, limit, plan, adapter, window_helps=False)
    if plan.kv_mask_bytes > limit:
        raise buffer_too_large("the KV cache's tree-attention mask (the same for any window)", plan.kv_mask_bytes,
                               limit, plan, adapter, window_helps=False)
    if plan.kv_layer_bytes > limit:
        raise buffer_too_large(f"one layer of the KV cache ({plan.window} tokens)", plan.kv_layer_bytes, limit,
                               plan, adapter, window_helps=True)


def out_of_memory(detail: str, plan: MemoryPlan | None, limit: int | None, adapter: str) -> GPUOutOfMemoryError:
    """The error for a device that ran out of memory (a GPUOutOfMemoryError event)."""
    planned = f" {plan.describe()}." if plan is not None else ""
    return GPUOutOfMemoryError(f"the GPU ({adapter}) ran out of memory: {detail}.{planned} "
                               f"{ways_out(plan, limit, window_helps=True)}")
