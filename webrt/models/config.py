"""The configuration shared by the decoder-only transformers webrt compiles.

It reads a Hugging Face ``config.json`` dict (``rope_theta`` or transformers-5
``rope_parameters``), and round-trips through the ``model_config`` field of
``mlc-chat-config.json``. GGUF metadata is first turned into a HF-style dict by
``webrt.compiler.sources``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from webrt.errors import ModelConfigError


def _require(d: dict[str, Any], *names: str, where: str) -> Any:
    """Return the first present key among ``names``, or raise naming all of them."""
    for name in names:
        if d.get(name) is not None:
            return d[name]
    raise ModelConfigError(f"{where} has no {' / '.join(repr(n) for n in names)}; add it to the config.")


def _rope_settings(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either the classic or the transformers-5 layout."""
    params = d.get("rope_parameters") or {}
    theta = d.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = d.get("rope_scaling") or None
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None:
        scaling = dict(scaling)
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        if scaling.get("rope_type", "default") == "default":
            scaling = None
    return float(theta), scaling


@dataclass
class TransformerConfig:
    """Hyper-parameters of a Llama-family decoder (Llama-2/3, SmolLM2, TinyLlama, Mistral, Qwen2)."""

    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    context_window_size: int = 4096
    sliding_window_size: int = -1
    prefill_chunk_size: int = 2048
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "TransformerConfig":
        """Build from a HF ``config.json`` dict."""
        where = "config.json"
        archs = d.get("architectures") or []
        if not archs:
            raise ModelConfigError("config.json has no 'architectures' list; add e.g. [\"LlamaForCausalLM\"].")
        heads = int(_require(d, "num_attention_heads", "n_head", where=where))
        hidden = int(_require(d, "hidden_size", "n_embd", where=where))
        theta, scaling = _rope_settings(d)
        context = int(_require(d, "max_position_embeddings", "max_sequence_length", "context_window_size", where=where))
        sliding = d.get("sliding_window")
        if not d.get("use_sliding_window", True):
            sliding = None
        return cls(
            architecture=archs[0],
            model_type=str(d.get("model_type", "")),
            vocab_size=int(_require(d, "vocab_size", where=where)),
            hidden_size=hidden,
            intermediate_size=int(_require(d, "intermediate_size", where=where)),
            num_hidden_layers=int(_require(d, "num_hidden_layers", "n_layer", where=where)),
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", False)),
            context_window_size=context,
            sliding_window_size=int(sliding) if sliding else -1,
            extra={"mlp_bias": True} if d.get("mlp_bias") else {},
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``model_config`` object written into mlc-chat-config.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransformerConfig":
        """Inverse of :meth:`to_dict`; unknown keys are kept in ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.name in _REQUIRED and f.name not in d]
        if missing:
            raise ModelConfigError(
                f"mlc-chat-config.json model_config lacks {', '.join(missing)}; regenerate it with `webrt gen_config`."
            )
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        known.setdefault("extra", {}).update(extra)
        return cls(**known)

    def override(self, **values: Any) -> "TransformerConfig":
        """A copy with some fields replaced (context window, prefill chunk, sliding window)."""
        unknown = set(values) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ModelConfigError(f"unknown config override(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **values)


_REQUIRED = {
    "architecture",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
}
