"""Mistral (Jiang et al., 2023): the Llama decoder with sliding-window attention.

Each token attends to at most ``sliding_window_size`` previous tokens. The paged KV cache
implements the window at run time (``support_sliding_window=1`` when the cache is created, then
``attention_kv_cache_enable_sliding_window_for_seq``), so the network itself is Llama's.
"""

from __future__ import annotations

from webrt.errors import ModelConfigError
from webrt.models.llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral-7B style model: Llama layers, windowed attention handled by the KV cache."""

    def __init__(self, config, quant, target):
        if config.sliding_window_size == 0 or config.sliding_window_size < -1:
            raise ModelConfigError(
                f"sliding_window_size must be positive or -1 (off), got {config.sliding_window_size}"
            )
        super().__init__(config, quant, target)
