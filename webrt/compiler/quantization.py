"""Quantization schemes, with MLC-LLM's names and exact storage layout.

``qAfB`` means A-bit weights (0 = not quantized) and B-bit float activations/scales.
The grouped schemes (``q4f16_1``, ``q4f32_1``) quantize each row of a weight matrix in groups of
32 consecutive elements along the reduction axis (K). Each group shares one scale; an element
is stored as a 4-bit code ``q`` and read back as ``(q - 7) * scale``; eight codes pack into one
uint32 with element ``i`` in bits ``4i .. 4i+3``. A ``[out, in]`` weight becomes ``q_weight``
uint32 ``[out, in/8]`` and ``q_scale`` ``[out, in/32]`` in the float dtype. That is MLC-LLM's
layout and dequantization exactly, so libraries and weights are interchangeable with theirs.

MLC's encoder uses ``scale = max|w| / 7`` and codes 0..14. webrt's searches a small grid of
scales per group and keeps the one with the least squared error, using all 16 codes (-7..8):
the same decoder reads it. On SmolLM2's GGUF weights the squared error is ~15% lower and the
mean KL divergence to the unquantized model drops from 0.485 to 0.420 (8 prompts x 48
teacher-forced tokens; top-1 agreement 65.0% vs MLC's 66.3%, within noise).

``gguf_f32`` re-quantizes nothing: every matrix of a GGUF file keeps its own GGUF type (Q4_0 ..
Q8_0, Q2_K .. Q6_K, or float), stored as the exact planes of :mod:`webrt.compiler.gguf_planes`
and dequantized inside the matmul kernels in float32; activations are float32. Which type each
matrix has is recorded per Hugging Face matrix name (``gguf_formats`` in mlc-chat-config.json and
``GGUFFormats`` in the tensor cache's metadata) so ``compile`` builds the matching kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from webrt.errors import ModelConfigError, UnsupportedQuantizationError

if TYPE_CHECKING:
    from webrt.compiler.sources import WeightSource


@dataclass(frozen=True)
class Quantization:
    """One quantization scheme: how weights are stored and what dtype the model computes in."""

    name: str
    model_dtype: str  # activations, norms, KV cache, scales
    bits: int = 0  # 0: weights stored unquantized in model_dtype
    group_size: int = 32
    keeps_gguf: bool = False  # gguf_f32: each matrix in its own GGUF type
    #: gguf_f32 only: (HF matrix name, GGUF type name) of every matrix, set by :meth:`with_formats`
    gguf_formats: tuple[tuple[str, str], ...] | None = None

    @property
    def is_grouped(self) -> bool:
        """Whether weights are stored as packed codes with group scales (``q4f*_1``)."""
        return self.bits > 0

    @property
    def elems_per_storage(self) -> int:
        """How many quantized values share one uint32."""
        return 32 // self.bits

    @property
    def max_int(self) -> int:
        """The signed magnitude the grouped scale maps ``max|w|`` to (7 for 4 bits)."""
        return (1 << (self.bits - 1)) - 1

    def with_formats(self, formats: dict[str, str]) -> "Quantization":
        """This ``gguf_f32`` scheme bound to one model's matrix types (``{"model.embed_tokens": "Q8_0"}``)."""
        if not isinstance(formats, dict) or not all(isinstance(v, str) for v in formats.values()):
            raise ModelConfigError("gguf_formats must map each matrix name to its GGUF type name; regenerate "
                                   "mlc-chat-config.json with `webrt gen_config` from the GGUF.")
        return replace(self, gguf_formats=tuple(sorted(formats.items())))

    def for_source(self, source: "WeightSource") -> "Quantization":
        """This scheme checked against a weight source; ``gguf_f32`` bound to the GGUF's matrix types.

        ``gguf_f32`` reads only GGUF files (a typed error naming the other schemes otherwise)."""
        from webrt.compiler.sources import GGUFSource

        if not self.keeps_gguf:
            return self
        if not isinstance(source, GGUFSource):
            raise UnsupportedQuantizationError(
                f"{self.name} keeps a GGUF file's own quantizations, and {source.path} is not a .gguf file; "
                "use q4f16_1, q4f32_1, q0f16 or q0f32 for a Hugging Face folder."
            )
        return self.with_formats(source.formats())

    def check_reduction_dim(self, name: str, k: int) -> None:
        """Raise if a weight's reduction axis cannot be split into whole groups."""
        if self.is_grouped and k % self.group_size:
            raise UnsupportedQuantizationError(
                f"{self.name} needs the input dimension of {name} ({k}) to be a multiple of "
                f"{self.group_size}; use q0f32 or q0f16 for this model."
            )


