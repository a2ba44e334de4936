"""gguf_f32 end to end on a tiny GGUF holding every type webrt keeps (:func:`make_tiny_gguf`):
convert_weight keeps each matrix's own type (fusing q/k/v and gate/up only where the parts share
one), gen_config and the tensor cache record the types, and the CPU library's logits match
transformers running the same GGUF to 1e-4 relative, through prefill chunks and decode steps."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from model_factory import TINY_GGUF_TYPES, build_artifacts, cache_root, make_tiny_gguf, tiny_artifacts
from test_models import PROMPT_LEN, generate, relative_error, runner_for
from webrt.compiler.compile import compile_model
from webrt.compiler.convert_weight import convert_weight
from webrt.compiler.gen_config import gen_config
from webrt.errors import ModelConfigError, UnsupportedQuantizationError

DECODE_STEPS = 16


@pytest.fixture(scope="module")
def tiny_gguf() -> Path:
    out = cache_root() / "gguf-every-type-v1"
    if not (out / "tiny.gguf").is_file():
        staging = Path(tempfile.mkdtemp(prefix="gguf-every-type.", dir=cache_root()))
        make_tiny_gguf(staging)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    return out / "tiny.gguf"


def test_cpu_library_matches_transformers_on_the_gguf(tiny_gguf: Path) -> None:
    art = build_artifacts("tiny-gguf-every-type", tiny_gguf, "gguf_f32")
    runner = runner_for(art)
    prompt = [int(t) for t in np.random.RandomState(7).randint(3, art.chat_config["vocab_size"], PROMPT_LEN)]
    tokens, logits = generate(runner, prompt, DECODE_STEPS)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([tokens])).logits[0].numpy()
    for step, ours in enumerate(logits):
        theirs = ref[PROMPT_LEN - 1 + step]
        assert relative_error(ours, theirs) < 1e-4, f"step {step}"
        assert int(np.argmax(ours)) == int(np.argmax(theirs)), f"step {step}"
    assert min(np.abs(a - b).max() for a, b in zip(logits, logits[1:])) > 1e-3


def test_each_matrix_keeps_its_type_and_fuses_only_within_one(tiny_gguf: Path) -> None:
    art = build_artifacts("tiny-gguf-every-type", tiny_gguf, "gguf_f32")
    formats = art.chat_config["gguf_formats"]
    assert formats["model.layers.0.self_attn.v_proj"] == "Q6_K" and formats["lm_head"] == "Q5_K"
    assert sorted(set(formats.values())) == sorted(set(TINY_GGUF_TYPES.values()))
    index = json.loads((art.model_dir / "tensor-cache.json").read_text())
    assert index["metadata"]["GGUFFormats"] == formats
    params = {r["name"]: r for shard in index["records"] for r in shard["records"]}
    # layer 0: q/k are Q4_K but v is Q6_K, so the three stay apart; gate/up share Q4_1 and fuse
    assert "model.layers.0.self_attn.qkv_proj.v_proj.q_hi" in params
    assert "model.layers.0.self_attn.qkv_proj.q_proj.q_min" in params
    assert params["model.layers.0.mlp.gate_up_proj.q_lo"]["shape"] == [1024, 32]
    assert "model.layers.1.self_attn.qkv_proj.q_lo" in params  # all Q2_K: fused
    assert params["model.layers.1.mlp.down_proj.weight"]["dtype"] == "float32"  # F16, kept as float32
    assert "model.layers.0.mlp.down_proj.q_min" not in params  # Q8_0 has no minimum


def test_compile_refuses_missing_or_malformed_gguf_formats(tiny_gguf: Path, tmp_path: Path) -> None:
    art = build_artifacts("tiny-gguf-every-type", tiny_gguf, "gguf_f32")
    for bad in ([["lm_head", "Q5_K"]], {}):
        config = {**art.chat_config, "gguf_formats": bad}
        (tmp_path / "mlc-chat-config.json").write_text(json.dumps(config))
        with pytest.raises(ModelConfigError, match="gguf_formats.*webrt gen_config"):
            compile_model(tmp_path / "mlc-chat-config.json", "cpu", tmp_path / "lib.so")
    assert not (tmp_path / "lib.so").exists()


def test_gguf_f32_needs_a_gguf_source(tmp_path: Path) -> None:
    hf_dir = tiny_artifacts("llama2").hf_dir
    for command in (lambda: convert_weight(hf_dir, "gguf_f32", tmp_path / "a", show_progress=False),
                    lambda: gen_config(hf_dir, "gguf_f32", "chatml", tmp_path / "b")):
        with pytest.raises(UnsupportedQuantizationError, match="gguf_f32 .*q4f16_1, q4f32_1, q0f16 or q0f32"):
            command()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_type_it_cannot_keep_names_the_matrix_and_the_ways_out(tmp_path: Path) -> None:
    from webrt.compiler.quantization import get_quantization
    from webrt.models.config import TransformerConfig
    from webrt.models.llama import LlamaForCausalLM

    config = TransformerConfig("LlamaForCausalLM", "llama", 320, 256, 512, 1, 4, 2, 64, 1e-5, tie_word_embeddings=True)
    formats = {"model.embed_tokens": "Q8_0", "model.layers.0.self_attn.o_proj": "Q4_K",
               "model.layers.0.mlp.down_proj": "Q4_K", "model.layers.0.mlp.gate_proj": "IQ2_XXS",
               "model.layers.0.mlp.up_proj": "Q4_K"}
    formats.update({f"model.layers.0.self_attn.{p}": "Q4_K" for p in ("q_proj", "k_proj", "v_proj")})
    with pytest.raises(UnsupportedQuantizationError, match=r"mlp\.gate_proj .*IQ2_XXS.*q4f16_1"):
        LlamaForCausalLM(config, get_quantization("gguf_f32").with_formats(formats), None)
