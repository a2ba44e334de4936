"""The rules of ``mlc-chat-config.json`` that every host shares (CPython and Pyodide).

One home for what the compiler, the engine, the browser loader and the cache agree on: the KV
cache window a config asks for (:func:`window_config`). Pure Python (the standard library and
:mod:`webrt.errors` only), so the browser runtime imports it without the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webrt.errors import ContextWindowSizeExceededError, ModelConfigError


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
