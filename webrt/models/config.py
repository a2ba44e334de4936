"""The configuration shared by the decoder-only transformers webrt compiles.

It reads a Hugging Face ``config.json`` dict (``rope_theta`` or transformers-5
``rope_parameters``), and round-trips through the ``model_config`` field of
``mlc-chat-config.json``. GGUF metadata is first turned into a HF-style dict by
``webrt.compiler.sources``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from webrt.chat_config import WINDOW_SETTINGS
from webrt.errors import ModelConfigError


#: Sanity bound for the other sizes of config.json (vocabulary, hidden size, layers, heads, ...).
MAX_DIMENSION = 2**31 - 1
#: ``max_position_embeddings`` may exceed MAX_CONTEXT_WINDOW (gen_config then asks for a smaller
#: ``--context-window-size``), but not this (positions are int32 in the compiled library).
MAX_POSITIONS = 2**31 - 1


def _require(d: dict[str, Any], *names: str, where: str) -> Any:
    """Return the first present key among ``names``, or raise naming all of them."""
    for name in names:
        if d.get(name) is not None:
            return d[name]
    raise ModelConfigError(f"{where} has no {' / '.join(repr(n) for n in names)}; add it to the config.")


def _first_name(d: dict[str, Any], *names: str) -> str:
    return next((n for n in names if d.get(n) is not None), names[0])


def check_int(value: Any, name: str, where: str, low: int = 1, high: int = MAX_DIMENSION,
              allowed: tuple[int, ...] = ()) -> int:
    """``value`` as an int in ``[low, high]`` (or one of ``allowed``); a bool, a fraction, a string or
    an out-of-range number is a ModelConfigError naming the field, the value and the fix."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        value, ok = int(value), True  # JSON writers sometimes write 2048.0
    if not ok:
        raise ModelConfigError(f"{where}: {name} must be an integer, got {value!r}; fix {name} in {where}.")
    if value in allowed:
        return value
    if not low <= value <= high:
        also = f" (or {' / '.join(map(str, allowed))})" if allowed else ""
        raise ModelConfigError(f"{where}: {name} must be between {low} and {high}{also}, got {value}; "
                               f"fix {name} in {where}.")
    return value


