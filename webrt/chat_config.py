"""The rules of ``mlc-chat-config.json`` that every host shares (CPython and Pyodide).

One home for what the compiler, the engine, the browser loader, the cache and the dev server
agree on: the file's name, the tokenizer files a model has, the browser cache backends, and the
KV cache window a config asks for (:func:`window_config`). Pure Python (the standard library
and :mod:`webrt.errors` only), so every package imports it without pulling in the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webrt.errors import ContextWindowSizeExceededError, ModelConfigError

#: The chat config's name in a model folder (next to the weights).
CHAT_CONFIG_FILE = "mlc-chat-config.json"
#: The tokenizer file webrt's tokenizer reads, and the optional one with its settings.
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"
#: Every tokenizer file a model's ``tokenizer_files`` may list (and so a model cache may hold).
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG_JSON, "tokenizer.model")
#: Where the browser keeps model files (``AppConfig.cache_backend``): Cache Storage or IndexedDB.
CACHE_BACKENDS = ("cache", "indexeddb")


def tokenizer_files(settings: Mapping[str, Any]) -> list[str]:
    """The config's ``tokenizer_files``; a config that lists none has only ``tokenizer.json``."""
    return list(settings.get("tokenizer_files") or [TOKENIZER_JSON])


#: The largest context / sliding window webrt builds or accepts (2**20 = 1,048,576 tokens): a KV
#: cache beyond it does not fit a browser or a test machine (a 135M model needs ~24 GB at 2**20).
MAX_CONTEXT_WINDOW = 2**20

#: The window settings a user may set (gen_config and chat flags, overrides, chat_opts): name ->
#: (lowest, highest, other values allowed). -1 turns a window off, and is the "no attention sink".
WINDOW_SETTINGS: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "context_window_size": (1, MAX_CONTEXT_WINDOW, (-1,)),
    "sliding_window_size": (1, MAX_CONTEXT_WINDOW, (-1,)),
    "prefill_chunk_size": (1, MAX_CONTEXT_WINDOW, ()),
    "attention_sink_size": (0, MAX_CONTEXT_WINDOW - 1, (-1,)),
}


def window_setting_problem(name: str, value: int) -> str | None:
    """Why ``value`` cannot be the window setting ``name`` (its bounds and the fix), or None."""
    low, high, allowed = WINDOW_SETTINGS[name]
    if value in allowed or low <= value <= high:
        return None
    also = f" (or {' / '.join(map(str, allowed))}: off)" if allowed else ""
    if value > high:
        return (f"{name} must be between {low} and {high} tokens{also}, got {value}: a larger KV cache does not "
                f"fit a browser or a test machine; pass at most {high}.")
    return f"{name} must be between {low} and {high} tokens{also}, got {value}; pass a value in that range."


def read_int(settings: Mapping[str, Any], name: str, default: int) -> int:
    """``settings[name]`` as an integer (``default`` when absent or null)."""
    value = settings.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelConfigError(f"{name} must be an integer, got {value!r}")
    return value


@dataclass
class WindowConfig:
    """The KV cache geometry a chat config asks for; exactly one window size is positive."""

    context_window_size: int
    sliding_window_size: int
    attention_sink_size: int
    prefill_chunk_size: int

    @property
    def uses_sliding_window(self) -> bool:
        return self.sliding_window_size > 0

    @property
    def max_total_length(self) -> int:
        """Tokens the cache holds at most."""
        return self.sliding_window_size if self.uses_sliding_window else self.context_window_size

    def has_room_for(self, total_tokens: int) -> bool:
        """Whether the cache may hold ``total_tokens`` tokens (a sliding window always may)."""
        return self.uses_sliding_window or total_tokens <= self.context_window_size

    def check_prompt(self, prompt_tokens: int, model_id: str) -> None:
        """Raise ContextWindowSizeExceededError if a prompt of ``prompt_tokens`` cannot fit."""
        if not self.has_room_for(prompt_tokens):
            raise ContextWindowSizeExceededError(prompt_tokens, self.context_window_size, model_id)


def window_config(settings: Mapping[str, Any]) -> WindowConfig:
    """The window of a chat config (``mlc-chat-config.json`` with any overrides laid over it).

    Exactly one of ``context_window_size`` and ``sliding_window_size`` must be positive;
    ``prefill_chunk_size`` defaults to that window, ``attention_sink_size`` to -1 (none).
    """
    context = read_int(settings, "context_window_size", -1)
    sliding = read_int(settings, "sliding_window_size", -1)
    if (context > 0) == (sliding > 0):
        raise ModelConfigError(
            f"exactly one of context_window_size ({context}) and sliding_window_size ({sliding}) must be "
            "positive; set the other to -1 in chat_opts."
        )
    chunk = read_int(settings, "prefill_chunk_size", 0) or (context if context > 0 else sliding)
    return WindowConfig(context, sliding, read_int(settings, "attention_sink_size", -1), chunk)
