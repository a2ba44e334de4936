"""llama.cpp GGUF files read as a Hugging Face model.

Metadata becomes a HF config dict and tensors are dequantized and renamed. llama.cpp's
permutation of ``attn_q`` / ``attn_k`` rows (its RoPE layout) is undone, and a ``rope_freqs``
tensor (Llama-3.1/3.2) becomes the ``rope_scaling`` it encodes (:mod:`.gguf_rope`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from webrt.compiler.gguf_planes import FLOAT_TYPES, Planes, to_planes
from webrt.compiler.sources.base import WeightSource
from webrt.compiler.sources.gguf_rope import llama3_scaling_from_divisors
from webrt.errors import ModelConfigError, WeightFileError
from webrt.models.registry import architecture_for_gguf

_GGUF_NAMES = [
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", "model.layers.{0}.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", "model.layers.{0}.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_q\.(weight|bias)", "model.layers.{0}.self_attn.q_proj.{1}"),
    (r"blk\.(\d+)\.attn_k\.(weight|bias)", "model.layers.{0}.self_attn.k_proj.{1}"),
    (r"blk\.(\d+)\.attn_v\.(weight|bias)", "model.layers.{0}.self_attn.v_proj.{1}"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", "model.layers.{0}.self_attn.o_proj.{1}"),
    (r"blk\.(\d+)\.ffn_gate\.weight", "model.layers.{0}.mlp.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", "model.layers.{0}.mlp.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", "model.layers.{0}.mlp.down_proj.weight"),
]


def _hf_name(gguf_name: str) -> str | None:
    for pattern, template in _GGUF_NAMES:
        m = re.fullmatch(pattern, gguf_name)
        if m:
            return template.format(*m.groups())
    return None


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row order for q/k: per head, rows were interleaved (pairs) for its RoPE."""
    rows = w.shape[0]
    head_dim = rows // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def gguf_dequantize(tensor: Any, file_name: str = "the GGUF") -> np.ndarray:
    """A GGUF tensor as float32 (whatever its storage type)."""
    import gguf

    try:
        return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    except Exception as e:
        raise WeightFileError(f"cannot dequantize {tensor.name} ({tensor.tensor_type.name}) from {file_name}: {e}") from None


