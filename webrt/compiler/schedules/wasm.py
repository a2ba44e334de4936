"""The browser CPU's decode GEMV: 4- and 8-bit grouped weights unpacked with whole-vector operations.

wasm SIMD128 shifts every lane of an ``i32x4`` by one scalar amount, so unpacking the eight codes
of one packed word lane by lane (what the generic CPU schedule gets from LLVM: scalar shifts and
``replace_lane``) costs several instructions per weight. Here the vector lanes are instead four
consecutive packed words of one weight row (one contiguous ``v128`` load): with ``per`` codes per
word, K position ``base + w * per + j`` sits in lane ``w`` at field ``j``. One ``v128.and`` keeps
field ``j`` in place and one signed ``f32x4.convert_i32x4`` makes it ``code * 2**(bits*j)`` in four
columns at once; the input row is staged once per call in that order (``x_staged[g, v, j, w]``,
contiguous loads) and scaled by ``2**(-bits*j)``, so each product is exactly ``code * x`` (powers
of two; only an input below ~1e-30 would lose bits). The top field, which would set the sign bit,
is shifted down instead (one ``i32x4.shr_u``).

A group of ``group`` codes spans whole vectors (4-bit codes in groups of 32: one ``v128``; 8-bit:
two), so its scale, minimum and offset are the same in every lane, and the kernel computes

    y[n] = sum over groups g and lanes w of
           scale[n, g] * (dot[n, g, w] - offset * xsum[g, w]) + min[n, g] * xsum[g, w]

with ``dot`` the lane's sum of ``code * x`` over the group and ``xsum`` the lane's sum of ``x``
(computed once per call): one multiply and one add per weight instead of a dequantized weight
per lane. The sum is the same as the generic kernel's up to float32 rounding order; for a one-hot
input it is bit-identical to the weight's value ``(code - offset) * scale + min``. Float16 scales
and inputs (q4f16_1) are widened by their bits, exactly: wasm has no float16, and LLVM's
conversion is a library call per value.

On SmolLM2-135M (one thread, Chromium) a decode step takes 0.44-0.53x the CPU time of the generic
schedule's library, and 0.42-0.51x what llama.cpp's wasm build spends per token on the same GGUF.

Everything else (prefill, batched decode, float weights, codes with a high plane, groups smaller
than a vector) keeps `webrt.compiler.schedules.cpu.NTMatmulCPU`'s schedule. The kernel's blocks
are rebuilt from the fused function: its ``dequantize`` block is recognised by evaluating it on
probe values (not by its syntax), and the epilogues (cast, bias, residual add) are carried over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import s_tir, te, tirx
from tvm.target import Target

from webrt.compiler.schedules.util import NTMatmulBlocks, static_extent

#: float32 (and int32) lanes of a wasm ``v128``
LANES = 4
#: output rows each step of the row loop computes (independent accumulator chains): in node, 2 rows
#: took 0.86-0.92x the time of 4 (register spills) and 0.88-0.96x that of 1 on SmolLM2's Q4_1, q4f32_1
#: and Q8_0 shapes
ROWS_PER_STEP = 2
#: bit widths of the codes this kernel unpacks (one plane of 4 or 8 bits per code)
CODE_BITS = (4, 8)


def is_wasm_target(target: Target) -> bool:
    """Whether ``target`` is LLVM's wasm32 (``webrt compile --device wasm``)."""
    return target.kind.name == "llvm" and str(target.attrs.get("mtriple", "")).startswith("wasm32")


class _Unsupported(Exception):
    """An expression this module does not model: the caller keeps the generic schedule."""


_INT_OPS: dict[type, Callable[[int, int], int]] = {
    tirx.Add: lambda a, b: a + b, tirx.Sub: lambda a, b: a - b, tirx.Mul: lambda a, b: a * b,
    tirx.FloorDiv: lambda a, b: a // b, tirx.FloorMod: lambda a, b: a % b,
    tirx.RShift: lambda a, b: a >> b, tirx.LShift: lambda a, b: a << b,
    tirx.BitwiseAnd: lambda a, b: a & b, tirx.BitwiseOr: lambda a, b: a | b,
}
_FLOAT_OPS: dict[type, Callable[[Any, Any], Any]] = {
    tirx.Add: lambda a, b: a + b, tirx.Sub: lambda a, b: a - b, tirx.Mul: lambda a, b: a * b,
}


