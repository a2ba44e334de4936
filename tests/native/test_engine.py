"""The Engine on tiny random models (native CPU libraries), parameter by parameter.

Each test compares against an independent reference where one exists: HF transformers run on
the same tiny HF model (greedy continuations, logits for log-probabilities, penalties and logit
bias re-implemented in numpy on HF's logits), numpy nucleus sampling on HF's logits with the
same uniform draw, ``json.loads``, and the engine's own fresh-prefill / non-stream results for
cache reuse and streaming.
"""

from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pytest

from model_factory import tiny_artifacts
from engine_util import (
    engine_for,
    hf_greedy,
    hf_logits,
    hf_model,
    hf_tokenizer,
    log_softmax,
    record_for,
    run,
    token_ids_from_logprobs,
    two_turns,
    top_p_choice,
)
from webrt.conversation import conv_template_from_config
from webrt.engine import AppConfig, ChatOptions, Engine, ModelRecord, merge_chat_config
from webrt.errors import (
    ContextWindowSizeExceededError,
    EngineNotLoadedError,
    InvalidRequestError,
    ModelConfigError,
    ModelNotFoundError,
)

USER = [{"role": "user", "content": "hello world"}]
STOP_ID = 2  # <|im_end|> of the tiny tokenizer: the ChatML stop token and eos


@pytest.fixture(scope="module")
def smol():
    return tiny_artifacts("smollm2")


@pytest.fixture(scope="module")
def llama2():
    return tiny_artifacts("llama2")


def chat_prompt_ids(engine: Engine, messages) -> list[int]:
    return engine.get_model().chat_prompt_tokens(messages)


# --- greedy and the prompt ----------------------------------------------------------------------
def test_chat_prompt_tokens_match_hf_tokenizer(smol) -> None:
    async def main():
        engine = await engine_for(smol)
        conv = conv_template_from_config(smol.chat_config["conv_template"])
        conv.append_message("user", USER[0]["content"])
        conv.append_reply_header()
        expected = hf_tokenizer(smol.model_dir).encode(conv.as_prompt(), add_special_tokens=False).ids
        assert chat_prompt_ids(engine, USER) == expected

    run(main())


@pytest.mark.parametrize("arch", ["smollm2", "llama2", "qwen2"])
def test_greedy_chat_matches_transformers(arch: str) -> None:
    art = tiny_artifacts(arch)

    async def main():
        engine = await engine_for(art)
        reply = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=20)
        prompt = chat_prompt_ids(engine, USER)
        tokens, _ = hf_greedy(hf_model(str(art.hf_dir)), prompt, 20, {STOP_ID})
        choice = reply.choices[0]
        assert choice.message.content == hf_tokenizer(art.model_dir).decode(tokens, skip_special_tokens=False)
        assert choice.finish_reason == ("length" if len(tokens) == 20 else "stop")
        assert reply.usage.completion_tokens == len(tokens)
        assert reply.usage.prompt_tokens == len(prompt)

    run(main())


def test_greedy_completion_matches_transformers(llama2) -> None:
    # the raw completions endpoint, where this random model's greedy text is varied
    prompt_text = "def add(a, b):"

    async def main():
        engine = await engine_for(llama2)
        reply = await engine.completions.create(prompt=prompt_text, temperature=0, max_tokens=24)
        prompt = hf_tokenizer(llama2.model_dir).encode(prompt_text, add_special_tokens=False).ids
        tokens, _ = hf_greedy(hf_model(str(llama2.hf_dir)), prompt, 24, {STOP_ID})
        assert len(set(tokens)) > 8, "the reference continuation should not be degenerate"
        assert reply.object == "text_completion"
        assert reply.choices[0].text == hf_tokenizer(llama2.model_dir).decode(tokens, skip_special_tokens=False)

    run(main())


