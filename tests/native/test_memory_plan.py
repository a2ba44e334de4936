"""Libraries and memory plans without weights: gen_config from config.json alone, MLC-LLM's memory
report printed by `webrt compile` and kept in `_metadata`, checked against the parameter list,
against the KV cache geometry computed from config.json and against TVM's runtime cache itself,
and the plans of real model shapes beside WebLLM's `vram_required_MB`."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tvm

from webrt.compiler.compile import compile_model
from webrt.compiler.gen_config import TokenizerMissingWarning, gen_config

#: A Llama with grouped KV heads (4 query heads, 2 KV heads), so the KV figure must use the KV heads.
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 320, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5, "max_position_embeddings": 256, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2,
}
CONTEXT, CHUNK = 100, 24  # 100 tokens is not a whole number of 16-token pages
MB = 2**20
REAL_CONFIGS = Path(__file__).resolve().parents[1] / "data" / "hf_configs"
REPORT = re.compile(r"^Total memory usage: (\d+\.\d\d) MB \(Parameters: (\d+\.\d\d) MB\. "
                    r"KVCache: (\d+\.\d\d) MB\. Temporary buffer: (\d+\.\d\d) MB\)$", re.M)


@pytest.fixture(scope="module")
def config_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding config.json and nothing else."""
    folder = tmp_path_factory.mktemp("config-only")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder


@pytest.fixture(scope="module")
def tiny_library(config_only: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, tvm.relax.VirtualMachine]:
    """gen_config from config.json alone, then `compile --device cpu`: (_metadata, printed text, VM)."""
    out = tmp_path_factory.mktemp("tiny-lib")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenizerMissingWarning)
        gen_config(config_only, "q0f32", "chatml", out / "model", context_window_size=CONTEXT, prefill_chunk_size=CHUNK)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        lib = compile_model(out / "model" / "mlc-chat-config.json", "cpu", out / "lib.so")
    vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    return json.loads(vm["_metadata"]()), printed.getvalue(), vm


