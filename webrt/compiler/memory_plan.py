"""How much device memory a model library needs: parameters, KV cache and temporary buffers.

The figures come from the compiled module itself, as MLC-LLM's do:

- **Parameters**: the bytes of every tensor in the library's parameter list (``_metadata.params``).
- **KV cache**: what TVM's paged KV cache allocates when a runtime calls the library's
  ``create_tir_paged_kv_cache`` the way webrt's engine and WebLLM do (one sequence, the context
  window -- or the sliding window -- as the capacity, the prefill chunk, pages of
  :data:`~webrt.engine.model_runner.PAGE_SIZE` tokens). Layers, KV heads, head dims and the
  cache dtype are read from the ``vm.builtin.paged_attention_kv_cache_create`` call in that
  function. TVM's runtime (``paged_kv_cache.cc``, ``attn_utils.h`` in TVM 0.27) then allocates,
  on the device: per layer ``num_pages x 2 x kv_heads x page_size x head_dim`` values with
  ``num_pages = ceil(capacity / page_size) + 1`` (+2 per sequence with a sliding window); the
  attention workspace of one prefill chunk (q, k, v and the output in the cache dtype, two
  float32 log-sum-exp rows per query head); and int32 index arrays (page tables, position maps,
  two 256x256 tree-attention masks per sequence). All three count as ``KVCache``, as in
  MLC-LLM's runtime estimate (its "KVCache" includes the KV auxiliary workspace).
- **Temporary buffer**: the largest per-function sum of the storage Relax's static memory
  planning allocates (``alloc_storage``, and ``builtin.alloc_tensor`` of a constant shape), with
  the symbolic sizes bounded by the prefill chunk and the batch limit -- MLC-LLM's
  ``memory_usage`` rule (``compiler_pass/estimate_memory_usage.py``), kept per function in
  ``_metadata.memory_usage``. It is measured after webrt repacks the plan
  (:mod:`webrt.compiler.storage_plan`), as the library allocates it.

``MemoryPlan.report()`` is MLC-LLM's line, same wording (MB = 2**20 bytes):
``Total memory usage: N MB (Parameters: N MB. KVCache: N MB. Temporary buffer: N MB)``.
``_metadata.memory_plan`` holds the totals in bytes (:meth:`MemoryPlan.to_json`), read at load
time to refuse a model larger than the GPU adapter allows.

:func:`plan_model` plans a model config without generating code (the Relax pipeline only,
seconds for an 8B model), for ``webrt bench memory`` and the tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import tvm
from tvm import relax

from webrt.compiler.quantization import Quantization
from webrt.engine.model_runner import PAGE_SIZE, kv_cache_pages
from webrt.errors import ModelConfigError
from webrt.models.config import TransformerConfig

MB = 1024 * 1024
#: The packed function ``create_tir_paged_kv_cache`` calls, and where its arguments sit.
KV_CACHE_CREATE = "vm.builtin.paged_attention_kv_cache_create"
_KV_ARG_LAYERS, _KV_ARG_QO_HEADS, _KV_ARG_KV_HEADS, _KV_ARG_QK_DIM, _KV_ARG_V_DIM, _KV_ARG_INIT = 1, 2, 3, 4, 5, 12
#: The sequences webrt's engine (and WebLLM) reserve in the cache: one conversation.
KV_CACHE_SEQUENCES = 1
#: TVM's runtime constants (attn_utils.h): block depths with index arrays, tree-attention size.
_MAX_BLOCK_DEPTH = 2
_TREE_ATTN_MAX_TREE_SIZE = 256
_INDEX_BYTES = 4  # int32 index arrays
_LSE_BYTES = 4  # float32 log-sum-exp rows


def _dtype_bytes(dtype: str) -> int:
    t = tvm.DataType(dtype)
    return (t.bits * t.lanes + 7) // 8


@dataclass(frozen=True)
class KVCacheGeometry:
    """The paged KV cache a library creates, as the runtime sizes it."""

    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    qk_head_dim: int
    v_head_dim: int
    dtype: str
    capacity: int  # tokens: the context window, or the sliding window
    sliding_window: bool
    prefill_chunk_size: int
    page_size: int = PAGE_SIZE
    max_sequences: int = KV_CACHE_SEQUENCES

    @property
    def num_pages(self) -> int:
        return kv_cache_pages(self.capacity, bool(self.sliding_window), self.max_sequences, self.page_size)

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token in every layer (the runtime's pages hold K and V at qk_head_dim)."""
        return self.num_layers * 2 * self.num_kv_heads * self.qk_head_dim * _dtype_bytes(self.dtype)

    @property
    def pages_bytes(self) -> int:
        return self.num_pages * self.page_size * self.bytes_per_token

    @property
    def workspace_bytes(self) -> int:
        """One prefill chunk's attention buffers: q, k, v, output, two log-sum-exp rows."""
        chunk, heads, kv_heads = self.prefill_chunk_size, self.num_attention_heads, self.num_kv_heads
        values = chunk * (heads * self.qk_head_dim + kv_heads * (self.qk_head_dim + self.v_head_dim)
                          + heads * self.v_head_dim)
        return values * _dtype_bytes(self.dtype) + 2 * chunk * heads * _LSE_BYTES

    @property
    def index_bytes(self) -> int:
        """The int32 page tables, position maps and tree masks the runtime keeps on the device."""
        seqs, chunk, tree = self.max_sequences, self.prefill_chunk_size, _TREE_ATTN_MAX_TREE_SIZE
        per_depth = 3 * (seqs + 1) + self.num_pages + 4 * seqs + tree * tree * seqs
        shared = 2 * (seqs + 1) + seqs + 6 * chunk + 2 * min(tree * seqs, chunk)
        return (_MAX_BLOCK_DEPTH * per_depth + shared) * _INDEX_BYTES

    @property
    def total_bytes(self) -> int:
        return self.pages_bytes + self.workspace_bytes + self.index_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """Device memory of one library: parameters + KV cache + the largest temporary buffer."""

    params_bytes: int
    kv_cache_bytes: int
    temp_buffer_bytes: int
    kv_cache: KVCacheGeometry | None = None

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.kv_cache_bytes + self.temp_buffer_bytes

    def to_json(self) -> dict[str, Any]:
        """The ``memory_plan`` block of ``_metadata`` (bytes)."""
        out: dict[str, Any] = {
            "params_bytes": self.params_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "temp_buffer_bytes": self.temp_buffer_bytes,
            "total_bytes": self.total_bytes,
        }
        if self.kv_cache is not None:
            kv = self.kv_cache
            out["kv_cache"] = {**asdict(kv), "num_pages": kv.num_pages, "bytes_per_token": kv.bytes_per_token,
                               "pages_bytes": kv.pages_bytes, "workspace_bytes": kv.workspace_bytes,
                               "index_bytes": kv.index_bytes}
        return out

    def report(self) -> str:
        """MLC-LLM's memory report line."""
        return (f"Total memory usage: {self.total_bytes / MB:.2f} MB (Parameters: {self.params_bytes / MB:.2f} MB. "
                f"KVCache: {self.kv_cache_bytes / MB:.2f} MB. Temporary buffer: {self.temp_buffer_bytes / MB:.2f} MB)")


