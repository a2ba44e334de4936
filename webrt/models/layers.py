"""Quantization-aware building blocks shared by the model files.

Weights keep the Hugging Face ``[out_features, in_features]`` layout. Matrix products are written
as one tensor expression ``y[..., n] = sum_k x[..., k] * W[n, k]``: there is no transpose kernel
per call, and for grouped quantization the dequantization is a producer block inside the same
kernel, so the GEMV/matmul schedules read each packed weight byte once.
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from webrt.compiler.quantization import Quantization


def _dequantize_expr(q_weight: te.Tensor, q_scale: te.Tensor, quant: Quantization, row, col, dtype: str):
    """The float value of packed element ``[row, col]`` (a TE expression)."""
    per = quant.elems_per_storage
    word = q_weight[row, col // per]
    shift = (col % per).astype("uint32") * tirx.const(quant.bits, "uint32")
    nibble = (word >> shift) & tirx.const((1 << quant.bits) - 1, "uint32")
    value = nibble.astype(dtype) - tirx.const(quant.max_int, dtype)
    return value * q_scale[row, col // quant.group_size].astype(dtype)


def _weight_tensor(weights: list[te.Tensor], quant: Quantization, dtype: str) -> te.Tensor:
    """The ``[out, in]`` weight as a TE tensor: the stored one, or a dequantize block in ``dtype``.

    Dequantization happens in float32 whatever the model dtype: the product is accumulated in
    float32 anyway, and CPUs have no fast float16 arithmetic.
    """
    if not quant.is_grouped:
        return weights[0]
    q_weight, q_scale = weights
    n = q_weight.shape[0]
    k = q_weight.shape[1] * quant.elems_per_storage
    return te.compute(
        (n, k),
        lambda i, j: _dequantize_expr(q_weight, q_scale, quant, i, j, dtype),
        name="dequantize",
    )


def _nt_matmul(x: te.Tensor, w: te.Tensor, out_dtype: str) -> te.Tensor:
    """``x[..., k] @ w[n, k]^T`` accumulated in float32, cast to ``out_dtype``."""
    *batch, k_dim = x.shape
    k = te.reduce_axis((0, k_dim), name="k")
    acc = te.compute(
        (*batch, w.shape[0]),
        lambda *idx: te.sum(x[(*idx[:-1], k)].astype("float32") * w[idx[-1], k].astype("float32"), axis=k),
        name="NT_matmul",
    )
    if out_dtype == "float32":
        return acc
    return te.compute(acc.shape, lambda *idx: acc[idx].astype(out_dtype), name="cast_out")


class QuantizedMatrix(nn.Module):
    """A ``[rows, cols]`` weight stored as the quantization dictates: ``weight``, or the pair
    ``q_weight`` (packed codes) and ``q_scale`` (one scale per group along ``cols``)."""

    def __init__(self, rows: int, cols: int, quant: Quantization, what: str):
        super().__init__()
        self.quant = quant
        if quant.is_grouped:
            quant.check_reduction_dim(what, cols)
            self.q_weight = nn.Parameter((rows, cols // quant.elems_per_storage), "uint32")
            self.q_scale = nn.Parameter((rows, cols // quant.group_size), quant.model_dtype)
        else:
            self.weight = nn.Parameter((rows, cols), quant.model_dtype)

    def weights(self) -> list[Tensor]:
        """The stored tensors the weight is made of (one, or q_weight and q_scale)."""
        return [self.q_weight, self.q_scale] if self.quant.is_grouped else [self.weight]

    def matmul_transposed(self, x: Tensor, out_dtype: str, name: str) -> Tensor:
        """``x @ W^T`` as one kernel, dequantizing inside it."""
        quant = self.quant

        def compute(x_te: te.Tensor, *w_te: te.Tensor) -> te.Tensor:
            return _nt_matmul(x_te, _weight_tensor(list(w_te), quant, "float32"), out_dtype)

        return op.tensor_expr_op(compute, name, args=[x, *self.weights()])


class Linear(QuantizedMatrix):
    """``y = x W^T (+ b)``; W is ``[out_features, in_features]``."""

    def __init__(self, in_features: int, out_features: int, quant: Quantization, bias: bool = False):
        super().__init__(out_features, in_features, quant, "a linear layer")
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


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, the statistic taken in float32."""

    def __init__(self, hidden_size: int, eps: float, dtype: str):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter((hidden_size,), dtype)

    def forward(self, x: Tensor) -> Tensor:
        return op.rms_norm(x, self.weight, axes=[-1], epsilon=self.eps)
