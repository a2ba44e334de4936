"""Abandoned streams, interrupts and cancellation leave the engine usable and its KV cache
consistent: the next reply equals the reply of a fresh cache (tiny llama2, CPU library).

Interrupts are injected inside the model call: the runner's compiled ``prefill``/``decode``
functions are wrapped to raise KeyboardInterrupt, cancel the task or interrupt the generation
on their k-th call.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from model_factory import tiny_artifacts
from engine_util import engine_for, run
from webrt import ChatModule
from webrt.engine import Engine
from webrt.engine.protocol import MAX_N
from webrt.errors import InvalidRequestError

GREEDY = {"temperature": 0, "max_tokens": 12}
LONG = {"temperature": 0, "max_tokens": 40, "ignore_eos": True}
FIRST = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def art():
    return tiny_artifacts("llama2")


def wrap_model_calls(engine: Engine, on_call: Callable[[int, str], None], after: bool = False) -> Callable[[], None]:
    """Call ``on_call(k, name)`` at the k-th model call (before it, or with ``after`` once it
    returned); returns a function that unwraps."""
    runner = engine.get_model().runner
    calls = [0]
    originals = {name: getattr(runner, name) for name in ("_decode", "_prefill") if getattr(runner, name)}

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            calls[0] += 1
            if not after:
                on_call(calls[0], name)
            out = real(*args)
            if after:
                on_call(calls[0], name)
            return out
        return wrapped

    for name, real in originals.items():
        setattr(runner, name, wrap(name, real))

    def unwrap() -> None:
        for name, real in originals.items():
            setattr(runner, name, real)
    return unwrap


class Reference:
    """Replies of a fresh cache: a separate engine, reset before each request."""

    def __init__(self, art: Any):
        self.engine = run(engine_for(art))

    async def areply(self, messages: list[dict[str, str]]) -> str:
        await self.engine.reset_chat()
        out = await self.engine.chat.completions.create(messages=messages, **GREEDY)
        return out.choices[0].message.content

    def reply(self, messages: list[dict[str, str]]) -> str:
        return run(self.areply(messages))


# --- 3a: an abandoned stream ---------------------------------------------------------------------
def test_abandoned_stream_does_not_block_the_next_request(art) -> None:
    reference = Reference(art)
    question = [{"role": "user", "content": "The quick brown fox"}]

    async def main():
        engine = await engine_for(art)
        whole = [c.choices[0].delta.get("content", "") async for c in
                 await engine.chat.completions.create(messages=FIRST, stream=True, **LONG)]
        stream = await engine.chat.completions.create(messages=FIRST, stream=True, **LONG)
        pieces = []
        async for chunk in stream:  # break out, keeping the reference
            pieces.append(chunk.choices[0].delta.get("content", ""))
            if len(pieces) == 5:
                break
        reply = await asyncio.wait_for(engine.chat.completions.create(messages=question, **GREEDY), 10)
        assert reply.choices[0].message.content == await reference.areply(question)
        # the abandoned stream, iterated again, re-prefills its tokens and goes on as if alone
        pieces += [c.choices[0].delta.get("content", "") async for c in stream]
        assert "".join(pieces) == "".join(whole)
        # and a stream dropped mid-way is closed: a later request is not blocked either
        stream = await engine.chat.completions.create(messages=FIRST, stream=True, **LONG)
        await stream.__anext__()
        await stream.aclose()
        await asyncio.wait_for(engine.reset_chat(), 10)

    run(main())


def test_unload_with_a_suspended_stream_returns_and_the_stream_ends_with_abort(art) -> None:
    async def main():
        engine = await engine_for(art)
        stream = await engine.chat.completions.create(messages=FIRST, stream=True, **LONG)
        await stream.__anext__()
        await asyncio.wait_for(engine.unload(), 10)  # waited for the stream forever before
        rest = [chunk async for chunk in stream]
        assert rest[-1].choices[0].finish_reason == "abort"

    run(main())


def test_two_streams_consumed_concurrently_both_match_their_solo_output(art) -> None:
    async def main():
        engine = await engine_for(art)

        async def collect(messages: list[dict[str, str]], pause: bool) -> str:
            text = ""
            async for chunk in await engine.chat.completions.create(messages=messages, stream=True, **LONG):
                text += chunk.choices[0].delta.get("content", "")
                if pause:
                    await asyncio.sleep(0)  # the consumer awaits between chunks: the other one may run
            return text

        other = [{"role": "user", "content": "def add(a, b):"}]
        solo = [await collect(FIRST, False), await collect(other, False)]
        assert await asyncio.gather(collect(FIRST, True), collect(other, True)) == solo

    run(main())


# --- 3b: a progress_callback that raises -----------------------------------------------------------
def test_generate_after_a_raising_progress_callback_returns(art) -> None:
    cm = ChatModule(model=art.model_dir, model_lib=art.libs["cpu"])
    try:
        def explode(piece: str) -> None:
            raise ValueError("callback failed")

        with pytest.raises(ValueError, match="callback failed") as caught:
            cm.generate("hello world", GREEDY, explode)
        assert cm.messages == []
        result: list[str] = []  # the traceback (kept in `caught`) references the stream
        worker = threading.Thread(target=lambda: result.append(cm.generate("hello world", GREEDY)), daemon=True)
        worker.start()
        worker.join(20)
        assert result == [Reference(art).reply(FIRST)], "generate() hung after the callback raised"
        del caught
    finally:
        cm.close()


# --- 3c: n is bounded and long requests yield ------------------------------------------------------
def test_n_is_bounded_and_a_request_of_one_token_choices_cancels_within_a_step(art) -> None:
    async def main():
        engine = await engine_for(art)
        with pytest.raises(InvalidRequestError, match=rf"'n' must be in \[1, {MAX_N}\]"):
            await engine.completions.create(prompt="hi", n=MAX_N + 1, max_tokens=1)
        task: asyncio.Task | None = None
        calls_after_cancel = []

        def on_call(k: int, name: str) -> None:
            if k == 10:
                task.cancel()
            elif k > 10:
                calls_after_cancel.append(k)

        unwrap = wrap_model_calls(engine, on_call)
        task = asyncio.create_task(engine.completions.create(prompt="hi", n=MAX_N, max_tokens=1))
        with pytest.raises(asyncio.CancelledError):
            await task
        unwrap()
        assert calls_after_cancel == []  # before: every remaining choice ran (118 more calls)
        after = await engine.completions.create(prompt="hi", max_tokens=3)
        assert after.choices[0].finish_reason == "length"

    run(main())


# --- 4: interrupts keep the cache consistent -------------------------------------------------------
@pytest.mark.parametrize("after", [False, True], ids=["inside-the-call", "after-the-call"])
def test_ctrl_c_inside_chat_module_generate_keeps_cache_and_history_consistent(art, after: bool) -> None:
    reference = Reference(art)
    cm = ChatModule(model=art.model_dir, model_lib=art.libs["cpu"])
    try:
        first = cm.generate("hello world", GREEDY)
        history = list(cm.messages)
        for k in range(1, 13):
            def on_call(call: int, name: str, k: int = k) -> None:
                if call == k:
                    raise KeyboardInterrupt

            unwrap = wrap_model_calls(cm.engine, on_call, after=after)
            try:
                cm.generate("def add(a, b):", LONG)
                raise AssertionError(f"no interrupt at call {k}")
            except KeyboardInterrupt:
                pass
            finally:
                unwrap()
            assert cm.messages == history  # the interrupted turn is not kept
            question = "The quick brown fox"
            got = cm.generate(question, GREEDY)
            assert got == reference.reply([*history, {"role": "user", "content": question}]), f"interrupt at call {k}"
            cm.messages = list(history)
        assert first == reference.reply(FIRST)
    finally:
        cm.close()


def test_real_sigint_during_a_reply_keeps_chat_module_consistent(art) -> None:
    """SIGINT from the OS: Python raises KeyboardInterrupt wherever it next checks signals (in
    the engine, in asyncio's own code between task steps, ...)."""
    reference = Reference(art)
    cm = ChatModule(model=art.model_dir, model_lib=art.libs["cpu"])
    try:
        cm.generate("hello world", GREEDY)
        history = list(cm.messages)
        for k in (1, 2, 3, 5, 8, 13, 21):
            def on_call(call: int, name: str, k: int = k) -> None:
                if call == k:
                    os.kill(os.getpid(), signal.SIGINT)

            unwrap = wrap_model_calls(cm.engine, on_call, after=True)
            try:
                cm.generate("def add(a, b):", LONG, progress_callback=lambda piece: None)
                raise AssertionError(f"no interrupt at call {k}")
            except KeyboardInterrupt:
                pass
            finally:
                unwrap()
            assert cm.messages == history
            question = "The quick brown fox"
            assert cm.generate(question, GREEDY) == reference.reply([*history, {"role": "user", "content": question}])
            cm.messages = list(history)
    finally:
        cm.close()


@pytest.mark.parametrize("how", ["cancel-task", "interrupt_generate", "raise-cancelled"])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_cancel_and_interrupt_keep_the_cache_consistent(art, how: str, stream: bool) -> None:
    reference = Reference(art)

    async def main():
        engine = await engine_for(art)
        first = (await engine.chat.completions.create(messages=FIRST, **GREEDY)).choices[0].message.content
        history = [*FIRST, {"role": "assistant", "content": first}, {"role": "user", "content": "def add(a, b):"}]
        for k in (1, 2, 6):
            task: asyncio.Task | None = None

            def on_call(call: int, name: str, k: int = k) -> None:
                if call != k:
                    return
                if how == "cancel-task":
                    task.cancel()
                elif how == "interrupt_generate":
                    asyncio.ensure_future(engine.interrupt_generate())
                else:
                    raise asyncio.CancelledError

            async def request() -> str:
                if not stream:
                    out = await engine.chat.completions.create(messages=history, **LONG)
                    return out.choices[0].message.content
                text = ""
                async for chunk in await engine.chat.completions.create(messages=history, stream=True, **LONG):
                    text += chunk.choices[0].delta.get("content", "")
                return text

            unwrap = wrap_model_calls(engine, on_call)
            task = asyncio.create_task(request())
            try:
                partial = await task
            except asyncio.CancelledError:
                partial = None
            finally:
                unwrap()
            turns = history if partial is None else [*history, {"role": "assistant", "content": partial}]
            question = [*turns, {"role": "user", "content": "The quick brown fox"}]
            got = (await engine.chat.completions.create(messages=question, **GREEDY)).choices[0].message.content
            assert got == await reference.areply(question), f"{how} at call {k}"

    run(main())


# --- a long prefill stops between its chunks -------------------------------------------------------
CHUNK = 4
LONG_PROMPT = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog, " * 4}]


@pytest.mark.parametrize("how", ["cancel-task", "interrupt_generate"])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_long_prefill_stops_between_chunks_and_keeps_the_cache_consistent(art, how: str, stream: bool) -> None:
    """A prompt of many ``prefill_chunk_size`` chunks: an interrupt during its third chunk stops
    it before the fourth (before: every chunk ran), and the next reply equals a fresh cache's."""
    reference = Reference(art)

    async def main():
        engine = await engine_for(art, {"prefill_chunk_size": CHUNK})
        prompt = engine.get_model().chat_prompt_tokens(LONG_PROMPT)
        assert len(prompt) > 6 * CHUNK
        task: asyncio.Task | None = None
        calls: list[int] = []

        def on_call(k: int, name: str) -> None:
            calls.append(k)
            if k == 3:
                if how == "cancel-task":
                    task.cancel()
                else:
                    asyncio.ensure_future(engine.interrupt_generate())

        async def request() -> str:
            if not stream:
                out = await engine.chat.completions.create(messages=LONG_PROMPT, **LONG)
                return out.choices[0].message.content
            return "".join([c.choices[0].delta.get("content", "") async for c in
                            await engine.chat.completions.create(messages=LONG_PROMPT, stream=True, **LONG)])

        unwrap = wrap_model_calls(engine, on_call)
        task = asyncio.create_task(request())
        try:
            partial = await task
            assert how == "interrupt_generate" and partial == ""
        except asyncio.CancelledError:
            assert how == "cancel-task"
        finally:
            unwrap()
        assert calls == [1, 2, 3]  # the prefill went no further than the chunk it was in
        cached = engine.get_model().cached_tokens
        assert cached == prompt[:3 * CHUNK] and engine.get_model().runner.total_tokens == len(cached)
        question = [{"role": "user", "content": "The quick brown fox"}]
        got = (await engine.chat.completions.create(messages=question, **GREEDY)).choices[0].message.content
        assert got == await reference.areply(question)
        again = (await engine.chat.completions.create(messages=LONG_PROMPT, **GREEDY)).choices[0].message.content
        assert again == await reference.areply(LONG_PROMPT)

    run(main())