def params_bytes(params: Iterable[tuple[str, tuple[int, ...], str]]) -> int:
    """Bytes of a parameter list of (name, shape, dtype)."""
    return sum(math.prod(shape) * _dtype_bytes(dtype) for _, shape, dtype in params)


def function_temp_bytes(mod: tvm.IRModule) -> dict[str, int]:
    """MLC's ``memory_usage``: per Relax function, the bytes of statically planned storage."""
    alloc_storage = tvm.ir.Op.get("relax.memory.alloc_storage")
    alloc_tensor = tvm.ir.Op.get("relax.builtin.alloc_tensor")

    def constant(values: Any) -> list[int] | None:
        if not isinstance(values, relax.ShapeExpr) or not all(isinstance(v, tvm.tirx.IntImm) for v in values.values):
            return None
        return [int(v) for v in values.values]

    def planned(func: relax.Function) -> int:
        total = 0

        def visit(expr: relax.Expr) -> None:
            nonlocal total
            if not isinstance(expr, relax.Call):
                return
            if expr.op.same_as(alloc_storage) and (size := constant(expr.args[0])) is not None:
                total += size[0]
            elif expr.op.same_as(alloc_tensor) and (shape := constant(expr.args[0])) is not None:
                total += math.prod(shape) * _dtype_bytes(str(expr.args[1].value))

        relax.analysis.post_order_visit(func.body, visit)
        return total

    return {gv.name_hint: planned(f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)}