QUANTIZATIONS: dict[str, Quantization] = {
    q.name: q
    for q in (
        Quantization("q0f32", "float32"),
        Quantization("q0f16", "float16"),
        Quantization("q4f16_1", "float16", bits=4),
        Quantization("q4f32_1", "float32", bits=4),
        Quantization("gguf_f32", "float32", keeps_gguf=True),
    )
}


def get_quantization(name: str) -> Quantization:
    """Look a scheme up by name, with an error that lists the known ones."""
    try:
        return QUANTIZATIONS[name]
    except KeyError:
        known = ", ".join(QUANTIZATIONS)
        raise UnsupportedQuantizationError(
            f"unknown quantization {name!r}; choose one of: {known}"
        ) from None


SCALE_DIVISORS = tuple(6.5 + 2.5 * i / 15 for i in range(16))  # scale = max|w| / divisor
#: How grouped scales are chosen: webrt's search over SCALE_DIVISORS with all 16 codes, or
#: MLC-LLM's formula (scale = max|w| / 7, codes 0..14), for a conversion MLC would produce.
Q4_ENCODERS = ("search", "mlc")


def quantize_grouped(weight: np.ndarray, quant: Quantization, encoder: str = "search"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Pack a float ``[..., K]`` matrix into (q_weight uint32 ``[..., K/8]``, q_scale ``[..., K/32]``).

    For each group, every candidate scale is rounded to the storage dtype first and the codes
    are chosen against that rounded value, so dequantization reproduces what was measured.
    ``encoder`` is one of Q4_ENCODERS.
    """
    if encoder not in Q4_ENCODERS:
        raise UnsupportedQuantizationError(f"unknown q4 encoder {encoder!r}; choose one of {', '.join(Q4_ENCODERS)}")
    assert quant.is_grouped
    w = np.asarray(weight, dtype=np.float32)
    *lead, k = w.shape
    quant.check_reduction_dim("weight", k)
    groups = w.reshape(-1, quant.group_size)
    amax = np.abs(groups).max(axis=-1, keepdims=True)
    top_code = (1 << quant.bits) - 1 if encoder == "search" else 2 * quant.max_int
    divisors = SCALE_DIVISORS if encoder == "search" else (float(quant.max_int),)
    best_err = np.full(amax.shape, np.inf, dtype=np.float32)
    best_scale = np.zeros(amax.shape, dtype=np.float32)
    best_codes = np.zeros(groups.shape, dtype=np.float32)
    for divisor in divisors:
        scale = (amax / divisor).astype(quant.model_dtype).astype(np.float32)
        safe = np.where(scale == 0, 1, scale)
        codes = np.clip(np.rint(groups / safe) + quant.max_int, 0, top_code)
        err = np.square((codes - quant.max_int) * scale - groups).sum(axis=-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_codes = np.where(better, codes, best_codes)
    q = best_codes.astype(np.uint32).reshape(*lead, k // quant.elems_per_storage, quant.elems_per_storage)
    shifts = np.arange(quant.elems_per_storage, dtype=np.uint32) * quant.bits
    packed = np.bitwise_or.reduce(q << shifts, axis=-1).astype(np.uint32)
    scale = best_scale.reshape(*lead, k // quant.group_size).astype(quant.model_dtype)
    return packed, scale
