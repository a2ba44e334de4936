"""Every architecture, compiled for the CPU, against HF transformers on the same weights.

A random tiny model of each architecture goes through convert_weight -> gen_config -> compile;
the CPU library then prefills a prompt (in several chunks) and decodes 32 tokens greedily through
the paged KV cache. Each step's logits must match transformers' (run once over the whole
sequence) to 1e-4 relative, and the greedy tokens must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from model_factory import ARCHITECTURES, tiny_artifacts
from webrt.engine.model_runner import ModelRunner, WindowConfig
from webrt.native.backend import NativeBackend

DECODE_STEPS = 32
PROMPT_LEN = 21
CHUNK = 8  # the prompt is prefilled in 3 chunks


def runner_for(art) -> ModelRunner:
    cc = art.chat_config
    window = WindowConfig(cc["context_window_size"], cc["sliding_window_size"], cc["attention_sink_size"], CHUNK)
    return ModelRunner(NativeBackend(art.model_dir, art.libs["cpu"]), window)


def generate(runner: ModelRunner, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding; returns all tokens and the logits that chose each new one."""
    logits = [np.array(runner.logits_to_list(runner.prefill(prompt)))]
    tokens = list(prompt)
    for _ in range(steps):
        nxt = int(np.argmax(logits[-1]))
        tokens.append(nxt)
        logits.append(np.array(runner.logits_to_list(runner.decode(nxt))))
    return tokens, logits


def hf_logits(hf_dir, tokens: list[int]) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_matches_transformers(arch: str) -> None:
    art = tiny_artifacts(arch)
    runner = runner_for(art)
    prompt = [int(t) for t in np.random.RandomState(7).randint(3, art.chat_config["vocab_size"], PROMPT_LEN)]
    tokens, logits = generate(runner, prompt, DECODE_STEPS)
    if arch == "mistral":
        assert len(tokens) > art.chat_config["sliding_window_size"], "the test must run past the window"
    ref = hf_logits(art.hf_dir, tokens)
    for step, ours in enumerate(logits):
        theirs = ref[PROMPT_LEN - 1 + step]
        assert relative_error(ours, theirs) < 1e-4, f"{arch} step {step}"
        assert int(np.argmax(ours)) == int(np.argmax(theirs)), f"{arch} step {step}"
    # each step must see a different context (positions, cache), or matching would prove little
    assert min(np.abs(a - b).max() for a, b in zip(logits, logits[1:])) > 1e-3


def test_reset_and_rollback_reproduce_logits() -> None:
    art = tiny_artifacts("smollm2")
    runner = runner_for(art)
    prompt = [5, 17, 42, 99, 7, 3, 250, 11, 64]
    first = runner.logits_to_list(runner.prefill(prompt))
    after = runner.logits_to_list(runner.decode(12))
    runner.rollback(1)
    again = runner.logits_to_list(runner.decode(12))
    np.testing.assert_allclose(after, again, rtol=0, atol=1e-6)
    runner.reset()
    np.testing.assert_allclose(first, runner.logits_to_list(runner.prefill(prompt)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama2", "qwen2"])
def test_float16_build_matches_transformers_within_half_precision(arch: str) -> None:
    """q0f16 computes in float16 (activations, norms, KV cache): compared with transformers in
    float32 on the same float16-rounded weights, logits stay within 2e-2 relative and the top-1
    token agrees on at least 95% of the steps."""
    art = tiny_artifacts(arch, "q0f16")
    runner = runner_for(art)
    prompt = [int(t) for t in np.random.RandomState(5).randint(3, art.chat_config["vocab_size"], PROMPT_LEN)]
    tokens, logits = generate(runner, prompt, DECODE_STEPS)
    model = transformers.AutoModelForCausalLM.from_pretrained(art.hf_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
        ref = model(torch.tensor([tokens])).logits[0].numpy()
    agree = 0
    for step, ours in enumerate(logits):
        theirs = ref[PROMPT_LEN - 1 + step]
        assert relative_error(ours, theirs) < 2e-2, f"{arch} step {step}"
        agree += int(np.argmax(ours) == np.argmax(theirs))
    assert agree >= 0.95 * len(logits)
