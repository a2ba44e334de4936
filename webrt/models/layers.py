"""Quantization-aware building blocks shared by the model files.

Weights keep the Hugging Face ``[out_features, in_features]`` layout. Matrix products are written
as one tensor expression ``y[..., n] = sum_k x[..., k] * W[n, k]``: there is no transpose kernel
per call, and for grouped quantization the dequantization is a producer block inside the same
kernel, so the GEMV/matmul schedules read each packed weight byte once.

Under ``gguf_f32`` a matrix holds one *segment* per GGUF type among its parts: fused q/k/v or
gate/up parts that share a type are one segment (their planes concatenated by rows, exact), parts
of different types (Q4_K_M files mix Q4_K and Q6_K) are separate segments, multiplied one by one
and concatenated. A segment's parameters are ``q_lo`` (``q_hi``), ``q_scale`` (``q_min``) of
:mod:`webrt.compiler.gguf_planes`, or ``weight`` (float32) for a float tensor; a split matrix
names them ``<matrix>.<part>.q_lo`` (``...self_attn.qkv_proj.v_proj.q_lo``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from webrt.compiler.gguf_planes import FLOAT_TYPES, PlaneFormat, plane_format
from webrt.compiler.quantization import Quantization
from webrt.errors import ModelConfigError

FLOAT_FORMATS = tuple(t.name for t in FLOAT_TYPES)  # kept as float32 ``weight``


def _dequantize_expr(q_weight: te.Tensor, q_scale: te.Tensor, quant: Quantization, row, col, dtype: str):
    """The float value of packed element ``[row, col]`` (a TE expression)."""
    per = quant.elems_per_storage
    word = q_weight[row, col // per]
    shift = (col % per).astype("uint32") * tirx.const(quant.bits, "uint32")
    nibble = (word >> shift) & tirx.const((1 << quant.bits) - 1, "uint32")
    value = nibble.astype(dtype) - tirx.const(quant.max_int, dtype)
    return value * q_scale[row, col // quant.group_size].astype(dtype)


def _field(words: te.Tensor, row, col, bits: int):
    """The ``bits``-wide unsigned field of element ``col`` in packed uint32 ``words[row]``."""
    per = 32 // bits
    shift = (col % per).astype("uint32") * tirx.const(bits, "uint32")
    return (words[row, col // per] >> shift) & tirx.const((1 << bits) - 1, "uint32")


def _plane_expr(planes: dict[str, te.Tensor], fmt: PlaneFormat, row, col):
    """The float32 value of element ``[row, col]`` of a GGUF plane matrix, computed exactly as
    llama.cpp does: ``(code - offset) * scale`` then ``+ min`` for types that have one."""
    code = _field(planes["q_lo"], row, col, fmt.lo_bits)
    if fmt.hi_bits:
        code = code | (_field(planes["q_hi"], row, col, fmt.hi_bits) << tirx.const(fmt.lo_bits, "uint32"))
    value = code.astype("float32")
    if fmt.offset:
        value = value - tirx.const(float(fmt.offset), "float32")
    value = value * planes["q_scale"][row, col // fmt.group]
    if fmt.has_min:
        value = value + planes["q_min"][row, col // fmt.group]
    return value


def _weight_tensor(weights: list[te.Tensor], quant: Quantization, dtype: str,
                   rows: range | None = None) -> tuple[te.Tensor, int]:
    """The ``[out, in]`` weight (its ``rows`` only, when given) as a TE tensor, with the row of
    it where ``rows`` starts: the stored tensor (rows selected by the matmul's index), or a
    dequantize block in ``dtype`` over just those rows.

    Dequantization happens in float32 whatever the model dtype: the product is accumulated in
    float32 anyway, and CPUs have no fast float16 arithmetic.
    """
    first = 0 if rows is None else rows.start
    if not quant.is_grouped:
        return weights[0], first
    q_weight, q_scale = weights
    n = q_weight.shape[0] if rows is None else len(rows)
    k = q_weight.shape[1] * quant.elems_per_storage
    return te.compute(
        (n, k),
        lambda i, j: _dequantize_expr(q_weight, q_scale, quant, i + first, j, dtype),
        name="dequantize",
    ), 0


def _nt_matmul(x: te.Tensor, w: te.Tensor, out_dtype: str, rows: range | None = None,
               first_row: int = 0) -> te.Tensor:
    """``x[..., k] @ w[first_row + n, k]^T`` for ``len(rows)`` rows (all of ``w`` without
    ``rows``), accumulated in float32 and cast to ``out_dtype``."""
    *batch, k_dim = x.shape
    k = te.reduce_axis((0, k_dim), name="k")
    acc = te.compute(
        (*batch, w.shape[0] if rows is None else len(rows)),
        lambda *idx: te.sum(x[(*idx[:-1], k)].astype("float32") * w[idx[-1] + first_row, k].astype("float32"),
                            axis=k),
        name="NT_matmul",
    )
    if out_dtype == "float32":
        return acc
    return te.compute(acc.shape, lambda *idx: acc[idx].astype(out_dtype), name="cast_out")


def silu_epilogue(y: te.Tensor) -> te.Tensor:
    """``silu(y) = y * sigmoid(y)`` as one elementwise block (the expression of Relax's ``silu``)."""
    return te.compute(y.shape, lambda *idx: y(*idx) * te.sigmoid(y(*idx)), name="silu")


def times_epilogue(y: te.Tensor, factor: te.Tensor) -> te.Tensor:
    """``factor * y`` elementwise (``factor`` is a second input of the kernel)."""
    return te.compute(y.shape, lambda *idx: factor(*idx) * y(*idx), name="multiply")


@dataclass(frozen=True)
class Segment:
    """Rows of a ``gguf_f32`` matrix stored in one GGUF type: the HF matrices they come from."""

    sources: tuple[str, ...]  # HF matrix names, concatenated by rows
    fmt: str  # GGUF type name
    rows: int
    cols: int

    @property
    def leaf(self) -> str:
        """The first part's own name (``v_proj``): a split matrix's parameters sit under it."""
        return self.sources[0].rsplit(".", 1)[1]

    @property
    def planes(self) -> PlaneFormat | None:
        """The plane layout, None for a float type (stored as float32 ``weight``)."""
        return None if self.fmt in FLOAT_FORMATS else plane_format(self.fmt, self.sources[0])


class _SegmentWeights(nn.Module):
    """The parameters of one segment of a split ``gguf_f32`` matrix."""

    def __init__(self, segment: Segment):
        super().__init__()
        _add_segment_params(self, segment)


def _add_segment_params(module: nn.Module, segment: Segment) -> None:
    """Create ``segment``'s parameters on ``module``: planes, or a float32 ``weight``."""
    fmt, rows, cols = segment.planes, segment.rows, segment.cols
    if fmt is None:
        module.weight = nn.Parameter((rows, cols), "float32")
        return
    module.q_lo = nn.Parameter((rows, cols * fmt.lo_bits // 32), "uint32")
    if fmt.hi_bits:
        module.q_hi = nn.Parameter((rows, cols * fmt.hi_bits // 32), "uint32")
    module.q_scale = nn.Parameter((rows, cols // fmt.group), "float32")
    if fmt.has_min:
        module.q_min = nn.Parameter((rows, cols // fmt.group), "float32")


def _segment_names(segment: Segment) -> list[str]:
    """The parameter names of a segment, in order (without the prefix)."""
    fmt = segment.planes
    if fmt is None:
        return ["weight"]
    return ["q_lo", *(["q_hi"] if fmt.hi_bits else []), "q_scale", *(["q_min"] if fmt.has_min else [])]


def _segment_tensor(w_te: list[te.Tensor], segment: Segment) -> te.Tensor:
    """A segment as a TE ``[rows, cols]`` tensor: its float weight, or a dequantize block."""
    return _segment_rows(w_te, segment)[0]


def _segment_rows(w_te: list[te.Tensor], segment: Segment, rows: range | None = None) -> tuple[te.Tensor, int]:
    """A segment (its ``rows`` only, when given) as a TE tensor, with the row of it where
    ``rows`` starts: its float weight, or a dequantize block over just those rows."""
    first = 0 if rows is None else rows.start
    fmt = segment.planes
    if fmt is None:
        return w_te[0], first
    planes = dict(zip(_segment_names(segment), w_te))
    n = segment.rows if rows is None else len(rows)
    return te.compute((n, segment.cols), lambda i, j: _plane_expr(planes, fmt, i + first, j), name="dequantize"), 0


def plan_segments(parts: list[tuple[str, int]], cols: int, formats: dict[str, str]) -> list[Segment]:
    """How a matrix made of HF ``parts`` (name, rows) is stored: one segment when every part has
    the same GGUF type, else one per part (the one place this rule lives)."""
    missing = [name for name, _ in parts if name not in formats]
    if missing:
        raise ModelConfigError(f"gguf_formats has no entry for {missing[0]}; regenerate mlc-chat-config.json "
                               "with `webrt gen_config` from the same GGUF.")
    for name, _ in parts:
        if formats[name] not in FLOAT_FORMATS:
            plane_format(formats[name], name)  # a typed error for a type webrt cannot keep
    kinds = {formats[name] for name, _ in parts}
    if len(kinds) == 1:
        return [Segment(tuple(n for n, _ in parts), kinds.pop(), sum(r for _, r in parts), cols)]
    return [Segment((name,), formats[name], rows, cols) for name, rows in parts]


class QuantizedMatrix(nn.Module):
    """A ``[rows, cols]`` weight stored as the quantization dictates: ``weight``, the pair
    ``q_weight`` (packed codes) and ``q_scale`` (one scale per group along ``cols``), or under
    ``gguf_f32`` the segments of :meth:`bind_gguf` (see the module docstring).

    ``parts`` lists the HF matrices fused into this one (leaf name, rows), e.g. q/k/v_proj.
    """

    def __init__(self, rows: int, cols: int, quant: Quantization, what: str,
                 parts: tuple[tuple[str, int], ...] | None = None):
        super().__init__()
        self.quant = quant
        self.rows, self.cols, self.parts = rows, cols, parts
        self.segments: list[Segment] = []
        if quant.keeps_gguf:
            pass  # parameters come with bind_gguf, once the matrix knows its name
        elif quant.is_grouped:
            quant.check_reduction_dim(what, cols)
            self.q_weight = nn.Parameter((rows, cols // quant.elems_per_storage), "uint32")
            self.q_scale = nn.Parameter((rows, cols // quant.group_size), quant.model_dtype)
        else:
            self.weight = nn.Parameter((rows, cols), quant.model_dtype)

    def bind_gguf(self, name: str, formats: dict[str, str]) -> None:
        """Create this ``gguf_f32`` matrix's parameters, ``name`` being its parameter prefix."""
        if self.parts is None:
            parts = [(name, self.rows)]
        else:
            parent = name.rsplit(".", 1)[0]
            parts = [(f"{parent}.{leaf}", rows) for leaf, rows in self.parts]
        self.segments = plan_segments(parts, self.cols, formats)
        if len(self.segments) == 1:
            _add_segment_params(self, self.segments[0])
            return
        for segment in self.segments:
            setattr(self, segment.leaf, _SegmentWeights(segment))

    def segment_params(self, prefix: str) -> Iterator[tuple[str, Segment]]:
        """(parameter prefix, segment) of each ``gguf_f32`` segment."""
        if len(self.segments) == 1:
            yield prefix, self.segments[0]
            return
        for segment in self.segments:
            yield f"{prefix}.{segment.leaf}", segment

    def _segment_weights(self, segment: Segment) -> list[Tensor]:
        owner = self if len(self.segments) == 1 else getattr(self, segment.leaf)
        return [getattr(owner, n) for n in _segment_names(segment)]

    def weights(self) -> list[Tensor]:
        """The stored tensors the weight is made of (one, or q_weight and q_scale)."""
        return [self.q_weight, self.q_scale] if self.quant.is_grouped else [self.weight]

    def matmul_transposed(self, x: Tensor, out_dtype: str, name: str) -> Tensor:
        """``x @ W^T`` as one kernel, dequantizing inside it (one kernel per ``gguf_f32`` segment)."""
        quant = self.quant
        if quant.keeps_gguf:
            outs = []
            for segment in self.segments:
                def compute(x_te: te.Tensor, *w_te: te.Tensor, segment: Segment = segment) -> te.Tensor:
                    return _nt_matmul(x_te, _segment_tensor(list(w_te), segment), out_dtype)

                outs.append(op.tensor_expr_op(compute, name, args=[x, *self._segment_weights(segment)]))
            return outs[0] if len(outs) == 1 else op.concat(outs, dim=-1)

        def compute(x_te: te.Tensor, *w_te: te.Tensor) -> te.Tensor:
            return _nt_matmul(x_te, _weight_tensor(list(w_te), quant, "float32")[0], out_dtype)

        return op.tensor_expr_op(compute, name, args=[x, *self.weights()])

    def matmul_rows(self, x: Tensor, rows: range, out_dtype: str, name: str,
                    epilogue: Callable[..., te.Tensor] | None = None, epilogue_args: Sequence[Tensor] = ()) -> Tensor:
        """``epilogue(x @ W[rows]^T, *epilogue_args)`` as one kernel: the product with some rows of
        the weight (one fused part, such as ``gate_proj`` of ``gate_up_proj``), read where they
        are stored, then an elementwise epilogue. ``rows`` lie within one ``gguf_f32`` segment."""
        if self.quant.keeps_gguf:
            segment, first = self._segment_holding(rows)
            weights = self._segment_weights(segment)

            def weight(w_te: list[te.Tensor]) -> tuple[te.Tensor, int]:
                return _segment_rows(w_te, segment, range(first, first + len(rows)))
        else:
            weights = self.weights()

            def weight(w_te: list[te.Tensor]) -> tuple[te.Tensor, int]:
                return _weight_tensor(w_te, self.quant, "float32", rows)

        def compute(x_te: te.Tensor, *rest: te.Tensor) -> te.Tensor:
            w, first_row = weight(list(rest[:len(weights)]))
            y = _nt_matmul(x_te, w, out_dtype, rows, first_row)
            return y if epilogue is None else epilogue(y, *rest[len(weights):])

        return op.tensor_expr_op(compute, name, args=[x, *weights, *epilogue_args])

    def _segment_holding(self, rows: range) -> tuple[Segment, int]:
        """The ``gguf_f32`` segment that holds ``rows``, and the row of it where they start."""
        start = 0
        for segment in self.segments:
            if start <= rows.start and rows.stop <= start + segment.rows:
                return segment, rows.start - start
            start += segment.rows
        raise ModelConfigError(f"rows {rows.start}..{rows.stop} of a matrix span several GGUF types; "
                               "multiply by its fused matrix instead")


class Linear(QuantizedMatrix):
    """``y = x W^T (+ b)``; W is ``[out_features, in_features]``."""

    def __init__(self, in_features: int, out_features: int, quant: Quantization, bias: bool = False,
                 parts: tuple[tuple[str, int], ...] | None = None):
        super().__init__(out_features, in_features, quant, "a linear layer", parts)
        self.bias = nn.Parameter((out_features,), quant.model_dtype) if bias else None

    def forward(self, x: Tensor, out_dtype: str | None = None) -> Tensor:
        y = self.matmul_transposed(x, out_dtype or self.quant.model_dtype, "linear")
        return y + self.bias if self.bias is not None else y


class Embedding(QuantizedMatrix):
    """Token embedding table ``[vocab, hidden]``; can also serve as a tied LM head."""

    def __init__(self, vocab_size: int, hidden_size: int, quant: Quantization):
        super().__init__(vocab_size, hidden_size, quant, "the embedding")

    def forward(self, input_ids: Tensor) -> Tensor:
        quant, dtype = self.quant, self.quant.model_dtype

        if quant.keeps_gguf:
            (segment,) = self.segments
            fmt = segment.planes

            def lookup(ids: te.Tensor, *w_te: te.Tensor) -> te.Tensor:
                if fmt is None:
                    table = w_te[0]
                    return te.compute((ids.shape[0], segment.cols), lambda i, h: table[ids[i], h], name="embed")
                planes = dict(zip(_segment_names(segment), w_te))
                return te.compute((ids.shape[0], segment.cols),
                                  lambda i, h: _plane_expr(planes, fmt, ids[i], h), name="embed")

            return op.tensor_expr_op(lookup, "embed", args=[input_ids, *self._segment_weights(segment)])

        def compute(ids: te.Tensor, *w_te: te.Tensor) -> te.Tensor:
            if not quant.is_grouped:
                table = w_te[0]
                return te.compute((ids.shape[0], table.shape[1]), lambda i, h: table[ids[i], h], name="embed")
            q_weight, q_scale = w_te
            hidden = q_weight.shape[1] * quant.elems_per_storage
            return te.compute(
                (ids.shape[0], hidden),
                lambda i, h: _dequantize_expr(q_weight, q_scale, quant, ids[i], h, dtype),
                name="embed",
            )

        return op.tensor_expr_op(compute, "embed", args=[input_ids, *self.weights()])

    def lm_head(self, hidden_states: Tensor) -> Tensor:
        """Logits ``hidden @ table^T`` in float32 (tied word embeddings)."""
        return self.matmul_transposed(hidden_states, "float32", "lm_head")


def bind_gguf_formats(model: nn.Module, quant: Quantization) -> None:
    """Give every matrix of ``model`` its ``gguf_f32`` parameters (a no-op for other schemes)."""
    if not quant.keeps_gguf:
        return
    if quant.gguf_formats is None:
        raise ModelConfigError("gguf_f32 needs each matrix's GGUF type; mlc-chat-config.json lacks gguf_formats: "
                               "regenerate it with `webrt gen_config` from the GGUF.")
    formats = dict(quant.gguf_formats)
    for name, matrix in quantized_matrices(model):
        matrix.bind_gguf(name, formats)


def quantized_matrices(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, QuantizedMatrix]]:
    """Every :class:`QuantizedMatrix` under ``module`` with its parameter prefix, in parameter order."""
    items = enumerate(module) if isinstance(module, nn.ModuleList) else module.__dict__.items()
    for key, item in items:
        if isinstance(item, QuantizedMatrix):
            yield f"{prefix}{key}", item
        elif isinstance(item, (nn.Module, nn.ModuleList)):
            yield from quantized_matrices(item, f"{prefix}{key}.")


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, the statistic taken in float32."""

    def __init__(self, hidden_size: int, eps: float, dtype: str):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter((hidden_size,), dtype)

    def forward(self, x: Tensor) -> Tensor:
        return op.rms_norm(x, self.weight, axes=[-1], epsilon=self.eps)