# --- sampling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.3, 0.9), (0.15, 0.5)])
def test_sampling_matches_numpy_nucleus_sampling(llama2, temperature: float, top_p: float) -> None:
    """The first sampled token equals numpy's top-p choice on HF's logits with the same uniform."""
    prompt_text = "The quick brown"

    async def main():
        engine = await engine_for(llama2)
        prompt = engine.get_model().completion_prompt_tokens(prompt_text)
        logits = hf_logits(hf_model(str(llama2.hf_dir)), prompt)
        compared, distinct, sensitive = 0, set(), 0
        for seed in range(60):
            uniform = random.Random(seed).random()  # the engine's first draw for this seed
            expected, margin = top_p_choice(logits, temperature, top_p, uniform)
            if margin < 1e-4:  # float32 vs float64 could flip this draw
                continue
            # draws where ignoring top_p or the temperature would pick another token
            sensitive += expected != top_p_choice(logits, 1.0, 1.0, uniform)[0]
            reply = await engine.completions.create(
                prompt=prompt_text, temperature=temperature, top_p=top_p, seed=seed, max_tokens=1, logprobs=True
            )
            [token] = token_ids_from_logprobs(engine, reply.choices[0].logprobs.content)
            assert token == expected, f"seed {seed}"
            compared += 1
            distinct.add(token)
        assert compared >= 50
        assert len(distinct) > 3  # real sampling, not greedy
        if (temperature, top_p) != (1.0, 1.0):
            assert sensitive > compared // 2

    run(main())


def test_seed_reproducible_and_distinct(llama2) -> None:
    async def main():
        engine = await engine_for(llama2)

        async def sample(seed):
            reply = await engine.completions.create(prompt="hello", temperature=1.0, seed=seed, max_tokens=24)
            return reply.choices[0].text

        first, again, other = await sample(7), await sample(7), await sample(8)
        assert first == again
        assert first != other

    run(main())


def test_n_choices(llama2) -> None:
    async def main():
        engine = await engine_for(llama2)
        reply = await engine.completions.create(prompt="hello", temperature=1.0, seed=3, n=3, max_tokens=16)
        texts = [c.text for c in reply.choices]
        assert [c.index for c in reply.choices] == [0, 1, 2]
        assert len(set(texts)) == 3
        single = await engine.completions.create(prompt="hello", temperature=1.0, seed=3, max_tokens=16)
        assert single.choices[0].text == texts[0]  # choice 0 consumed the seed's first draws
        chat = await engine.chat.completions.create(messages=USER, temperature=1.0, seed=3, n=2, max_tokens=8,
                                                    logprobs=True)
        assert len(chat.choices) == 2
        assert chat.usage.completion_tokens == sum(len(c.logprobs.content) for c in chat.choices)
        assert chat.usage.prompt_tokens == len(chat_prompt_ids(engine, USER))  # counted once

    run(main())


# --- logit processing -----------------------------------------------------------------------------
@pytest.mark.parametrize("presence,frequency,repetition", [(0.8, 0.0, 1.0), (0.0, 0.6, 1.0), (0.0, 0.0, 1.3),
                                                            (0.8, 0.6, 1.3), (-0.5, -0.4, 0.8)])
def test_penalties_match_numpy_reference(llama2, presence: float, frequency: float, repetition: float) -> None:
    prompt_text = "hello world"

    async def main():
        engine = await engine_for(llama2)
        prompt = engine.get_model().completion_prompt_tokens(prompt_text)
        model = hf_model(str(llama2.hf_dir))
        expected, ref_logits = hf_greedy(model, prompt, 16, {STOP_ID}, penalties=(presence, frequency, repetition))
        plain, _ = hf_greedy(model, prompt, 16, {STOP_ID})
        assert expected != plain, "the penalties must change this continuation"
        reply = await engine.completions.create(
            prompt=prompt_text, temperature=0, max_tokens=16, presence_penalty=presence,
            frequency_penalty=frequency, repetition_penalty=repetition, logprobs=True,
        )
        content = reply.choices[0].logprobs.content
        assert token_ids_from_logprobs(engine, content) == expected
        for entry, logits, token in zip(content, ref_logits, expected):
            assert entry.logprob == pytest.approx(log_softmax(logits)[token], abs=2e-3)

    run(main())


def test_penalty_defaults_come_from_chat_opts(llama2) -> None:
    async def main():
        engine = await engine_for(llama2, {"frequency_penalty": 1.5, "temperature": 0})
        prompt = engine.get_model().completion_prompt_tokens("hello world")
        expected, _ = hf_greedy(hf_model(str(llama2.hf_dir)), prompt, 12, {STOP_ID}, penalties=(0.0, 1.5, 1.0))
        reply = await engine.completions.create(prompt="hello world", max_tokens=12, logprobs=True)
        assert token_ids_from_logprobs(engine, reply.choices[0].logprobs.content) == expected
        # a request field overrides the chat option
        off = await engine.completions.create(prompt="hello world", max_tokens=12, frequency_penalty=0.0)
        plain, _ = hf_greedy(hf_model(str(llama2.hf_dir)), prompt, 12, {STOP_ID})
        assert off.choices[0].text == hf_tokenizer(llama2.model_dir).decode(plain, skip_special_tokens=False)

    run(main())


