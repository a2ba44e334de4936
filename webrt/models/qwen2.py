"""Qwen2 (Yang et al., 2024): the Llama decoder with a bias on the fused q/k/v projection.

Everything else (RMSNorm, SwiGLU, rotary attention with grouped KV heads, optional tied
embeddings) is Llama's, so the model reuses those modules.
"""

from __future__ import annotations

from webrt.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 / Qwen2.5: Llama with ``qkv_proj`` bias."""

    qkv_bias = True
