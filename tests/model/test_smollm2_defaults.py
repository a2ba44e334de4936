"""The real SmolLM2-135M-Instruct (GGUF, q0f32, CPU library) with ``webrt gen_config``'s defaults:
its own chat template and the default sampling settings (temperature 0.7, top_p 0.95: the GGUF
carries no ``general.sampling.*``).

- The engine prefills exactly transformers' ``apply_chat_template(..., tokenize=True)`` ids for
  system / no-system / multi-turn conversations, and the second turn reuses the cache.
- Replies to everyday questions, sampled with fixed seeds at the default settings, read as
  language to the reference model (transformers on the same GGUF): the mean per-token
  log-likelihood of each reply given its prompt is above :data:`FLOOR`. The floor is shown to be
  meaningful: random tokens, and each reply's own tokens shuffled, score below it. The same seeds
  at the old defaults (temperature 1.0, top_p 1.0) score lower on average.
"""

from __future__ import annotations

import random

import pytest

from model_factory import smollm2_artifacts, smollm2_gguf
from engine_util import engine_for, run, smollm2_chat_ids, smollm2_reference, token_ids_from_logprobs, two_turns

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "How do I boil an egg?",
    "What is the difference between weather and climate?",
    "Write a short thank-you note to a friend who helped me move house.",
]
#: Mean log-likelihood per reply token (nats) that a reply must reach under the reference model.
FLOOR = -2.5
MAX_TOKENS = 64
CONVERSATIONS = {
    "no system": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}],
    "turns": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
              {"role": "user", "content": "Tell me a fun fact."}],
}


@pytest.fixture(scope="module")
def art():
    try:
        smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return smollm2_artifacts("q0f32")


def mean_loglik(prompt: list[int], reply: list[int]) -> float:
    """Mean log-probability (nats, temperature 1) of ``reply``'s tokens after ``prompt`` under the
    reference model."""
    import torch

    with torch.no_grad():
        logits = smollm2_reference()(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1: -1].double()
    logprobs = torch.log_softmax(logits, -1)[torch.arange(len(reply)), torch.tensor(reply)]
    return float(logprobs.mean())


def test_defaults_come_from_the_gguf_and_gen_config(art) -> None:
    config = art.chat_config
    assert (config["temperature"], config["top_p"], config["repetition_penalty"]) == (0.7, 0.95, 1.0)
    assert config["chat_template"].startswith("{% for message in messages %}")


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_engine_prefills_transformers_ids(art, name: str) -> None:
    messages = CONVERSATIONS[name]
    expected = smollm2_chat_ids(messages)

    async def main():
        engine = await engine_for(art)
        await engine.chat.completions.create(messages=messages, temperature=0, max_tokens=1)
        return engine.get_model().cached_tokens

    assert run(main())[: len(expected)] == expected


def test_second_turn_prefills_only_the_new_turn(art) -> None:
    first = [{"role": "user", "content": "What is the capital of France?"}]

    async def main():
        engine = await engine_for(art)
        return *await two_turns(engine, first, "And of Germany?", 24), engine.get_model().cached_tokens

    history, one, two, cached = run(main())
    expected = smollm2_chat_ids(history)
    assert cached[: len(expected)] == expected
    assert two.usage.prompt_tokens_details["cached_tokens"] >= one.usage.prompt_tokens
    assert two.usage.extra["prefill_tokens"] < len(expected) - one.usage.prompt_tokens  # the reply is reused too


def test_default_settings_answer_everyday_questions(art) -> None:
    async def main():
        engine = await engine_for(art)
        model = engine.get_model()
        rows, old_rows = [], []
        for seed, question in enumerate(QUESTIONS):
            messages = [{"role": "user", "content": question}]
            prompt = model.chat_prompt_tokens(messages)
            reply = await engine.chat.completions.create(messages=messages, seed=seed, max_tokens=MAX_TOKENS,
                                                         logprobs=True)  # default temperature / top_p
            tokens = token_ids_from_logprobs(engine, reply.choices[0].logprobs.content)
            rows.append((question, prompt, tokens, reply.choices[0].message.content))
            old = await engine.chat.completions.create(messages=messages, seed=seed, max_tokens=MAX_TOKENS,
                                                       logprobs=True, temperature=1.0, top_p=1.0)
            old_rows.append((prompt, token_ids_from_logprobs(engine, old.choices[0].logprobs.content)))
        return rows, old_rows, model.vocab_size

    rows, old_rows, vocab = run(main())
    assert rows[0][1] == smollm2_chat_ids([{"role": "user", "content": QUESTIONS[0]}])
    rng = random.Random(0)
    report = []
    for question, prompt, tokens, text in rows:
        assert len(tokens) >= 3, (question, text)
        score = mean_loglik(prompt, tokens)
        salad = mean_loglik(prompt, [rng.randrange(vocab) for _ in tokens])
        shuffled = mean_loglik(prompt, rng.sample(tokens, len(tokens)))
        report.append(f"{score:6.2f} (random {salad:6.2f}, shuffled {shuffled:6.2f}) {question!r} -> {text[:70]!r}")
        assert salad < FLOOR and shuffled < FLOOR, report[-1]  # the floor separates language from salad
        assert score > FLOOR, report[-1]
    scores = [mean_loglik(prompt, tokens) for _, prompt, tokens, _ in rows]
    old_scores = [mean_loglik(prompt, tokens) for prompt, tokens in old_rows if tokens]
    print("\nSmolLM2 q0f32, default sampling, mean log-likelihood per reply token under transformers:\n"
          + "\n".join(report) + f"\nmean {sum(scores) / len(scores):.2f}; at temperature 1.0, top_p 1.0: "
          + f"{sum(old_scores) / len(old_scores):.2f} ({', '.join(f'{x:.2f}' for x in old_scores)})")
    assert sum(scores) / len(scores) > sum(old_scores) / len(old_scores)