def test_logit_bias_forces_and_bans_tokens(llama2) -> None:
    async def main():
        engine = await engine_for(llama2)
        forced = 77
        reply = await engine.completions.create(
            prompt="hello", temperature=1.0, seed=1, max_tokens=6, logit_bias={str(forced): 100}, logprobs=True
        )
        assert token_ids_from_logprobs(engine, reply.choices[0].logprobs.content) == [forced] * 6
        prompt = engine.get_model().completion_prompt_tokens("hello")
        greedy, _ = hf_greedy(hf_model(str(llama2.hf_dir)), prompt, 1)
        banned = {str(greedy[0]): -100}
        expected, _ = hf_greedy(hf_model(str(llama2.hf_dir)), prompt, 6, {STOP_ID}, bias={greedy[0]: -100})
        reply = await engine.completions.create(prompt="hello", temperature=0, max_tokens=6, logit_bias=banned,
                                                logprobs=True)
        ids = token_ids_from_logprobs(engine, reply.choices[0].logprobs.content)
        assert ids == expected and greedy[0] not in ids

    run(main())


def test_logprobs_match_hf_log_softmax(smol) -> None:
    async def main():
        engine = await engine_for(smol)
        reply = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=6, logprobs=True,
                                                     top_logprobs=5)
        content = reply.choices[0].logprobs.content
        prompt = chat_prompt_ids(engine, USER)
        tokens, logits = hf_greedy(hf_model(str(smol.hf_dir)), prompt, 6, {STOP_ID})
        assert token_ids_from_logprobs(engine, content) == tokens
        for entry, step_logits, token in zip(content, logits, tokens):
            reference = log_softmax(step_logits)
            assert entry.logprob == pytest.approx(reference[token], abs=1e-3)
            top = token_ids_from_logprobs(engine, entry.top_logprobs)
            assert top == list(np.argsort(-reference, kind="stable")[:5])
            for item, token_id in zip(entry.top_logprobs, top):
                assert item.logprob == pytest.approx(reference[token_id], abs=1e-3)
            assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        plain = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=2)
        assert plain.choices[0].logprobs is None

    run(main())


# --- stopping -----------------------------------------------------------------------------------
def test_stop_string_across_tokens_is_cut_in_stream_and_not(llama2) -> None:
    async def main():
        engine = await engine_for(llama2)
        full = await engine.completions.create(prompt="def add(a, b):", temperature=0, max_tokens=24, logprobs=True)
        texts = [e.token for e in full.choices[0].logprobs.content]
        text = full.choices[0].text
        # a stop string made of the end of token 4 and the start of token 5
        boundary = len("".join(texts[:5]))
        assert texts[4] and texts[5]
        stop = text[boundary - 1 : boundary + 1]
        cut = text[: text.find(stop)]
        reply = await engine.completions.create(prompt="def add(a, b):", temperature=0, max_tokens=24, stop=[stop])
        assert reply.choices[0].text == cut and reply.choices[0].finish_reason == "stop"
        stream = await engine.completions.create(prompt="def add(a, b):", temperature=0, max_tokens=24,
                                                 stop=stop, stream=True)
        pieces = [c.choices[0].text async for c in stream if c.choices]
        assert "".join(pieces) == cut  # nothing of the stop string leaked, even partially

    run(main())


def test_max_tokens_gives_length(smol) -> None:
    async def main():
        engine = await engine_for(smol)
        reply = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=5)
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 5
        longer = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=9)
        assert longer.usage.completion_tokens == 9

    run(main())


def test_stop_token_ends_generation(smol) -> None:
    async def main():
        engine = await engine_for(smol)
        # make the stop token the likeliest after three tokens: bias it up from the start
        reply = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=10,
                                                     logit_bias={str(STOP_ID): 100})
        assert reply.choices[0].finish_reason == "stop"
        assert reply.choices[0].message.content == "" and reply.usage.completion_tokens == 0
        ignored = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=4,
                                                       logit_bias={str(STOP_ID): 100}, ignore_eos=True)
        assert ignored.choices[0].finish_reason == "length"
        assert ignored.choices[0].message.content == "<|im_end|>" * 4

    run(main())