def _kv_cache_args(mod: tvm.IRModule) -> list[relax.Expr] | None:
    """The arguments of the paged KV cache creation in ``create_tir_paged_kv_cache`` (None
    for a module without that function)."""
    funcs = [f for gv, f in mod.functions_items() if gv.name_hint == "create_tir_paged_kv_cache"]
    if not funcs:
        return None
    found: list[list[relax.Expr]] = []

    def visit(expr: relax.Expr) -> None:
        if not isinstance(expr, relax.Call):
            return
        if isinstance(expr.op, relax.ExternFunc):  # call_packed, after lowering
            callee, args = expr.op, list(expr.args)
        elif expr.args and isinstance(expr.args[0], relax.ExternFunc):  # call_pure_packed(callee, ...)
            callee, args = expr.args[0], list(expr.args[1:])
        else:
            return
        if callee.global_symbol == KV_CACHE_CREATE:
            found.append(args)

    relax.analysis.post_order_visit(funcs[0].body, visit)
    if len(found) != 1:
        raise ModelConfigError(f"create_tir_paged_kv_cache calls {KV_CACHE_CREATE} {len(found)} times, expected once")
    return found[0]


def kv_cache_geometry(mod: tvm.IRModule, capacity: int, sliding_window: bool,
                      prefill_chunk_size: int) -> KVCacheGeometry | None:
    """The KV cache ``create_tir_paged_kv_cache`` of ``mod`` builds for a runtime's arguments
    (None for a module without one)."""
    args = _kv_cache_args(mod)
    if args is None:
        return None

    def prim(index: int) -> int:
        value: Any = args[index]
        while not isinstance(value, int):  # an IntImm, or a PrimValue wrapping one
            value = value.value
        return value

    begin, end = (int(v) for v in args[_KV_ARG_LAYERS].values)
    return KVCacheGeometry(
        num_layers=end - begin,
        num_attention_heads=prim(_KV_ARG_QO_HEADS),
        num_kv_heads=prim(_KV_ARG_KV_HEADS),
        qk_head_dim=prim(_KV_ARG_QK_DIM),
        v_head_dim=prim(_KV_ARG_V_DIM),
        dtype=str(args[_KV_ARG_INIT].ty.dtype),  # the R.zeros((), dtype) the cache is made from
        capacity=capacity,
        sliding_window=sliding_window,
        prefill_chunk_size=prefill_chunk_size,
    )


def plan_memory(mod: tvm.IRModule, params: Iterable[tuple[str, tuple[int, ...], str]], config: TransformerConfig,
                memory_usage: dict[str, int] | None = None) -> MemoryPlan:
    """The plan of a module after static memory planning (``memory_usage``: its per-function
    temporary bytes, when already measured)."""
    sliding = config.sliding_window_size > 0
    geometry = kv_cache_geometry(mod, config.sliding_window_size if sliding else config.context_window_size,
                                 sliding, config.prefill_chunk_size)
    usage = function_temp_bytes(mod) if memory_usage is None else memory_usage
    kv_bytes = 0 if geometry is None else geometry.total_bytes
    return MemoryPlan(params_bytes(params), kv_bytes, max(usage.values(), default=0), geometry)


def plan_model(config: TransformerConfig, quant: Quantization, device: str) -> MemoryPlan:
    """Plan ``config`` built with ``quant`` for ``device`` without generating code."""
    from webrt.compiler.build import export_model, make_target, relax_pipeline

    exported = export_model(config, quant, make_target(device))
    with tvm.transform.PassContext(opt_level=3):
        relax_pipeline(exported, device)(exported.mod)
    if exported.memory_plan is None:
        raise RuntimeError("the Relax pipeline did not record a memory plan")
    return exported.memory_plan
