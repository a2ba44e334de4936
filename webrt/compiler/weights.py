"""Map Hugging Face tensors onto a compiled model's parameters, quantizing on the way.

The models fuse ``q/k/v_proj`` into ``qkv_proj`` and ``gate/up_proj`` into ``gate_up_proj``
(MLC-LLM's names). A quantized parameter ``X.q_weight`` / ``X.q_scale`` comes from the float
``X.weight``; both halves are produced together and handed out in the library's order.
Under ``gguf_f32`` a matrix's segments (:class:`webrt.models.layers.Segment`) come as exact
planes from the GGUF, parts concatenated by rows.
"""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np

from webrt.compiler.gguf_planes import Planes
from webrt.compiler.quantization import Quantization, quantize_grouped
from webrt.compiler.sources import GGUFSource, WeightSource
from webrt.models.layers import Segment
from webrt.errors import WeightFileError

FUSED_PROJECTIONS = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


def source_names(param: str) -> list[str]:
    """The HF tensor names whose concatenation (axis 0) is float parameter ``param``."""
    m = re.fullmatch(r"(.*)\.(\w+)\.(weight|bias)", param)
    if m and m.group(2) in FUSED_PROJECTIONS:
        prefix, fused, kind = m.groups()
        return [f"{prefix}.{part}.{kind}" for part in FUSED_PROJECTIONS[fused]]
    return [param]


def float_param(source: WeightSource, param: str, tie_word_embeddings: bool) -> np.ndarray:
    """The float32 value of ``param`` (a fused one is concatenated from its parts)."""
    names = source_names(param)
    if param == "lm_head.weight" and tie_word_embeddings:
        names = ["model.embed_tokens.weight"]
    available = set(source.names())
    missing = [n for n in names if n not in available]
    if missing:
        raise WeightFileError(
            f"the weights lack {', '.join(missing)} (needed for {param}); the checkpoint is incomplete "
            "or its architecture does not match config.json."
        )
    parts = [np.asarray(source.get(n), dtype=np.float32) for n in names]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def segment_tensors(source: GGUFSource, segment: Segment) -> dict[str, np.ndarray]:
    """A ``gguf_f32`` segment's parameters (by leaf name) from the GGUF, its parts stacked by rows."""
    values = [source.planes(f"{name}.weight") for name in segment.sources]
    if segment.planes is None:
        return {"weight": np.concatenate([np.asarray(v, dtype=np.float32) for v in values], axis=0)}
    first = values[0]
    stacked = Planes(first.fmt, np.concatenate([v.codes for v in values]), np.concatenate([v.scale for v in values]),
                     None if first.min is None else np.concatenate([v.min for v in values]))
    return {f"q_{key}": value for key, value in stacked.packed().items()}


def convert_params(
    source: WeightSource,
    params: list[tuple[str, tuple[int, ...], str]],
    quant: Quantization,
    tie_word_embeddings: bool,
    segments: dict[str, Segment] | None = None,
    q4_encoder: str = "search",
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, array)`` for every library parameter, in order, with checked shapes.

    ``segments`` (``gguf_f32``): each segment by its parameter prefix."""
    pending: dict[str, np.ndarray] = {}
    for name, shape, dtype in params:
        prefix = name.rsplit(".", 1)[0]
        if name in pending:
            value = pending.pop(name)
        elif segments and prefix in segments:
            assert isinstance(source, GGUFSource)
            pending.update({f"{prefix}.{k}": v for k, v in segment_tensors(source, segments[prefix]).items()})
            value = pending.pop(name)
        elif name.endswith((".q_weight", ".q_scale")):
            base = name.rsplit(".", 1)[0]
            w = float_param(source, base + ".weight", tie_word_embeddings)
            q_weight, q_scale = quantize_grouped(w, quant, q4_encoder)
            pending[base + ".q_scale"], pending[base + ".q_weight"] = q_scale, q_weight
            value = pending.pop(name)
        else:
            value = float_param(source, name, tie_word_embeddings).astype(dtype)
        if tuple(value.shape) != tuple(shape):
            raise WeightFileError(
                f"{name} has shape {tuple(value.shape)} in the weights but the model expects {tuple(shape)}; "
                "config.json does not match the checkpoint."
            )
        yield name, np.ascontiguousarray(value.astype(dtype, copy=False))