def test_gen_config_from_config_json_alone_warns_about_the_tokenizer(config_only: Path, tmp_path: Path) -> None:
    with pytest.warns(TokenizerMissingWarning, match=r"neither tokenizer\.json nor tokenizer\.model.*cannot load"):
        chat = gen_config(config_only, "q4f16_1", "chatml", tmp_path / "m", context_window_size=CONTEXT)
    written = json.loads((tmp_path / "m" / "mlc-chat-config.json").read_text())
    assert written == chat and chat["tokenizer_files"] == [] and chat["context_window_size"] == CONTEXT
    assert chat["model_config"]["num_key_value_heads"] == 2 and chat["vocab_size"] == CONFIG["vocab_size"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["mlc-chat-config.json"]


def test_gen_config_without_weights_matches_gen_config_with_them(hf_dir: Path, tmp_path: Path) -> None:
    """Weights change nothing in the chat config: a folder without them gives the same file, no warning."""
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for f in hf_dir.iterdir():
        if f.suffix not in (".safetensors", ".bin") and f.name != "model.safetensors.index.json":
            shutil.copy(f, no_weights / f.name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        without = gen_config(no_weights, "q4f32_1", "chatml", tmp_path / "a")
    assert without == gen_config(hf_dir, "q4f32_1", "chatml", tmp_path / "b")
    assert "tokenizer.json" in without["tokenizer_files"] and (tmp_path / "a" / "tokenizer.json").is_file()


def test_compile_prints_mlc_memory_report_and_keeps_it_in_metadata(tiny_library) -> None:
    meta, printed, _ = tiny_library
    plan = meta["memory_plan"]
    match = REPORT.search(printed)
    assert match, printed
    assert [float(v) for v in match.groups()] == [
        round(plan[k] / MB, 2) for k in ("total_bytes", "params_bytes", "kv_cache_bytes", "temp_buffer_bytes")]
    assert plan["total_bytes"] == plan["params_bytes"] + plan["kv_cache_bytes"] + plan["temp_buffer_bytes"]
    # MLC's memory_usage keeps its meaning: planned temporary bytes per function; the plan takes the largest
    usage = meta["memory_usage"]
    assert {"prefill", "decode", "embed"} <= set(usage) and all(isinstance(v, int) for v in usage.values())
    assert plan["temp_buffer_bytes"] == max(usage.values()) > 0
    # the library's own parameter list, read back through TVM's runtime
    assert plan["params_bytes"] == sum(math.prod(p["shape"]) * np.dtype(p["dtype"]).itemsize for p in meta["params"])


def test_prefill_holds_two_hidden_and_two_intermediate_buffers(tiny_library) -> None:
    """While a prompt's MLP runs, the residual stream, its normed copy, silu(gate) and the gated
    product are live: two [chunk, hidden] and two [chunk, intermediate] buffers, the least any plan
    can hold (the fused [chunk, 2 x intermediate] product and a third intermediate buffer are gone);
    the prefill's only other temporary is its output, one row of logits."""
    meta, _, _ = tiny_library
    hidden, inter, value_bytes = CONFIG["hidden_size"], CONFIG["intermediate_size"], 4
    least = 2 * CHUNK * (hidden + inter) * value_bytes
    assert meta["memory_usage"]["prefill"] == least + CONFIG["vocab_size"] * 4


def test_kv_cache_figure_matches_the_config_and_the_runtime_cache(tiny_library) -> None:
    meta, _, vm = tiny_library
    layers, kv_heads = CONFIG["num_hidden_layers"], CONFIG["num_key_value_heads"]
    heads, head_dim, value_bytes = CONFIG["num_attention_heads"], CONFIG["hidden_size"] // CONFIG["num_attention_heads"], 4
    pages = -(-CONTEXT // 16) + 1  # TVM's runtime keeps one page more than the window needs
    expected_pages = layers * pages * 2 * kv_heads * 16 * head_dim * value_bytes
    # one prefill chunk of q, k, v, output (float32 here) and two float32 log-sum-exp rows per query head
    expected_workspace = CHUNK * (2 * heads * head_dim + 2 * kv_heads * head_dim) * value_bytes + 2 * CHUNK * heads * 4
    # int32 index arrays: per block depth (2) page tables and two 256x256 tree masks, plus position maps
    expected_index = (2 * (3 * 2 + pages + 4 + 256 * 256) + (2 * 2 + 1 + 6 * CHUNK + 2 * CHUNK)) * 4
    kv = meta["memory_plan"]["kv_cache"]
    assert (kv["num_layers"], kv["num_kv_heads"], kv["qk_head_dim"], kv["dtype"], kv["num_pages"]) == (
        layers, kv_heads, head_dim, "float32", pages)
    assert meta["memory_plan"]["kv_cache_bytes"] == expected_pages + expected_workspace + expected_index
    # the cache TVM's runtime builds from the library, with the engine's arguments, has that geometry
    shape = tvm.runtime.ShapeTuple
    cache = vm["create_tir_paged_kv_cache"](shape([1]), shape([CONTEXT]), shape([CHUNK]), shape([16]), shape([0]))
    tvm.get_global_func("vm.builtin.kv_state_add_sequence")(cache, 0)
    runtime = json.loads(tvm.get_global_func("vm.builtin.attention_kv_cache_get_checkpoint_metadata")(cache, 0))
    assert runtime["num_total_pages"] == pages == tvm.get_global_func(
        "vm.builtin.attention_kv_cache_get_num_available_pages")(cache)
    assert (runtime["num_layers"], runtime["num_kv_heads"], runtime["qk_head_dim"], runtime["v_head_dim"],
            runtime["num_qo_heads"], runtime["page_size"], runtime["prefill_chunk_size"], runtime["dtype"]) == (
        layers, kv_heads, head_dim, head_dim, heads, 16, CHUNK, "float32")


def test_llama3_webgpu_library_builds() -> None:
    """Llama-3.1-8B's attention shape (head_dim 128, 4 query heads per KV head, llama3 RoPE
    scaling) in one small layer: its WebGPU kernels all build (TVM 0.27's TIR CSE broke the
    tree-attention kernel of this KV cache), and the plan is recorded on the way."""
    from webrt.compiler.build import build_executable, export_model, make_target
    from webrt.compiler.quantization import get_quantization
    from webrt.models.config import TransformerConfig

    hf = json.loads((REAL_CONFIGS / "Llama-3.1-8B-Instruct" / "config.json").read_text())
    hf.update(hidden_size=1024, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=1,
              intermediate_size=256, vocab_size=320)
    config = TransformerConfig.from_hf(hf).override(context_window_size=64, sliding_window_size=-1, prefill_chunk_size=16)
    exported = export_model(config, get_quantization("q4f16_1"), make_target("webgpu"))
    build_executable(exported, "webgpu")
    kv = exported.memory_plan.kv_cache
    assert (kv.num_layers, kv.num_attention_heads, kv.num_kv_heads, kv.qk_head_dim, kv.dtype) == (1, 8, 2, 128, "float16")


@pytest.mark.slow
def test_real_model_plans_beside_webllm() -> None:
    """Real shapes (config.json only), planned without code generation, against WebLLM 0.2.86's
    vram_required_MB: counting all that TVM's runtime allocates with the KV cache (one page more
    than the window, a prefill chunk's attention workspace, index arrays), which WebLLM's figure
    leaves out, every plan is at most WebLLM's."""
    from webrt.tools.bench.memory_bench import bench_memory

    results = {r["model_id"]: r for r in bench_memory(REAL_CONFIGS)}
    assert len(results) == 6
    for model_id, r in results.items():
        limit = r["webllm_vram_required_mb"] * MB
        assert r["mlc_style_total_bytes"] < r["total_bytes"] <= limit, model_id  # the runtime share is counted