# --- streaming ----------------------------------------------------------------------------------
def test_stream_chunks_concatenate_to_the_non_stream_reply(llama2) -> None:
    async def main():
        engine = await engine_for(llama2)
        request = dict(messages=USER, temperature=0.9, seed=5, max_tokens=20)
        reply = await engine.chat.completions.create(**request)
        stream = await engine.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        assert chunks[0].choices[0].delta["role"] == "assistant"
        body, final, usage = chunks[:-2], chunks[-2], chunks[-1]
        assert "".join(c.choices[0].delta.get("content", "") for c in body) == reply.choices[0].message.content
        assert all(c.choices[0].finish_reason is None and c.usage is None for c in body)
        assert final.choices[0].finish_reason == reply.choices[0].finish_reason and final.choices[0].delta == {}
        assert usage.choices == [] and usage.usage["completion_tokens"] == reply.usage.completion_tokens
        assert usage.usage["prompt_tokens"] == reply.usage.prompt_tokens
        assert usage.usage["total_tokens"] == reply.usage.total_tokens
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "time_to_first_token_s", "e2e_latency_s"):
            assert usage.usage["extra"][key] > 0
        plain = await engine.chat.completions.create(**request, stream=True)
        assert all("usage" not in c for c in [c async for c in plain])

    run(main())


def test_completion_stream_with_logprobs(llama2) -> None:
    async def main():
        engine = await engine_for(llama2)
        reply = await engine.completions.create(prompt="hello", temperature=0, max_tokens=8, logprobs=True)
        stream = await engine.completions.create(prompt="hello", temperature=0, max_tokens=8, logprobs=True,
                                                 stream=True)
        chunks = [c async for c in stream]
        entries = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        assert [e.token for e in entries] == [e.token for e in reply.choices[0].logprobs.content]
        assert "".join(c.choices[0].text for c in chunks) == reply.choices[0].text

    run(main())


# --- the KV cache -------------------------------------------------------------------------------
def test_multi_round_reuses_the_cache_and_matches_fresh_prefill(smol) -> None:
    async def main():
        engine = await engine_for(smol)
        history, first, second = await two_turns(engine, USER, "The quick brown fox", 12)
        extra = second.usage.extra
        assert extra["prefill_tokens"] < second.usage.prompt_tokens
        assert second.usage.prompt_tokens_details["cached_tokens"] == second.usage.prompt_tokens - extra["prefill_tokens"]
        # at least the whole first prompt came from the cache
        assert second.usage.prompt_tokens_details["cached_tokens"] >= first.usage.prompt_tokens
        fresh = await engine_for(smol)
        reference = await fresh.chat.completions.create(messages=history, temperature=0, max_tokens=12)
        assert reference.usage.extra["prefill_tokens"] == reference.usage.prompt_tokens
        assert second.choices[0].message.content == reference.choices[0].message.content
        # and a conversation that does not extend the cache starts over (correctly)
        other = await engine.chat.completions.create(messages=[{"role": "user", "content": "def"}], temperature=0,
                                                     max_tokens=6)
        alone = await (await engine_for(smol)).chat.completions.create(
            messages=[{"role": "user", "content": "def"}], temperature=0, max_tokens=6)
        assert other.choices[0].message.content == alone.choices[0].message.content

    run(main())


def test_prefill_in_chunks_matches_one_chunk(smol) -> None:
    async def main():
        long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 3)
        messages = [{"role": "user", "content": long_text}]
        chunked = await engine_for(smol, {"prefill_chunk_size": 16})
        assert chunked.get_model().runner.chunk == 16
        whole = await engine_for(smol)
        a = await chunked.chat.completions.create(messages=messages, temperature=0, max_tokens=8, logprobs=True)
        b = await whole.chat.completions.create(messages=messages, temperature=0, max_tokens=8, logprobs=True)
        assert a.usage.prompt_tokens > 64
        assert a.choices[0].message.content == b.choices[0].message.content
        for x, y in zip(a.choices[0].logprobs.content, b.choices[0].logprobs.content):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)

    run(main())


