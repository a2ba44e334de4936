"""Property-based tests (hypothesis) of request handling: random JSON-ish requests and schemas
get a result or one of webrt's typed errors, never another exception and never a hang.

Needs ``hypothesis`` (skipped without it). 2,000 examples in all (900 chat requests, 300
completion requests, 600 JSON schemas, 200 requests through the engine): about 20 s of CPU.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from model_factory import tiny_artifacts  # noqa: E402
from engine_util import engine_for  # noqa: E402
from webrt.engine.generation import resolve_generation_config  # noqa: E402
from webrt.engine.json_grammar import REJECT, JsonTokenIndex  # noqa: E402
from webrt.engine.json_schema import SchemaGrammar  # noqa: E402
from webrt.engine.protocol import (  # noqa: E402
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    MAX_N,
    MAX_TOKENS_LIMIT,
    GenerationRequest,
    parse_chat_request,
    parse_completion_request,
)
from webrt.errors import WebrtError  # noqa: E402

# a hang shows up as a deadline error rather than a stuck run; no example database in the tree
SETTINGS = dict(deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                      HealthCheck.data_too_large])

# text from a small alphabet that still holds the awkward characters (a lone surrogate, NUL,
# quotes, an emoji, a ChatML marker): cheap to draw, so thousands of examples fit in seconds
PIECES = ["a", "b", " ", "\n", "{", '"', "\\", "\x00", "\u00e9", "\U0001f600", "<|im_end|>", "1"]
CLEAN_TEXT = st.lists(st.sampled_from(PIECES), max_size=5).map("".join)
TEXT = CLEAN_TEXT | st.lists(st.sampled_from([*PIECES, "\ud800", "\udfff"]), max_size=5).map("".join)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([10**400, -(10**400), 1e-300])
           | st.floats(allow_nan=True, allow_infinity=True)
           | TEXT | st.sampled_from(["user", "assistant", "system", "tool", "text", "json_object", "json_schema", "1"]))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                       max_leaves=4)


def mostly(valid: st.SearchStrategy[Any], nonsense: st.SearchStrategy[Any], odds: int = 3) -> st.SearchStrategy[Any]:
    """A valid value ``odds`` times to one (so whole requests are often valid), else nonsense."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda ok: valid if ok else nonsense)


ROLE = mostly(st.sampled_from(["user", "assistant"]), st.sampled_from(["system", "tool", "bot"]) | TEXT | JSONISH)
MESSAGE = st.fixed_dictionaries({"role": ROLE, "content": mostly(CLEAN_TEXT, TEXT | JSONISH)},
                                optional={"name": mostly(CLEAN_TEXT, TEXT | JSONISH)})
FIELDS: dict[str, Any] = {
    "messages": mostly(st.lists(MESSAGE, max_size=3).map(lambda ms: [*ms, {"role": "user", "content": "hi"}]),
                       JSONISH),
    "prompt": mostly(CLEAN_TEXT.filter(bool), TEXT | JSONISH),
    "temperature": mostly(st.floats(0, 2), st.floats() | st.integers(-(2**70), 2**70) | JSONISH),
    "top_p": mostly(st.floats(0.01, 1), st.floats() | JSONISH),
    "max_tokens": mostly(st.integers(1, 2), st.integers(-(2**80), 2**80) | JSONISH),
    "n": mostly(st.integers(1, 3), st.integers(-(2**40), 2**40) | JSONISH),
    "seed": mostly(st.integers(-(2**63), 2**63), st.floats() | st.integers(-(2**80), 2**80) | JSONISH),
    "stop": mostly(CLEAN_TEXT.filter(bool) | st.lists(CLEAN_TEXT.filter(bool), max_size=2), TEXT | JSONISH),
    "stream": mostly(st.booleans(), JSONISH),
    "presence_penalty": mostly(st.floats(-2, 2), st.floats() | JSONISH),
    "frequency_penalty": mostly(st.floats(-2, 2), st.floats() | JSONISH),
    "repetition_penalty": mostly(st.floats(0.5, 2), st.floats() | JSONISH),
    "logit_bias": mostly(st.dictionaries(st.integers(0, 300).map(str), st.floats(-100, 100), max_size=2),
                         st.dictionaries(TEXT | st.integers(-5, 2**40) | st.floats(), SCALARS, max_size=2) | JSONISH),
    "logprobs": mostly(st.booleans(), st.integers(-1, 25) | JSONISH),
    "top_logprobs": mostly(st.integers(0, 3), st.integers(-(2**40), 2**40) | JSONISH),
    "response_format": mostly(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"]) | TEXT},
                              optional={"schema": JSONISH | JSONISH.map(json.dumps), "json_schema": JSONISH})),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": mostly(st.booleans(), JSONISH)}),
    "ignore_eos": mostly(st.booleans(), JSONISH),
    "user": mostly(CLEAN_TEXT, JSONISH),
    "extra_body": mostly(st.dictionaries(CLEAN_TEXT, SCALARS, max_size=2), JSONISH),
    "tools": mostly(st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": CLEAN_TEXT}, optional={"description": CLEAN_TEXT, "parameters": JSONISH})}), max_size=2), JSONISH),
    "chat_template_kwargs": mostly(st.dictionaries(st.sampled_from(["enable_thinking", "x"]), SCALARS, max_size=2),
                                   JSONISH),
}