class GGUFSource(WeightSource):
    """A llama.cpp GGUF file: metadata becomes a HF config dict, tensors are dequantized."""

    def __init__(self, path: Path):
        import gguf

        self.path = path
        try:
            self._reader = gguf.GGUFReader(str(path))
        except Exception as e:
            raise WeightFileError(f"cannot read {path.name} as GGUF: {e}; the file is corrupt or truncated.") from None
        self.metadata = {k: self.field(k) for k in self._reader.fields if not k.startswith("tokenizer.ggml.")}
        self._tensors = {}
        for t in self._reader.tensors:
            name = _hf_name(t.name)
            if name is not None:
                self._tensors[name] = t
        self.config = self._hf_config()

    def field(self, key: str) -> Any:
        """One raw metadata value (``tokenizer.ggml.*`` included); None if absent or unreadable."""
        try:
            return self._reader.fields[key].contents()
        except Exception:  # noqa: BLE001 - a field of an unusual type: not needed for the config
            return None

    def _hf_config(self) -> dict[str, Any]:
        md = self.metadata
        arch = md.get("general.architecture")
        entry = architecture_for_gguf(arch)

        def need(key: str) -> Any:
            value = md.get(f"{arch}.{key}")
            if value is None:
                raise ModelConfigError(f"GGUF metadata lacks {arch}.{key}; the file is incomplete.")
            return value

        for key in ("attention.head_count", "embedding_length", "feed_forward_length", "block_count",
                    "context_length", "attention.head_count_kv", "rope.dimension_count", "vocab_size"):
            value = md.get(f"{arch}.{key}")  # a count of 0 (or not a count) is a broken file, not a model
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ModelConfigError(f"GGUF metadata {arch}.{key} is {value!r} but must be a positive integer; "
                                       f"{self.path.name} is broken: re-convert it with llama.cpp.")
        for key in ("attention.layer_norm_rms_epsilon", "rope.freq_base", "attention.sliding_window"):
            value = md.get(f"{arch}.{key}")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ModelConfigError(f"GGUF metadata {arch}.{key} is {value!r} but must be a number; "
                                       f"{self.path.name} is broken: re-convert it with llama.cpp.")
        heads = int(need("attention.head_count"))
        hidden = int(need("embedding_length"))
        embed = self._tensors.get("model.embed_tokens.weight")
        vocab = md.get(f"{arch}.vocab_size") or (int(embed.shape[1]) if embed is not None else None)
        if vocab is None:
            raise ModelConfigError(f"GGUF metadata lacks {arch}.vocab_size and {self.path.name} has no "
                                   "token_embd tensor; the file is incomplete.")
        cfg = {
            "architectures": [entry.hf_names[0]],
            "model_type": entry.model_type,
            "vocab_size": int(vocab),
            "hidden_size": hidden,
            "intermediate_size": int(need("feed_forward_length")),
            "num_hidden_layers": int(need("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(md.get(f"{arch}.attention.head_count_kv") or heads),
            "head_dim": int(md.get(f"{arch}.rope.dimension_count") or hidden // heads),
            "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
            "rope_theta": float(md.get(f"{arch}.rope.freq_base") or 10000.0),
            "max_position_embeddings": int(need("context_length")),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "attention_bias": "model.layers.0.self_attn.q_proj.bias" in self._tensors and arch != "qwen2",
        }
        window = md.get(f"{arch}.attention.sliding_window")
        if window:
            cfg["sliding_window"] = int(window)
        rope_freqs = next((t for t in self._reader.tensors if t.name == "rope_freqs.weight"), None)
        if rope_freqs is not None:  # Llama-3.1/3.2: the scaling is stored as per-frequency divisors
            divisors = gguf_dequantize(rope_freqs, self.path.name)
            cfg["rope_scaling"] = llama3_scaling_from_divisors(divisors, cfg["rope_theta"], cfg["head_dim"])
        return cfg

    def names(self) -> list[str]:
        return list(self._tensors)

    def _tensor(self, name: str) -> Any:
        t = self._tensors.get(name)
        if t is None:
            raise WeightFileError(f"tensor {name!r} is not in {self.path.name}; the GGUF is incomplete.")
        return t

    def _hf_rows(self, name: str, w: np.ndarray) -> np.ndarray:
        """``w``'s rows in Hugging Face order (q/k rows of llama.cpp's "llama" files are permuted)."""
        if self.metadata.get("general.architecture") != "llama":
            return w  # only llama.cpp's "llama" converter permutes q/k rows
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            return unpermute_rope_rows(w, self.config["num_attention_heads"])
        if name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            return unpermute_rope_rows(w, self.config["num_key_value_heads"])
        return w

    def get(self, name: str) -> np.ndarray:
        t = self._tensor(name)
        return self._hf_rows(name, gguf_dequantize(t, self.path.name))

    def formats(self) -> dict[str, str]:
        """The GGUF type of every matrix, by HF name without ``.weight`` (``{"lm_head": "Q6_K"}``)."""
        return {name[: -len(".weight")]: t.tensor_type.name for name, t in self._tensors.items()
                if name.endswith(".weight") and len(t.shape) == 2}

    def planes(self, name: str) -> Planes | np.ndarray:
        """Matrix ``name`` exactly as stored: :class:`Planes` of a quantized type, float32 of a float
        one (rows in HF order). Types :mod:`webrt.compiler.gguf_planes` cannot keep raise its error."""
        t = self._tensor(name)
        if t.tensor_type in FLOAT_TYPES:
            return self.get(name)
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        p = to_planes(t.tensor_type, np.asarray(t.data), shape, t.name)
        return Planes(p.fmt, self._hf_rows(name, p.codes), self._hf_rows(name, p.scale),
                      None if p.min is None else self._hf_rows(name, p.min))

    def close(self) -> None:
        self._reader = None  # type: ignore[assignment]
