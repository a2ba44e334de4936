"""``webrt convert_weight``: HF / GGUF weights -> quantized MLC tensor cache."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from webrt.compiler.output import check_output_dir, staged_output_dir
from webrt.compiler.quantization import Quantization, get_quantization
from webrt.compiler.sources import WeightSource, open_source
from webrt.compiler.weights import convert_params, source_names
from webrt.models.config import TransformerConfig
from webrt.models.layers import Segment, quantized_matrices
from webrt.models.registry import model_class
from webrt.ndarray_cache.format import INDEX_NAMES, TensorCacheIndex
from webrt.ndarray_cache.writer import write_tensor_cache
from webrt.errors import WeightFileError


def model_params(config: TransformerConfig, quantization: str | Quantization) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every parameter the compiled library takes, in call order."""
    return _params_of(_model(config, quantization))


def _model(config: TransformerConfig, quantization: str | Quantization) -> Any:
    quant = get_quantization(quantization) if isinstance(quantization, str) else quantization
    return model_class(config.architecture)(config, quant, None)


def _params_of(model: Any) -> list[tuple[str, tuple[int, ...], str]]:
    return [(name, tuple(int(d) for d in p.shape), p.dtype) for name, p in model.named_parameters()]


def _write_formats(out_dir: Path, index: TensorCacheIndex, quant: Quantization) -> TensorCacheIndex:
    """Record each matrix's GGUF type in the tensor cache's metadata (``GGUFFormats``)."""
    index = TensorCacheIndex({**index.metadata, "GGUFFormats": dict(quant.gguf_formats or ())}, index.shards)
    for name in INDEX_NAMES:
        (out_dir / name).write_text(index.dumps())
    return index


def _logical_size(name: str, shape: tuple[int, ...], per_storage: int) -> int:
    """How many model weights a stored tensor holds (a packed uint32 holds several)."""
    if name.endswith(".q_scale"):
        return 0
    return math.prod(shape) * (per_storage if name.endswith(".q_weight") else 1)


def _check_complete(source: WeightSource, params: list[tuple[str, tuple[int, ...], str]], tied: bool,
                    segments: dict[str, Segment]) -> None:
    """Fail before writing anything if a tensor the model needs is absent."""
    available = set(source.names())
    missing = []
    for name, _, _ in params:
        prefix = name.rsplit(".", 1)[0]
        if prefix in segments:
            missing += [f"{n}.weight" for n in segments[prefix].sources if f"{n}.weight" not in available]
            continue
        base = prefix + ".weight" if name.endswith((".q_weight", ".q_scale")) else name
        if base == "lm_head.weight" and tied:
            base = "model.embed_tokens.weight"
        missing += [n for n in source_names(base) if n not in available]
    if missing:
        shown = ", ".join(sorted(set(missing))[:5])
        raise WeightFileError(
            f"the weights lack {len(set(missing))} tensor(s) the model needs ({shown}); "
            "the checkpoint is incomplete or does not match its config.json."
        )


def convert_weight(source_path: str | Path, quantization: str, output: str | Path, show_progress: bool = True,
                   q4_encoder: str = "search") -> TensorCacheIndex:
    """Convert and quantize weights into ``output`` (tensor-cache.json + params_shard_*.bin).

    ``q4_encoder`` picks how q4 group scales are chosen (quantization.Q4_ENCODERS).

    ``output`` may hold other files (gen_config's, libraries): they stay. An earlier conversion's
    shards and index there are replaced, and its shards the new index does not name are deleted.
    """
    check_output_dir(output)  # a bad output path fails now, not after the conversion
    quant = get_quantization(quantization)
    source = open_source(source_path)
    try:
        quant = quant.for_source(source)
        config = TransformerConfig.from_hf(source.config)
        model = _model(config, quant)
        params = _params_of(model)
        segments = {p: seg for name, m in quantized_matrices(model) for p, seg in m.segment_params(name)}
        _check_complete(source, params, config.tie_word_embeddings, segments)
        if quant.keeps_gguf:
            logical = sum(s.rows * s.cols for s in segments.values()) + sum(
                math.prod(shape) for n, shape, _ in params if n.rsplit(".", 1)[0] not in segments)
        else:
            logical = sum(_logical_size(n, s, quant.elems_per_storage if quant.is_grouped else 1) for n, s, _ in params)
        bar = tqdm(total=len(params), desc=f"convert {quantization}", unit="tensor", disable=not show_progress)

        def tensors():
            for name, value in convert_params(source, params, quant, config.tie_word_embeddings, segments, q4_encoder):
                bar.update(1)
                bar.set_postfix_str(name[-40:], refresh=False)
                yield name, value.shape, str(value.dtype), value

        with staged_output_dir(output, replaces=("params_shard_*.bin", *INDEX_NAMES)) as staging:
            index = write_tensor_cache(staging, tensors(), logical_param_count=logical)
            if quant.keeps_gguf:
                index = _write_formats(staging, index, quant)
        bar.close()
        return index
    finally:
        source.close()