def requests(fields: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """Request dicts: the main field and any of the others, mostly valid; sometimes unknown keys."""
    main = "messages" if "messages" in fields else "prompt"
    optional = {name: FIELDS.get(name, JSONISH) for name in fields if name not in (main, "model")}
    return mostly(st.fixed_dictionaries({main: FIELDS[main]}, optional=optional),
                  st.dictionaries(TEXT, JSONISH, max_size=3) | st.fixed_dictionaries({}, optional=optional))


def check_accepted(parsed: GenerationRequest, text: Any) -> None:
    """What an accepted request may hold: finite numbers in range, integer token ids, real text."""
    hypothesis.event("valid")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        value = getattr(parsed, name)
        assert value is None or math.isfinite(value), (name, value)
    assert 1 <= parsed.n <= MAX_N and (parsed.max_tokens is None or 1 <= parsed.max_tokens <= MAX_TOKENS_LIMIT)
    assert all(type(k) is int for k in parsed.logit_bias) and all(math.isfinite(v) for v in parsed.logit_bias.values())
    assert parsed.seed is None or type(parsed.seed) is int
    json.dumps([text, parsed.stop], ensure_ascii=False).encode("utf-8")  # no lone surrogates


@settings(max_examples=900, **SETTINGS)
@given(requests(CHAT_FIELDS))
def test_chat_request_parser_raises_only_typed_errors(request: dict[str, Any]) -> None:
    try:
        parsed = parse_chat_request(request)
    except WebrtError:
        return
    check_accepted(parsed, parsed.messages)


@settings(max_examples=300, **SETTINGS)
@given(requests(COMPLETION_FIELDS))
def test_completion_request_parser_raises_only_typed_errors(request: dict[str, Any]) -> None:
    try:
        parsed = parse_completion_request(request)
    except WebrtError:
        return
    check_accepted(parsed, parsed.prompt)


SCHEMA_KEYS = ["type", "properties", "required", "items", "enum", "const", "anyOf", "oneOf", "$ref", "$defs",
               "minItems", "maxItems", "additionalProperties", "title"]
TYPES = st.sampled_from(["object", "array", "string", "number", "integer", "boolean", "null"])
SCHEMAS = st.recursive(
    mostly(st.fixed_dictionaries({"type": TYPES}) | st.fixed_dictionaries({"enum": st.lists(SCALARS, min_size=1, max_size=3)}),
           st.fixed_dictionaries({"enum": st.lists(JSONISH, max_size=3)}) | st.dictionaries(TEXT, JSONISH, max_size=2),
           odds=12),
    lambda inner: mostly(
        st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(CLEAN_TEXT, inner, min_size=1,
                                                                                       max_size=3)})
        | st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                                optional={"minItems": st.integers(0, 2), "maxItems": st.integers(2, 3)}),
        st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(TEXT, inner, max_size=2)},
                              optional={"required": st.lists(TEXT | JSONISH, max_size=2)})
        | st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                                optional={"minItems": st.integers(-1, 3) | JSONISH, "maxItems": JSONISH})
        | st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)})
        | st.dictionaries(st.sampled_from(SCHEMA_KEYS) | TEXT, inner | JSONISH, max_size=3),
        odds=12),
    max_leaves=6,
)
ROOT_SCHEMAS = mostly(st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(
    CLEAN_TEXT, SCHEMAS, min_size=1, max_size=3)}), SCHEMAS | JSONISH)
BYTE_INDEX = JsonTokenIndex([bytes([b]) for b in range(256)])


@settings(max_examples=600, **SETTINGS)
@given(ROOT_SCHEMAS, JSONISH)
def test_schema_compiler_raises_only_typed_errors_and_accepts_only_json(schema: Any, document: Any) -> None:
    """A compiled schema's automaton, fed any JSON text, never fails and accepts only JSON."""
    try:
        index = BYTE_INDEX.with_grammar(SchemaGrammar(schema))
        hypothesis.event("compiled")
    except WebrtError:
        return
    try:
        text = json.dumps(document, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return
    state = index.advance_bytes(index.root_state, text)
    if state != REJECT and index.is_done(state):
        json.loads(text)


@pytest.fixture(scope="module")
def engine():
    loop = asyncio.new_event_loop()
    yield loop, loop.run_until_complete(engine_for(tiny_artifacts("llama2")))
    loop.close()


def few_fields(fields: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid messages and up to three other fields (so about half the requests are valid)."""
    others = [name for name in fields if name not in ("messages", "model")]
    pair = st.sampled_from(others).flatmap(lambda name: FIELDS[name].map(lambda value: (name, value)))
    return st.lists(pair, max_size=3).map(
        lambda pairs: {"messages": [{"role": "user", "content": "hello world"}], **dict(pairs)})


@settings(max_examples=200, **SETTINGS)
@given(request=few_fields(CHAT_FIELDS))
def test_engine_requests_end_in_a_reply_or_a_typed_error(engine, request: dict[str, Any]) -> None:
    """Through the whole engine (prompt rendering, config, a few tokens of generation)."""
    loop, eng = engine
    if "max_tokens" not in request:
        request = {**request, "max_tokens": 2}  # keep generation short

    async def run_one() -> None:
        reply = await eng.chat.completions.create(request)
        if hasattr(reply, "__aiter__"):
            async for _ in reply:
                pass

    try:
        loop.run_until_complete(asyncio.wait_for(run_one(), 20))
        hypothesis.event("replied")
    except WebrtError as err:
        hypothesis.event(type(err).__name__)
    model = eng.get_model()
    try:
        parsed = parse_chat_request(request)
        model.chat_prompt_tokens(parsed.messages, parsed.tools, parsed.chat_template_kwargs)
        resolve_generation_config(model.chat_config, parsed, model.vocab_size)
    except WebrtError:
        pass
