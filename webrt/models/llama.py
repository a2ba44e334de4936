"""Llama (Touvron et al., 2023): pre-norm decoder with RMSNorm, rotary attention with grouped
KV heads, and a SwiGLU MLP.

The same file serves Llama-2, Llama-3/3.1 (``llama3`` RoPE scaling), TinyLlama and SmolLM2
(tied embeddings). Attention runs through TVM's paged KV cache, which applies RoPE itself.
Parameter names follow MLC-LLM (fused ``qkv_proj`` and ``gate_up_proj``) so weights are
interchangeable with MLC/WebLLM artifacts.
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache
from tvm.target import Target

from webrt.compiler.quantization import Quantization
from webrt.errors import ModelConfigError
from webrt.models.config import TransformerConfig
from webrt.models.layers import Embedding, Linear, RMSNorm, bind_gguf_formats, silu_epilogue, times_epilogue

SUPPORTED_ROPE_SCALING = ("llama3",)


def validate_config(config: TransformerConfig) -> None:
    """Reject configurations this implementation would silently get wrong."""
    if config.num_attention_heads % config.num_key_value_heads:
        raise ModelConfigError(
            f"num_attention_heads ({config.num_attention_heads}) must be a multiple of "
            f"num_key_value_heads ({config.num_key_value_heads})"
        )
    if config.extra.get("mlp_bias"):
        raise ModelConfigError(f"{config.architecture} with mlp_bias=true is not supported")
    rope_type = (config.rope_scaling or {}).get("rope_type")
    if rope_type is not None and rope_type not in SUPPORTED_ROPE_SCALING:
        raise ModelConfigError(
            f"RoPE scaling {rope_type!r} is not supported for {config.architecture}; "
            f"supported: {', '.join(SUPPORTED_ROPE_SCALING)}"
        )


class LlamaAttention(nn.Module):
    """Multi-head attention with grouped KV heads; q, k, v come from one fused projection."""

    def __init__(self, config: TransformerConfig, quant: Quantization, qkv_bias: bool = False):
        super().__init__()
        self.head_dim = config.head_dim
        self.num_q_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        qkv_out = (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim
        q_rows, kv_rows = self.num_q_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = Linear(config.hidden_size, qkv_out, quant, bias=qkv_bias or config.attention_bias,
                               parts=(("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)))
        self.o_proj = Linear(self.num_q_heads * self.head_dim, config.hidden_size, quant, bias=config.attention_bias)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, self.num_q_heads + 2 * self.num_kv_heads, self.head_dim))
        attn = kv_cache.attention_with_fused_qkv(layer_id, qkv, self.num_q_heads, sm_scale=self.head_dim**-0.5)
        return self.o_proj(op.reshape(attn, (b, s, self.num_q_heads * self.head_dim)))


class LlamaMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))`` with gate and up fused into one matrix.

    One token (decode) multiplies by the fused matrix. A prompt multiplies by its gate and up
    rows in two kernels, ``silu`` and the product with ``silu(gate)`` as their epilogues: the
    fused ``[tokens, 2 x intermediate]`` product and a third ``[tokens, intermediate]`` buffer
    are never live, which is most of a prefill's temporary memory (same values: the same
    products, the same ``silu(gate) * up`` in the model dtype).
    """

    def __init__(self, config: TransformerConfig, quant: Quantization):
        super().__init__()
        inter = config.intermediate_size
        parts = (("gate_proj", inter), ("up_proj", inter))
        self.intermediate_size = inter
        self.gate_up_proj = Linear(config.hidden_size, 2 * inter, quant, parts=parts)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, quant)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
            return self.down_proj(op.silu(gate) * up)
        inter, fused, dtype = self.intermediate_size, self.gate_up_proj, self.gate_up_proj.quant.model_dtype
        gate = fused.matmul_rows(x, range(inter), dtype, "linear", silu_epilogue)
        act = fused.matmul_rows(x, range(inter, 2 * inter), dtype, "linear", times_epilogue, [gate])
        return self.down_proj(act)


class LlamaDecoderLayer(nn.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, config: TransformerConfig, quant: Quantization, qkv_bias: bool = False):
        super().__init__()
        dtype = quant.model_dtype
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = LlamaAttention(config, quant, qkv_bias)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = LlamaMLP(config, quant)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), kv_cache, layer_id)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Embedding, the stack of decoder layers, and the final norm."""

    def __init__(self, config: TransformerConfig, quant: Quantization, qkv_bias: bool = False):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, quant)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, quant, qkv_bias) for _ in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, quant.model_dtype)

    def forward(self, hidden: Tensor, kv_cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            hidden = layer(hidden, kv_cache, layer_id)
        return self.norm(hidden)


def _last_position(hidden: Tensor) -> Tensor:
    """``hidden[:, -1:, :]`` as a gather kernel (prefill only needs the last token's logits)."""

    def compute(x: te.Tensor) -> te.Tensor:
        b, s, d = x.shape
        return te.compute((b, 1, d), lambda i, _, k: x[i, s - 1, k], name="last_position")

    return op.tensor_expr_op(compute, "last_position", args=[hidden])


class LlamaForCausalLM(nn.Module):
    """The language model and the entry points a webrt / MLC model library exports."""

    qkv_bias = False

    def __init__(self, config: TransformerConfig, quant: Quantization, target: Target):
        super().__init__()
        validate_config(config)
        self.config, self.quant, self.target = config, quant, target
        self.model = LlamaModel(config, quant, self.qkv_bias)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, quant)
        bind_gguf_formats(self, quant)

    # --- pieces -----------------------------------------------------------------------------
    def logits(self, hidden: Tensor) -> Tensor:
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.lm_head(hidden)
        return self.lm_head(hidden, out_dtype="float32")

    # --- exported entry points --------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embed, paged_kv_cache)
        return self.logits(_last_position(hidden)), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        return self.logits(self.model(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache):
        hidden = op.take(self.model(input_embeds, paged_kv_cache), logit_positions, axis=1)
        return self.logits(hidden), paged_kv_cache

    def batch_decode(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache):
        return self.logits(self.model(input_embeds, paged_kv_cache)), paged_kv_cache

    def create_tir_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        c = self.config
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=_layer_partition(c),
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            qk_head_dim=c.head_dim,
            v_head_dim=c.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL,
            rope_scale=1,
            rope_theta=c.rope_theta,
            rope_scaling=dict(c.rope_scaling or {}),
            rope_ext_factors=_no_ext_factors(),
            rotary_dim=c.head_dim,
            enable_disaggregation=False,
            dtype=self.quant.model_dtype,
            target=self.target,
        )

    def get_default_spec(self) -> dict[str, Any]:
        """Shapes and dtypes of every exported function (MLC's ``param_mode: packed`` ABI)."""
        hidden, dtype = self.config.hidden_size, self.quant.model_dtype
        packed = {"param_mode": "packed", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        return {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", hidden], dtype), "paged_kv_cache": kv, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, hidden], dtype), "paged_kv_cache": kv, "$": packed},
            "batch_prefill": {
                "input_embeds": nn.spec.Tensor([1, "seq_len", hidden], dtype),
                "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_decode": {
                "input_embeds": nn.spec.Tensor(["batch_size", 1, hidden], dtype),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "create_tir_paged_kv_cache": {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": {"param_mode": "none", "effect_mode": "none"},
            },
        }


def _layer_partition(config: TransformerConfig):
    from tvm import relax

    return relax.ShapeExpr([0, config.num_hidden_layers])


def _no_ext_factors():
    from tvm import relax

    return relax.prim_value(0)