def test_reset_chat_forgets_the_cache(smol) -> None:
    async def main():
        engine = await engine_for(smol)
        await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=4)
        again = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=4)
        assert again.usage.extra["prefill_tokens"] == 1  # everything but the last prompt token cached
        await engine.reset_chat()
        after = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=4)
        assert after.usage.extra["prefill_tokens"] == after.usage.prompt_tokens
        assert after.choices[0].message.content == again.choices[0].message.content

    run(main())


def test_context_window_overflow_raises_before_compute(smol) -> None:
    async def main():
        engine = await engine_for(smol, {"context_window_size": 128})
        await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=2)
        model = engine.get_model()
        held, total = list(model.cached_tokens), model.runner.total_tokens
        too_long = [{"role": "user", "content": "hello world " * 100}]
        with pytest.raises(ContextWindowSizeExceededError, match="context window"):
            await engine.chat.completions.create(messages=too_long, max_tokens=2)
        with pytest.raises(ContextWindowSizeExceededError):
            await engine.chat.completions.create(messages=too_long, max_tokens=2, stream=True)
        assert model.cached_tokens == held and model.runner.total_tokens == total  # untouched
        # a reply that fills the window stops with "length"
        reply = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=500, ignore_eos=True)
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.prompt_tokens + reply.usage.completion_tokens == 128 + 1  # the last one is not fed

    run(main())


def test_sliding_window_generates_past_the_window() -> None:
    art = tiny_artifacts("mistral")
    window = art.chat_config["sliding_window_size"]

    async def main():
        engine = await engine_for(art)
        prompt_text = "Paris is the capital of France. Berlin is the capital of Germany. " * 2
        prompt = engine.get_model().completion_prompt_tokens(prompt_text)
        assert len(prompt) > window  # the prompt alone slides the window
        reply = await engine.completions.create(prompt=prompt_text, temperature=0, max_tokens=40, ignore_eos=True,
                                                logprobs=True)
        assert len(prompt) + 40 > 2 * window
        tokens, logits = hf_greedy(hf_model(str(art.hf_dir)), prompt, 40)
        assert token_ids_from_logprobs(engine, reply.choices[0].logprobs.content) == tokens
        for entry, step_logits, token in zip(reply.choices[0].logprobs.content, logits, tokens):
            assert entry.logprob == pytest.approx(log_softmax(step_logits)[token], abs=2e-3)
        # a second request rolls back a cache that slid: it restarts and stays right
        again = await engine.completions.create(prompt=prompt_text, temperature=0, max_tokens=40, ignore_eos=True)
        assert again.choices[0].text == reply.choices[0].text

    run(main())


# --- JSON mode ----------------------------------------------------------------------------------
def test_json_mode_output_parses_even_from_a_random_model(smol) -> None:
    async def main():
        engine = await engine_for(smol, {"context_window_size": 2048})
        parsed = 0
        for seed in range(6):
            request = dict(messages=[{"role": "user", "content": "Reply in JSON."}], seed=seed, temperature=1.0,
                           top_p=1.0)  # the full distribution (gen_config's default top_p is 0.95)
            reply = await engine.chat.completions.create(**request, max_tokens=1500,
                                                         response_format={"type": "json_object"})
            choice = reply.choices[0]
            assert choice.finish_reason == "stop", choice.message.content
            assert isinstance(json.loads(choice.message.content), dict)
            assert "grammar_per_token_s" in reply.usage.extra
            parsed += 1
            free = await engine.chat.completions.create(**request, max_tokens=30)
            with pytest.raises(ValueError):
                json.loads(free.choices[0].message.content)  # without the mask: not JSON
        greedy = await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=1000,
                                                      response_format={"type": "json_object"})
        assert isinstance(json.loads(greedy.choices[0].message.content), dict)
        stream = await engine.chat.completions.create(messages=USER, seed=9, max_tokens=1500, stream=True,
                                                      temperature=1.0, top_p=1.0,
                                                      response_format={"type": "json_object"})
        text = "".join([c.choices[0].delta.get("content", "") async for c in stream])
        assert isinstance(json.loads(text), dict)
        assert parsed == 6

    run(main())


