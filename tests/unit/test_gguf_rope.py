"""Llama-3.1/3.2 GGUF files: RoPE scaling stored as ``rope_freqs`` divisors is read back exactly.

The reference is transformers' own Llama-3 RoPE initialisation: the divisors are written the way
llama.cpp's converter derives them (default frequency over scaled frequency, float32), and the
``rope_scaling`` webrt recovers must make transformers produce the same frequencies again.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from model_factory import make_tiny_hf
from webrt.compiler.sources.gguf_rope import llama3_scaling_from_divisors
from webrt.compiler.sources import open_source
from webrt.errors import ModelConfigError
from webrt.models.config import TransformerConfig

SCALINGS = [
    # (head_dim, theta, rope_scaling): Llama-3.2's, Llama-3.1's, and the tiny test model's
    (64, 500000.0, {"factor": 32.0, "original_max_position_embeddings": 8192}),
    (128, 500000.0, {"factor": 8.0, "original_max_position_embeddings": 8192}),
    (16, 500000.0, {"factor": 8.0, "original_max_position_embeddings": 64}),
]


def hf_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    kind = "llama3" if scaling else "default"
    params = {"rope_type": kind, "rope_theta": theta, **(scaling or {})}
    if kind == "llama3":
        params.setdefault("low_freq_factor", 1.0)
        params.setdefault("high_freq_factor", 4.0)
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=131072,
                         rope_parameters=params)
    if kind == "default":
        return 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return inv_freq.double().numpy()


def llama_cpp_divisors(head_dim: int, theta: float, scaling: dict) -> np.ndarray:
    return (hf_inv_freq(head_dim, theta, None) / hf_inv_freq(head_dim, theta, scaling)).astype(np.float32)


@pytest.mark.parametrize("head_dim,theta,scaling", SCALINGS)
def test_recovered_scaling_gives_transformers_the_same_frequencies(head_dim, theta, scaling) -> None:
    recovered = llama3_scaling_from_divisors(llama_cpp_divisors(head_dim, theta, scaling), theta, head_dim)
    assert recovered["rope_type"] == "llama3"
    assert recovered["factor"] == pytest.approx(scaling["factor"], rel=1e-6)
    recovered_params = {k: v for k, v in recovered.items() if k != "rope_type"}
    np.testing.assert_allclose(hf_inv_freq(head_dim, theta, recovered_params),
                               hf_inv_freq(head_dim, theta, scaling), rtol=1e-6)


def test_divisors_of_another_rule_are_refused() -> None:
    ramp = np.linspace(1.0, 8.0, 32, dtype=np.float32)  # smooth everywhere: not Llama-3's piecewise rule
    with pytest.raises(ModelConfigError, match="do not follow Llama-3 RoPE scaling"):
        llama3_scaling_from_divisors(ramp, 500000.0, 64)
    with pytest.raises(ModelConfigError, match="rotary dimension"):
        llama3_scaling_from_divisors(np.ones(8, np.float32) * 2, 500000.0, 64)
    assert llama3_scaling_from_divisors(np.ones(32, np.float32), 500000.0, 64) is None


def permute_like_llama_cpp(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter reorders q/k rows per head: halves interleaved into pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, layer, *rest = hf_name.split(".")
    module = ".".join(rest[:-1])
    return f"blk.{layer}.{GGUF_NAMES[module]}.{rest[-1]}"


def write_llama3_gguf(hf_dir, path) -> None:
    """A GGUF of the tiny HF model the way llama.cpp writes Llama-3.1 (f32 tensors)."""
    import gguf

    cfg = json.loads((hf_dir / "config.json").read_text())
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg["hidden_size"] // heads
    params = cfg.get("rope_parameters") or {**(cfg.get("rope_scaling") or {}), "rope_theta": cfg["rope_theta"]}
    theta = params["rope_theta"]
    scaling = {k: params[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                      "original_max_position_embeddings")}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(cfg["vocab_size"])
    for name, w in load_file(str(hf_dir / "model.safetensors")).items():
        if "q_proj" in name:
            w = permute_like_llama_cpp(w, heads)
        elif "k_proj" in name:
            w = permute_like_llama_cpp(w, kv_heads)
        writer.add_tensor(gguf_name(name), np.ascontiguousarray(w, dtype=np.float32))
    writer.add_tensor("rope_freqs.weight", llama_cpp_divisors(head_dim, theta, scaling))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_llama3_gguf_reads_as_its_hugging_face_model(tmp_path) -> None:
    hf_dir = make_tiny_hf("llama3", tmp_path / "hf", seed=3)
    write_llama3_gguf(hf_dir, tmp_path / "tiny-llama3.gguf")
    from_gguf = open_source(tmp_path / "tiny-llama3.gguf")
    from_hf = open_source(hf_dir)
    try:
        gguf_config = TransformerConfig.from_hf(from_gguf.config).to_dict()
        hf_config = TransformerConfig.from_hf(from_hf.config).to_dict()
        assert gguf_config.pop("rms_norm_eps") == pytest.approx(hf_config.pop("rms_norm_eps"), rel=1e-6)  # f32 in GGUF
        assert gguf_config == hf_config
        assert sorted(from_gguf.names()) == sorted(from_hf.names())
        for name in from_hf.names():
            np.testing.assert_array_equal(from_gguf.get(name), from_hf.get(name), err_msg=name)
    finally:
        from_gguf.close()
        from_hf.close()
