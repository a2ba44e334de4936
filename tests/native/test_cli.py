"""The compiler CLI end to end, its artifacts checked by independent readers, and its errors.

Every bad input must exit non-zero with a message naming the problem and leave no output
folder (or library) behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.contrib import tvmjs

from model_factory import smollm2_gguf
from webrt.compiler.convert_weight import convert_weight
from webrt.ndarray_cache.format import TensorCacheIndex
from webrt.ndarray_cache.writer import write_tensor_cache

WEBRT = [sys.executable, "-m", "webrt.cli"]


def webrt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WEBRT, *args], capture_output=True, text=True, timeout=600)


def test_cli_end_to_end(hf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    r = webrt("convert_weight", str(hf_dir), "--quantization", "q4f32_1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = webrt("gen_config", str(hf_dir), "--quantization", "q4f32_1", "--conv-template", "chatml", "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = webrt(
        "compile", str(out / "mlc-chat-config.json"), "--device", "cpu",
        "--overrides", "context_window_size=128;prefill_chunk_size=16", "-o", str(tmp_path / "lib.so"),
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "lib.so").is_file()
    # TVM's own reader loads every tensor the library asks for, with the right shapes
    lib = tvm.runtime.load_module(str(tmp_path / "lib.so"))
    vm = tvm.relax.VirtualMachine(lib, tvm.cpu())
    meta = json.loads(vm["_metadata"]())
    assert meta["context_window_size"] == 128 and meta["prefill_chunk_size"] == 16
    assert meta["quantization"] == "q4f32_1" and meta["model_type"] == "llama"
    assert set(meta["memory_usage"]) >= {"prefill", "decode", "embed"}
    params, _ = tvmjs.load_tensor_cache(str(out), tvm.cpu())
    for p in meta["params"]:
        assert list(params[p["name"]].shape) == p["shape"] and str(params[p["name"]].dtype) == p["dtype"]
    # the legacy index name is written too, identical
    assert (out / "ndarray-cache.json").read_text() == (out / "tensor-cache.json").read_text()
    # nothing but the artifacts: no staging folders left beside the output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_shards_are_capped_and_checksummed(tmp_path: Path) -> None:
    rng = np.random.RandomState(0)
    arrays = {f"w{i}": rng.rand(100, 50).astype("float32") for i in range(7)}  # 20000 bytes each
    index = write_tensor_cache(tmp_path, ((k, v.shape, "float32", v) for k, v in arrays.items()), shard_cap_bytes=45000)
    assert [len(s.records) for s in index.shards] == [2, 2, 2, 1]
    for shard in index.shards:
        data = (tmp_path / shard.data_path).read_bytes()
        assert len(data) == shard.nbytes <= 45000
        assert hashlib.md5(data).hexdigest() == shard.md5sum
    loaded, meta = tvmjs.load_tensor_cache(str(tmp_path), tvm.cpu())
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k].numpy(), v)
    assert meta == {"ParamSize": 35000, "ParamBytes": 140000, "BitsPerParam": 32.0}
    assert sum(s.nbytes for s in TensorCacheIndex.loads((tmp_path / "tensor-cache.json").read_text()).shards) == 140000


def test_q4_bits_per_param_metadata(hf_dir: Path, tmp_path: Path) -> None:
    index = convert_weight(hf_dir, "q4f16_1", tmp_path / "m", show_progress=False)
    # 4-bit codes plus one f16 scale per 32 weights (norms stay f16): just over 4.5 bits
    assert 4.5 <= index.metadata["BitsPerParam"] < 4.8


# --- bad input ----------------------------------------------------------------------------------
def _assert_failed_cleanly(r: subprocess.CompletedProcess, out: Path, *words: str) -> None:
    assert r.returncode != 0
    message = r.stderr.lower()
    assert "error" in message and "traceback" not in message, r.stderr
    for w in words:
        assert w.lower() in message, r.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_unknown_quantization(hf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = webrt("convert_weight", str(hf_dir), "--quantization", "q3f99", "-o", str(out))
    _assert_failed_cleanly(r, out, "q3f99", "q4f16_1")


def test_unsupported_architecture(hf_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "gpt"
    shutil.copytree(hf_dir, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    _assert_failed_cleanly(webrt("convert_weight", str(src), "--quantization", "q0f32", "-o", str(out)), out, "GPTNeoXForCausalLM", "LlamaForCausalLM")
    _assert_failed_cleanly(
        webrt("gen_config", str(src), "--quantization", "q0f32", "--conv-template", "chatml", "-o", str(out)), out, "GPTNeoXForCausalLM"
    )


def test_missing_weight_file(hf_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "noweights"
    src.mkdir()
    shutil.copy(hf_dir / "config.json", src / "config.json")
    out = tmp_path / "out"
    _assert_failed_cleanly(webrt("convert_weight", str(src), "--quantization", "q0f32", "-o", str(out)), out, "safetensors")
    _assert_failed_cleanly(webrt("convert_weight", str(tmp_path / "nope"), "--quantization", "q0f32", "-o", str(out)), out, "does not exist")


def test_corrupt_weight_file(hf_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "corrupt"
    shutil.copytree(hf_dir, src)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out"
    _assert_failed_cleanly(webrt("convert_weight", str(src), "--quantization", "q4f16_1", "-o", str(out)), out, "model.safetensors")


def test_truncated_gguf(tmp_path: Path) -> None:
    gguf = tmp_path / "broken.gguf"
    with open(smollm2_gguf(), "rb") as f:
        gguf.write_bytes(f.read(5_000_000))
    out = tmp_path / "out"
    _assert_failed_cleanly(webrt("convert_weight", str(gguf), "--quantization", "q0f32", "-o", str(out)), out, "broken.gguf")


def test_failure_midway_leaves_previous_output_untouched(hf_dir: Path, tmp_path: Path) -> None:
    """A tensor missing from the checkpoint aborts before anything is written; an existing folder is kept as it was."""
    src = tmp_path / "partial"
    shutil.copytree(hf_dir, src)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(src / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(src / "model.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    r = webrt("convert_weight", str(src), "--quantization", "q0f32", "-o", str(out))
    assert r.returncode != 0 and "down_proj" in r.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_config_without_required_fields(hf_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "nohidden"
    shutil.copytree(hf_dir, src)
    cfg = json.loads((src / "config.json").read_text())
    del cfg["hidden_size"]
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    _assert_failed_cleanly(webrt("convert_weight", str(src), "--quantization", "q0f32", "-o", str(out)), out, "hidden_size")


def test_chat_config_without_required_fields(hf_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    assert webrt("gen_config", str(hf_dir), "--quantization", "q0f32", "--conv-template", "chatml", "-o", str(model)).returncode == 0
    cc = json.loads((model / "mlc-chat-config.json").read_text())
    del cc["model_config"]
    (model / "mlc-chat-config.json").write_text(json.dumps(cc))
    lib = tmp_path / "lib.so"
    _assert_failed_cleanly(webrt("compile", str(model / "mlc-chat-config.json"), "--device", "cpu", "-o", str(lib)), lib, "model_config")


def test_unknown_conv_template_and_bad_override(hf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _assert_failed_cleanly(
        webrt("gen_config", str(hf_dir), "--quantization", "q0f32", "--conv-template", "nope", "-o", str(out)), out, "nope", "chatml"
    )
    model = tmp_path / "model"
    assert webrt("gen_config", str(hf_dir), "--quantization", "q0f32", "--conv-template", "chatml", "-o", str(model)).returncode == 0
    lib = tmp_path / "lib.so"
    r = webrt("compile", str(model), "--device", "cpu", "--overrides", "context_window=12", "-o", str(lib))
    _assert_failed_cleanly(r, lib, "context_window=12", "context_window_size")


def test_every_source_layout_converts_to_the_same_weights(hf_dir: Path, tmp_path: Path) -> None:
    """safetensors (one file or sharded with an index) and PyTorch .bin give identical shards."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    reference = convert_weight(hf_dir, "q4f16_1", tmp_path / "ref", show_progress=False)
    for name in ("sharded", "bin"):
        src = tmp_path / f"src-{name}"
        if name == "sharded":
            model.save_pretrained(src, max_shard_size="50KB")
        else:  # transformers 5 writes only safetensors: write the PyTorch checkpoint directly
            src.mkdir()
            shutil.copy(hf_dir / "config.json", src / "config.json")
            torch.save(model.state_dict(), src / "pytorch_model.bin")
        files = sorted(p.name for p in src.iterdir())
        if name == "sharded":
            assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
        else:
            assert any(f.endswith(".bin") for f in files) and not any(f.endswith(".safetensors") for f in files)
        index = convert_weight(src, "q4f16_1", tmp_path / f"out-{name}", show_progress=False)
        assert [s.md5sum for s in index.shards] == [s.md5sum for s in reference.shards], name


def test_config_layouts_agree() -> None:
    """transformers-5 ``rope_parameters`` and the classic ``rope_theta`` + ``rope_scaling`` read alike."""
    from webrt.models.config import TransformerConfig

    base = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
    }
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    classic = TransformerConfig.from_hf({**base, "rope_theta": 500000.0, "rope_scaling": {**scaling, "rope_type": "llama3"}})
    new = TransformerConfig.from_hf({**base, "rope_parameters": {**scaling, "rope_type": "llama3", "rope_theta": 500000.0}})
    legacy_key = TransformerConfig.from_hf({**base, "rope_theta": 500000.0, "rope_scaling": {**scaling, "type": "llama3"}})
    assert classic == new == legacy_key
    assert classic.rope_theta == 500000.0 and classic.rope_scaling["rope_type"] == "llama3" and classic.head_dim == 128
    plain = TransformerConfig.from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})
    assert plain.rope_scaling is None and plain.rope_theta == 10000.0