def _dtype(expr: Any) -> str:
    return str(expr.ty)


def _wrap_int(value: int, dtype: str) -> int:
    bits = int(dtype.lstrip("uint")) if dtype != "bool" else 1
    value &= (1 << bits) - 1
    return value - (1 << bits) if dtype.startswith("int") and value >> (bits - 1) else value


def _evaluate(expr: Any, variables: dict[Any, int], load: Callable[[Any, list[int]], Any]) -> Any:
    """The value of integer/float expression ``expr`` (ints as Python ints, floats as numpy scalars
    of the expression's dtype); ``load(buffer, indices)`` gives each buffer element read."""
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    if isinstance(expr, tirx.FloatImm):
        return np.dtype(_dtype(expr)).type(expr.value)
    if isinstance(expr, tirx.Var):
        return variables[expr]
    if isinstance(expr, tirx.Cast):
        value, dtype = _evaluate(expr.value, variables, load), _dtype(expr)
        if dtype.startswith("float"):
            return np.dtype(dtype).type(value)
        if dtype.startswith(("int", "uint")) and isinstance(value, int):
            return _wrap_int(value, dtype)
        raise _Unsupported(f"cast of {value!r} to {dtype}")
    if hasattr(expr, "source") and hasattr(expr, "indices"):  # a buffer load
        return load(expr.source, [_evaluate(i, variables, load) for i in expr.indices])
    ops = _FLOAT_OPS if _dtype(expr).startswith("float") else _INT_OPS
    op = ops.get(type(expr))
    if op is None:
        raise _Unsupported(type(expr).__name__)
    a, b = _evaluate(expr.a, variables, load), _evaluate(expr.b, variables, load)
    return op(a, b) if ops is _FLOAT_OPS else _wrap_int(op(a, b), _dtype(expr))


@dataclass(frozen=True)
class GroupedCodes:
    """What a ``dequantize`` block computes for weight ``[n, k]``, checked on probe values::

        (code - offset) * scale[n, k // group] (+ minimum[n, k // group])

    with ``code`` the ``bits``-wide field ``k % (32 / bits)`` of ``words[n, k / (32 / bits)]``."""

    words: Any  # uint32 buffer [N, K * bits / 32]
    scale: Any  # float32 or float16 buffer [N, K / group]
    minimum: Any | None  # float32 buffer [N, K / group], or None
    bits: int
    group: int
    offset: int

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    @property
    def words_per_group(self) -> int:
        return self.group * self.bits // 32


#: probe values of a scale and a minimum: exact in float16 and float32, and not confusable
_PROBE_SCALE, _PROBE_MIN = 2.5, 0.75
_PROBE_ROW = 3


def _probe(block: s_tir.SBlock, codes: GroupedCodes, k_extent: int) -> bool:
    """Whether ``block`` computes ``codes``' formula at every code value of the first two groups'
    and the last group's columns (other words, rows and groups read give different values)."""
    store = block.body
    row, col = (iv.var for iv in block.iter_vars)
    per, mask = codes.per_word, (1 << codes.bits) - 1
    noise_word = 0x9E3779B9  # fields of other columns: must be masked off
    columns = [*range(min(2 * codes.group, k_extent)), *range(k_extent - codes.group, k_extent)]
    for k in columns:
        for code in range(mask + 1):
            def load(buffer: Any, index: list[int], k: int = k, code: int = code) -> Any:
                if index[0] != _PROBE_ROW:
                    return np.dtype(buffer.dtype).type(1e4) if buffer.dtype != "uint32" else noise_word
                if buffer.same_as(codes.words):
                    if index[1] != k // per:
                        return noise_word
                    shift = (k % per) * codes.bits
                    return (noise_word & ~(mask << shift) & 0xFFFFFFFF) | (code << shift)
                right_group = index[1] == k // codes.group
                value = _PROBE_SCALE if buffer.same_as(codes.scale) else _PROBE_MIN
                return np.dtype(buffer.dtype).type(value if right_group else -3e3)

            got = _evaluate(store.value, {row: _PROBE_ROW, col: k}, load)
            expected = np.float32(code - codes.offset) * np.float32(_PROBE_SCALE)
            if codes.minimum is not None:
                expected = expected + np.float32(_PROBE_MIN)
            if not isinstance(got, np.float32) or got != expected:
                return False
    return True