# --- interrupt and the event loop ---------------------------------------------------------------
def test_interrupt_stops_a_stream(llama2) -> None:
    async def main():
        engine = await engine_for(llama2)
        stream = await engine.completions.create(prompt="hello", max_tokens=200, ignore_eos=True, stream=True,
                                                 logprobs=True)
        tokens, finish = 0, None
        async for chunk in stream:
            choice = chunk.choices[0]
            tokens += len(choice.logprobs.content) if choice.logprobs else 0
            if tokens == 5:
                await engine.interrupt_generate()
            finish = choice.finish_reason or finish
        assert finish == "abort" and tokens == 5  # no token after the interrupt

    run(main())


def test_interrupt_from_another_task_and_loop_stays_responsive(llama2) -> None:
    async def main():
        engine = await engine_for(llama2)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async def interrupter():
            while ticks < 30:
                await asyncio.sleep(0)
            await engine.interrupt_generate()

        background = asyncio.create_task(ticker())
        stopper = asyncio.create_task(interrupter())
        reply = await engine.completions.create(prompt="hello", max_tokens=2000, ignore_eos=True)
        await stopper
        background.cancel()
        assert reply.choices[0].finish_reason == "abort"
        assert 20 < reply.usage.completion_tokens < 100
        # the next request is not affected by the old interrupt
        after = await engine.completions.create(prompt="hello", max_tokens=10, ignore_eos=True)
        assert after.choices[0].finish_reason == "length"

    run(main())


# --- configuration --------------------------------------------------------------------------------
def test_chat_config_merge_order() -> None:
    base = {"vocab_size": 10, "context_window_size": 64, "sliding_window_size": -1, "temperature": 0.6,
            "top_p": 0.9, "conv_template": "chatml", "repetition_penalty": 1.1}
    merged = merge_chat_config(base, {"temperature": 0.3, "conv_config": {"system_message": "A"}},
                               ChatOptions(temperature=0.2, top_p=0.5))
    assert (merged.temperature, merged.top_p, merged.repetition_penalty) == (0.2, 0.5, 1.1)
    assert merged.conv_template.system_message == "A"
    with pytest.raises(ModelConfigError, match="unknown field"):
        merge_chat_config(base, {"temprature": 1})
    with pytest.raises(ModelConfigError, match="exactly one"):
        merge_chat_config(base, {"sliding_window_size": 32})
    swapped = merge_chat_config(base, {"sliding_window_size": 32, "context_window_size": -1})
    assert swapped.window.uses_sliding_window


def test_model_record_aliases_and_app_config() -> None:
    record = ModelRecord.from_dict({"model_url": "u", "local_id": "m", "model_lib_url": "l.wasm",
                                    "overrides": {"temperature": 0.1}, "vram_required_MB": 10})
    assert (record.model, record.model_id, record.model_lib, record.overrides.temperature) == ("u", "m", "l.wasm", 0.1)
    config = AppConfig.from_dict({"model_list": [{"model": "u", "model_id": "m", "model_lib": "l"}],
                                  "useIndexedDBCache": True})
    assert config.cache_backend == "indexeddb" and config.find("m").model == "u"
    assert AppConfig.from_dict({"model_list": []}).cache_backend == "cache"
    with pytest.raises(ModelNotFoundError, match="not in the AppConfig"):
        config.find("x")
    with pytest.raises(ModelConfigError):
        AppConfig(cache_backend="opfs")


def test_defaults_layering_in_the_engine(llama2) -> None:
    """mlc-chat-config (temperature 0.7) < record overrides < chat_opts < request fields."""

    async def main():
        greedy = (await (await engine_for(llama2)).completions.create(prompt="hello", temperature=0, max_tokens=12))
        greedy_text = greedy.choices[0].text
        record = record_for(llama2, overrides=ChatOptions(temperature=0.0))
        engine = Engine(AppConfig([record]))
        await engine.reload("tiny")
        assert (await engine.completions.create(prompt="hello", seed=1, max_tokens=12)).choices[0].text == greedy_text
        await engine.reload("tiny", {"temperature": 1.0})  # chat_opts beat the record
        sampled = (await engine.completions.create(prompt="hello", seed=1, max_tokens=12)).choices[0].text
        assert sampled != greedy_text
        request_wins = await engine.completions.create(prompt="hello", seed=1, max_tokens=12, temperature=0)
        assert request_wins.choices[0].text == greedy_text
        # conv_config reaches the prompt
        await engine.reload("tiny", {"conv_config": {"system_message": "Be brief."}})
        assert "Be brief." in engine.get_model().tokenizer.decode(chat_prompt_ids(engine, USER))

    run(main())