def _check_number(value: Any, name: str, where: str, positive: bool = True) -> float:
    """A finite (positive) real number; no bools, strings or NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        kind = "a finite positive number" if positive else "a finite number"
        raise ModelConfigError(f"{where}: {name} must be {kind}, got {value!r}; fix {name} in {where}.")
    return float(value)


def _check_bool(d: dict[str, Any], name: str, where: str, default: bool) -> bool:
    value = d.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ModelConfigError(f"{where}: {name} must be true or false, got {value!r}; fix {name} in {where}.")
    return value


#: The numeric fields of a Llama-3 ``rope_scaling`` (TVM's KV cache reads them).
_LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _rope_settings(d: dict[str, Any], where: str = "config.json") -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either the classic or the transformers-5 layout."""
    params = d.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ModelConfigError(f"{where}: rope_parameters must be an object, got {params!r}; fix or remove it.")
    theta = d.get("rope_theta", params.get("rope_theta", 10000.0))
    theta = _check_number(theta, "rope_theta", where)
    scaling = d.get("rope_scaling") or None
    if scaling is not None and not isinstance(scaling, dict):
        raise ModelConfigError(f"{where}: rope_scaling must be an object like {{\"rope_type\": \"llama3\", ...}} "
                               f"or null, got {scaling!r}; fix or remove it.")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None:
        scaling = dict(scaling)
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        rope_type = scaling.get("rope_type", "default")
        if not isinstance(rope_type, str):
            raise ModelConfigError(f"{where}: rope_scaling rope_type must be a name like \"llama3\", got "
                                   f"{rope_type!r}; fix rope_scaling.")
        if rope_type == "default":
            scaling = None
        elif rope_type == "llama3":
            for key in _LLAMA3_ROPE_KEYS:
                _check_number(scaling.get(key), f"rope_scaling.{key}", where)
    return theta, scaling


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
        if not isinstance(d, dict):
            raise ModelConfigError(f"config.json must hold a JSON object, got {type(d).__name__}; "
                                   "pass a Hugging Face model folder.")
        archs = d.get("architectures") or []
        if not isinstance(archs, list) or not archs or not isinstance(archs[0], str) or not archs[0]:
            raise ModelConfigError(f"config.json 'architectures' must be a list of names, got {archs!r}; "
                                   "add e.g. [\"LlamaForCausalLM\"].")

        def need(*names: str, low: int = 1, high: int = MAX_DIMENSION) -> int:
            return check_int(_require(d, *names, where=where), _first_name(d, *names), where, low, high)

        def optional(name: str, default: int) -> int:
            return default if d.get(name) is None else check_int(d[name], name, where)

        model_type = d.get("model_type", "")
        if not isinstance(model_type, str):
            raise ModelConfigError(f"config.json: model_type must be a string, got {model_type!r}; fix model_type.")
        heads = need("num_attention_heads", "n_head")
        hidden = need("hidden_size", "n_embd")
        kv_heads = optional("num_key_value_heads", heads)
        if heads % kv_heads:
            raise ModelConfigError(f"config.json: num_attention_heads ({heads}) must be a multiple of "
                                   f"num_key_value_heads ({kv_heads}); fix one of them.")
        if d.get("head_dim") is None and hidden % heads:
            raise ModelConfigError(f"config.json: hidden_size ({hidden}) is not a multiple of num_attention_heads "
                                   f"({heads}) and there is no head_dim; fix them or add head_dim.")
        head_dim = optional("head_dim", hidden // heads)
        theta, scaling = _rope_settings(d, where)
        context = need("max_position_embeddings", "max_sequence_length", "context_window_size", high=MAX_POSITIONS)
        eps = _check_number(d.get("rms_norm_eps", 1e-6), "rms_norm_eps", where)
        sliding = d.get("sliding_window")
        use_sliding = "use_sliding_window" not in d or _check_bool(d, "use_sliding_window", where, False)
        if not use_sliding or sliding is False:  # an explicit null turns it off, as before
            sliding = None
        if sliding is not None:
            sliding = check_int(sliding, "sliding_window", where, 1, MAX_POSITIONS, allowed=(0, -1))
        mlp_bias = _check_bool(d, "mlp_bias", where, False)
        return cls(
            architecture=archs[0],
            model_type=model_type,
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers", "n_layer"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=eps,
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=_check_bool(d, "tie_word_embeddings", where, False),
            attention_bias=_check_bool(d, "attention_bias", where, False),
            context_window_size=context,
            sliding_window_size=sliding if sliding and sliding > 0 else -1,
            extra={"mlp_bias": True} if mlp_bias else {},
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``model_config`` object written into mlc-chat-config.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransformerConfig":
        """Inverse of :meth:`to_dict`; unknown keys are kept in ``extra``."""
        where = "mlc-chat-config.json model_config"
        if not isinstance(d, dict):
            raise ModelConfigError(f"{where} must be an object; regenerate it with `webrt gen_config`.")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.name in _REQUIRED and f.name not in d]
        if missing:
            raise ModelConfigError(
                f"mlc-chat-config.json model_config lacks {', '.join(missing)}; regenerate it with `webrt gen_config`."
            )
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        if not isinstance(known.setdefault("extra", {}), dict):
            raise ModelConfigError(f"{where}: extra must be an object; regenerate it with `webrt gen_config`.")
        known["extra"] = {**known["extra"], **extra}
        config = cls(**known)
        config.validate(where)
        return config

    def validate(self, where: str = "mlc-chat-config.json model_config") -> None:
        """Raise ModelConfigError for a field of the wrong type or out of range (never coerce)."""
        for name in ("architecture", "model_type"):
            if not isinstance(getattr(self, name), str):
                raise ModelConfigError(f"{where}: {name} must be a string, got {getattr(self, name)!r}; "
                                       "regenerate it with `webrt gen_config`.")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim"):
            check_int(getattr(self, name), name, where)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError(f"{where}: num_attention_heads ({self.num_attention_heads}) must be a multiple "
                                   f"of num_key_value_heads ({self.num_key_value_heads}).")
        _check_number(self.rms_norm_eps, "rms_norm_eps", where)
        _check_number(self.rope_theta, "rope_theta", where)
        if self.rope_scaling is not None:
            _rope_settings({"rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling}, where)
        for name in ("tie_word_embeddings", "attention_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ModelConfigError(f"{where}: {name} must be true or false, got {getattr(self, name)!r}.")
        check_int(self.context_window_size, "context_window_size", where, 1, MAX_POSITIONS, allowed=(-1,))
        check_int(self.sliding_window_size, "sliding_window_size", where, 1, MAX_POSITIONS, allowed=(-1,))
        check_int(self.prefill_chunk_size, "prefill_chunk_size", where, 1, MAX_POSITIONS)

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


def check_windows(context: Any, sliding: Any, chunk: Any, sink: Any, where: str) -> tuple[int, int, int, int]:
    """Validate a KV cache geometry; return it. Exactly one of ``context`` and ``sliding`` is
    positive (the other -1), both at most MAX_CONTEXT_WINDOW (2**20); ``chunk`` (the prefill
    chunk) is 1..MAX_CONTEXT_WINDOW; ``sink`` (attention sink) is -1 (none) or 0..window-1.
    ``where`` names the flags or fields to fix. Errors are ModelConfigError."""
    def setting(value: Any, name: str) -> int:
        low, high, allowed = WINDOW_SETTINGS[name]
        return check_int(value, name, where, low, high, allowed=allowed)

    context = setting(context, "context_window_size")
    sliding = setting(sliding, "sliding_window_size")
    if (context > 0) == (sliding > 0):
        raise ModelConfigError(f"{where}: exactly one of context_window_size ({context}) and sliding_window_size "
                               f"({sliding}) must be positive; set the other to -1.")
    chunk = setting(chunk, "prefill_chunk_size")
    window = max(context, sliding)
    sink = check_int(sink, "attention_sink_size", where, 0, window - 1, allowed=(-1,))
    return context, sliding, chunk, sink