def match_grouped_codes(block: s_tir.SBlock) -> GroupedCodes | None:
    """The grouped-code formula a ``dequantize`` block computes, if it is one this kernel handles
    (one 4- or 8-bit plane, groups of whole ``v128`` vectors); None otherwise."""
    store = block.body
    if (not isinstance(store, tirx.BufferStore) or len(block.iter_vars) != 2 or len(store.indices) != 2
            or any(not i.same_as(iv.var) for i, iv in zip(store.indices, block.iter_vars))):
        return None  # not dequantize[row, col] = f(row, col)
    n_extent, k_extent = (int(d) for d in store.buffer.shape)
    words = [r.source for r in block.reads if r.source.dtype == "uint32"]
    floats = [r.source for r in block.reads if r.source.dtype in ("float32", "float16")]
    if len(words) != 1 or len(floats) not in (1, 2) or len(block.reads) != 1 + len(floats):
        return None
    word_cols = int(words[0].shape[1])
    if (32 * word_cols) % k_extent:
        return None
    bits = 32 * word_cols // k_extent
    group_cols = {int(f.shape[1]) for f in floats}
    if bits not in CODE_BITS or len(group_cols) != 1 or k_extent % next(iter(group_cols)):
        return None
    group = k_extent // group_cols.pop()
    if (group * bits // 32) % LANES or any(int(b.shape[0]) != n_extent for b in (*words, *floats)):
        return None
    # which float is the scale and which the minimum, and the offset: try each reading on probes
    for scale in floats:
        minimum = next((f for f in floats if not f.same_as(scale)), None)
        if minimum is not None and minimum.dtype != "float32":
            continue
        try:
            at_zero = _evaluate(store.value, {block.iter_vars[0].var: _PROBE_ROW, block.iter_vars[1].var: 0},
                                lambda b, i: (0 if b.same_as(words[0]) else
                                              np.dtype(b.dtype).type(1.0 if b.same_as(scale) else 0.0)))
            offset = -float(at_zero)
            if offset != int(offset):
                continue
            codes = GroupedCodes(words[0], scale, minimum, bits, group, int(offset))
            if _probe(block, codes, k_extent):
                return codes
        except (_Unsupported, KeyError, TypeError, ValueError, OverflowError):
            continue
    return None


def _input_load(expr: Any, weights: Any) -> Any | None:
    """The load of ``x`` in ``NT_matmul``'s product ``x * dequantize`` (maybe cast to float32)."""
    if isinstance(expr, tirx.Cast) and _dtype(expr) == "float32":
        expr = expr.value
    if hasattr(expr, "source") and not expr.source.same_as(weights):
        return expr
    return None


def _rebuild(expr: Any, axes: dict[Any, Any], tensors: dict[Any, te.Tensor]) -> Any:
    """An epilogue's expression over TE axes and tensors instead of block vars and buffers."""
    if isinstance(expr, (tirx.IntImm, tirx.FloatImm)):
        return expr
    if isinstance(expr, tirx.Var):
        if expr not in axes:
            raise _Unsupported(f"free variable {expr}")
        return axes[expr]
    if isinstance(expr, tirx.Cast):
        return tirx.Cast(_dtype(expr), _rebuild(expr.value, axes, tensors))
    if hasattr(expr, "source") and hasattr(expr, "indices"):
        if expr.source not in tensors:
            raise _Unsupported(f"load of {expr.source}")
        return tensors[expr.source](*(_rebuild(i, axes, tensors) for i in expr.indices))
    if type(expr) in (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Min, tirx.Max):
        return type(expr)(_rebuild(expr.a, axes, tensors), _rebuild(expr.b, axes, tensors))
    raise _Unsupported(type(expr).__name__)


def _spatial_block_as_te(block: s_tir.SBlock, tensors: dict[Any, te.Tensor]) -> te.Tensor:
    """An elementwise block ``out[v...] = f(loads)`` (cast, bias, residual add) as a TE compute."""
    store = block.body
    iter_vars = [iv.var for iv in block.iter_vars]
    if (block.init is not None or any(int(iv.iter_type) != 0 for iv in block.iter_vars)
            or len(store.indices) != len(iter_vars) or any(not i.same_as(v) for i, v in zip(store.indices, iter_vars))):
        raise _Unsupported(f"epilogue {block.name_hint}")
    shape = [int(d) for d in store.buffer.shape]
    return te.compute(shape, lambda *axes: _rebuild(store.value, dict(zip(iter_vars, axes)), tensors),
                      name=block.name_hint)


def _as_float32(value: Any) -> Any:
    """``value`` as float32; a float16 one by its bits (wasm has no float16, and LLVM's conversion is a
    library call per value): the magnitude's bits shifted into a float32 and scaled by 2**112, then
    the sign. Exact for every finite float16, subnormals included."""
    if _dtype(value) == "float32":
        return value
    bits = tirx.reinterpret("uint16", value).astype("uint32")
    magnitude = tirx.reinterpret("float32", (bits & tirx.const(0x7FFF, "uint32")) << tirx.const(13, "uint32"))
    magnitude = magnitude * tirx.const(2.0**112, "float32")
    sign = (bits & tirx.const(0x8000, "uint32")) << tirx.const(16, "uint32")
    return tirx.reinterpret("float32", tirx.reinterpret("uint32", magnitude) | sign)


def _code_dot_gemv(x: te.Tensor, words: te.Tensor, scale: te.Tensor, minimum: te.Tensor | None,
                   codes: GroupedCodes, n_extent: int, k_extent: int) -> te.Tensor:
    """``NT_matmul [1, 1, N]`` as the module docstring's sum (TE)."""
    per, bits, wpg = codes.per_word, codes.bits, codes.words_per_group
    vectors, groups = wpg // LANES, k_extent // codes.group
    mask = tirx.const((1 << bits) - 1, "uint32")

    def column(g: Any, v: Any, j: Any, w: Any) -> Any:
        return g * codes.group + (v * LANES + w) * per + j

    def pow2(exponent: Any) -> Any:  # 2**exponent, exactly (a float32 bit pattern)
        return tirx.reinterpret("float32", ((exponent + 127) * (1 << 23)).astype("int32"))

    def top(j: Any) -> Any:  # the word's top field: shifted down, since it would set the sign bit
        return j == per - 1

    x_value = lambda g, v, j, w: _as_float32(x(0, 0, column(g, v, j, w)))  # noqa: E731
    # field j of a word is read in place (worth code * 2**(bits*j)), so its input is scaled by
    # 2**(-bits*j): the product is code * x exactly, and there is no shift
    x_staged = te.compute((groups, vectors, per, LANES),
                          lambda g, v, j, w: x_value(g, v, j, w) * tirx.Select(top(j), tirx.const(1.0, "float32"),
                                                                                pow2(-bits * j.astype("int32"))),
                          name="x_staged")
    v1, j1 = te.reduce_axis((0, vectors), "v"), te.reduce_axis((0, per), "j")
    x_sum = te.compute((groups, LANES), lambda g, w: te.sum(x_value(g, v1, j1, w), axis=[v1, j1]), name="x_group_sum")

    def code(n: Any, g: Any, v: Any, j: Any, w: Any) -> Any:
        word = words[n, g * wpg + v * LANES + w]
        shift = tirx.const(32 - bits, "uint32")
        field = tirx.Select(top(j), word >> shift, word & (mask << (j * bits).astype("uint32")))
        return field.astype("int32").astype("float32")  # < 2**31: a signed convert is exact (and one instruction)

    v2, j2 = te.reduce_axis((0, vectors), "v"), te.reduce_axis((0, per), "j")
    dot = te.compute((n_extent, groups, LANES),
                     lambda n, g, w: te.sum(code(n, g, v2, j2, w) * x_staged[g, v2, j2, w], axis=[v2, j2]),
                     name="code_dot")

    def group_term(n: Any, g: Any, w: Any) -> Any:
        d = dot[n, g, w]
        if codes.offset:
            d = d - tirx.const(float(codes.offset), "float32") * x_sum[g, w]
        term = d * _as_float32(scale[n, g].asobject())
        return term + minimum[n, g] * x_sum[g, w] if minimum is not None else term

    g3 = te.reduce_axis((0, groups), "g")
    lanes = te.compute((n_extent, LANES), lambda n, w: te.sum(group_term(n, g3, w), axis=g3), name="lane_sum")
    w4 = te.reduce_axis((0, LANES), "w")
    return te.compute((1, 1, n_extent), lambda a, b, n: te.sum(lanes[n, w4], axis=w4), name="NT_matmul")


def code_dot_function(func: tirx.PrimFunc, sch: s_tir.Schedule, blocks: NTMatmulBlocks) -> tirx.PrimFunc | None:
    """``func`` (a decode ``NT_matmul`` with a grouped-code ``dequantize`` producer) rebuilt as the
    code-dot kernel with the same parameters and epilogues; None when it is not one this handles."""
    if blocks.dequantize is None:
        return None
    codes = match_grouped_codes(sch.get(blocks.dequantize))
    if codes is None:
        return None
    store = sch.get(blocks.main).body
    shape = [static_extent(sch, loop) for loop in sch.get_loops(blocks.main)]
    if len(shape) != 4 or shape[:2] != [1, 1] or None in shape or not isinstance(store.value, tirx.Add):
        return None
    n_extent, k_extent = shape[2], shape[3]
    product, weights = store.value.b, sch.get(blocks.dequantize).body.buffer
    if not isinstance(product, tirx.Mul):
        return None
    x_load = _input_load(product.a, weights)
    if x_load is None:
        x_load = _input_load(product.b, weights)
    if x_load is None or [int(d) for d in x_load.source.shape] != [1, 1, k_extent]:
        return None
    tail = sch.get(blocks.epilogues[-1] if blocks.epilogues else blocks.main).body.buffer
    if not func.params[-1].same_as(tail):
        return None
    try:
        tensors = {p: te.placeholder([int(d) for d in p.shape], p.dtype, p.name) for p in func.params[:-1]}
        out = tensors[store.buffer] = _code_dot_gemv(
            tensors[x_load.source], tensors[codes.words], tensors[codes.scale],
            tensors[codes.minimum] if codes.minimum is not None else None, codes, n_extent, k_extent)
        for block in blocks.epilogues:
            out = tensors[sch.get(block).body.buffer] = _spatial_block_as_te(sch.get(block), tensors)
    except (_Unsupported, KeyError, TypeError, ValueError):
        return None
    rebuilt = te.create_prim_func([*(tensors[p] for p in func.params[:-1]), out], index_dtype_override="int64")
    return tirx.PrimFunc(rebuilt.params, rebuilt.body, attrs=func.attrs)


def schedule_code_dot(func: tirx.PrimFunc) -> s_tir.Schedule:
    """Schedule a `code_dot_function` kernel: the staged input and its group sums once per call,
    then ROWS_PER_STEP rows at a time, group by group, each lane loop one SIMD vector."""
    sch = s_tir.Schedule(func)
    staged, x_sum = sch.get_sblock("x_staged"), sch.get_sblock("x_group_sum")
    dot, lanes, main = sch.get_sblock("code_dot"), sch.get_sblock("lane_sum"), sch.get_sblock("NT_matmul")
    sch.vectorize(sch.get_loops(staged)[-1])
    g, w, v, j = sch.get_loops(x_sum)
    sch.reorder(g, v, j, w)
    sch.vectorize(w)
    sch.decompose_reduction(x_sum, v)

    n, w, g = sch.get_loops(lanes)
    n_extent = static_extent(sch, n)
    rows = ROWS_PER_STEP if n_extent % ROWS_PER_STEP == 0 else 1
    n_outer, n_inner = sch.split(n, [None, rows])
    sch.reorder(n_outer, g, n_inner, w)
    sch.compute_at(dot, n_inner)
    tail = main
    sch.reverse_compute_at(main, n_outer)
    while consumers := sch.get_consumers(tail):
        tail = consumers[0]
        sch.reverse_compute_at(tail, n_outer)
    sch.parallel(n_outer)
    loops = sch.get_loops(dot)
    lane_dot, *reduce = loops[[sch.get(loop).same_as(sch.get(n_inner)) for loop in loops].index(True) + 1:]
    sch.reorder(*reduce, lane_dot)  # (v,) j, then the lanes: one vector per code position
    sch.vectorize(lane_dot)
    for loop in reduce:
        sch.unroll(loop)
    sch.decompose_reduction(dot, reduce[0])
    sch.vectorize(w)
    sch.decompose_reduction(lanes, g)
    return sch