def test_several_models_and_request_model_field(smol, llama2) -> None:
    async def main():
        engine = Engine(AppConfig([record_for(smol, "a"), record_for(llama2, "b")]))
        await engine.reload(["a", "b"])
        assert engine.loaded_model_ids == ["a", "b"]
        reply = await engine.completions.create(prompt="hello", temperature=0, max_tokens=8, model="b")
        alone = await (await engine_for(llama2, model_id="b")).completions.create(prompt="hello", temperature=0,
                                                                               max_tokens=8)
        assert reply.model == "b" and reply.choices[0].text == alone.choices[0].text
        with pytest.raises(InvalidRequestError, match="several models"):
            await engine.completions.create(prompt="hello", max_tokens=2)
        with pytest.raises(InvalidRequestError, match="not loaded"):
            await engine.completions.create(prompt="hello", max_tokens=2, model="c")
        await engine.reload(["a", "b"], [{"temperature": 0}, None])
        with pytest.raises(ModelConfigError, match="one per id"):
            await engine.reload(["a", "b"], [None])

    run(main())


def test_bad_requests_raise_typed_errors(smol) -> None:
    async def main():
        engine = Engine(AppConfig([record_for(smol)]))
        with pytest.raises(EngineNotLoadedError, match="reload"):
            await engine.chat.completions.create(messages=USER)
        with pytest.raises(ModelNotFoundError):
            await engine.reload("nope")
        await engine.reload("tiny")
        bad = [
            (dict(top_p=0), "top_p"), (dict(temperature=-1), "temperature"), (dict(max_tokens=0), "max_tokens"),
            (dict(frequency_penalty=3), "frequency_penalty"), (dict(repetition_penalty=0), "repetition_penalty"),
            (dict(logit_bias={"x": 1}), "logit_bias"), (dict(logit_bias={"1": 200}), "logit_bias"),
            (dict(logit_bias={"99999": 1}), "vocabulary"), (dict(top_logprobs=2), "logprobs"),
            (dict(logprobs=True, top_logprobs=21), "top_logprobs"), (dict(stream=True, n=2), "'n'"),
            (dict(stream_options={"include_usage": True}), "stream_options"), (dict(tools=[{}]), "'tools' must be"),
            (dict(tool_choice="auto"), "function calling"),
            (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "no chat_template"),
            (dict(chat_template_kwargs={"enable_thinking": False}), "no chat_template"),
            (dict(chat_template_kwargs={"messages": []}), "may not set"),
            (dict(response_format={"type": "json_schema"}), "response_format"), (dict(temprature=1), "unknown"),
            (dict(stop=[1]), "stop"), (dict(n=0), "'n'"), (dict(seed="1"), "seed"),
        ]
        for fields, needle in bad:
            with pytest.raises(InvalidRequestError, match=needle):
                await engine.chat.completions.create(messages=USER, **fields)
        with pytest.raises(InvalidRequestError, match="last message"):
            await engine.chat.completions.create(messages=[*USER, {"role": "assistant", "content": "x"}])
        with pytest.raises(InvalidRequestError, match="messages"):
            await engine.chat.completions.create(messages=[])
        with pytest.raises(InvalidRequestError, match="prompt"):
            await engine.completions.create(prompt=["a", "b"])
        with pytest.raises(InvalidRequestError, match="echo"):
            await engine.completions.create(prompt="a", echo=True)

    run(main())


def test_runtime_stats_text_and_unload(smol) -> None:
    async def main():
        engine = await engine_for(smol)
        await engine.chat.completions.create(messages=USER, temperature=0, max_tokens=8)
        text = await engine.runtime_stats_text()
        prefill, decode = [float(part.split(":")[1].split()[0]) for part in text.split(",")]
        assert prefill > 0 and decode > 0
        await engine.unload()
        with pytest.raises(EngineNotLoadedError):
            await engine.runtime_stats_text()

    run(main())


def test_progress_callback_reports_loading(smol) -> None:
    reports = []

    async def main():
        engine = Engine(AppConfig([record_for(smol)]), init_progress_callback=reports.append)
        await engine.reload("tiny")

    run(main())
    assert reports[0].progress == 0.0 and reports[-1].progress == 1.0
    assert all(r.time_elapsed >= 0 and r.text for r in reports)
