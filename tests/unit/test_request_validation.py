"""Nonsense request fields get InvalidRequestError naming the field, never a raw exception or a
silent coercion (the parser alone: no model needed)."""

from __future__ import annotations

import math

import pytest

from webrt.engine.json_schema import MAX_SCHEMA_DEPTH, SchemaGrammar
from webrt.engine.protocol import (
    MAX_N,
    MAX_REQUEST_NESTING,
    MAX_TOKENS_LIMIT,
    MIN_REPETITION_PENALTY,
    parse_chat_request,
    parse_completion_request,
)
from webrt.errors import InvalidRequestError

USER = [{"role": "user", "content": "hello world"}]


def deep_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


BAD = [
    (dict(temperature=math.nan), "'temperature' must be a finite number"),
    (dict(temperature=math.inf), "'temperature' must be a finite number"),
    (dict(temperature=-0.5), r"'temperature' must be in \[0, 100\]"),
    (dict(temperature=1e300), r"'temperature' must be in \[0, 100\]"),  # was OverflowError packing float32
    (dict(temperature=10**400), "'temperature' must be a finite number"),  # was OverflowError in float()
    (dict(top_p=0.0), r"'top_p' must be in \(0, 1\]"),
    (dict(top_p=1.5), r"'top_p' must be in \(0, 1\]"),
    (dict(top_p=math.nan), "'top_p' must be a finite number"),
    (dict(repetition_penalty=math.nan), "'repetition_penalty' must be a finite number"),
    (dict(repetition_penalty=math.inf), "'repetition_penalty' must be a finite number"),
    (dict(repetition_penalty=0.0), r"'repetition_penalty' must be in \[0.01, 100\]"),
    (dict(repetition_penalty=1e-300), r"'repetition_penalty' must be in \[0.01, 100\]"),
    (dict(repetition_penalty=1e300), r"'repetition_penalty' must be in \[0.01, 100\]"),
    (dict(presence_penalty=math.nan), "'presence_penalty' must be a finite number"),
    (dict(frequency_penalty=-math.inf), "'frequency_penalty' must be a finite number"),
    (dict(logit_bias={"1.5": 1}), "'logit_bias' keys must be token ids"),
    (dict(logit_bias={1.5: 1}), "'logit_bias' keys must be token ids"),  # was silently token 1
    (dict(logit_bias={" 7": 1}), "'logit_bias' keys must be token ids"),  # was silently token 7
    (dict(logit_bias={"1_0": 1}), "'logit_bias' keys must be token ids"),  # was silently token 10
    (dict(logit_bias={True: 1}), "'logit_bias' keys must be token ids"),  # was silently token 1
    (dict(logit_bias={"1": math.nan}), "'logit_bias' values"),
    (dict(logit_bias={"1": math.inf}), "'logit_bias' values"),
    (dict(max_tokens=0), r"'max_tokens' must be in \[1, "),
    (dict(max_tokens=-3), r"'max_tokens' must be in \[1, "),
    (dict(max_tokens=10**30), r"'max_tokens' must be in \[1, 1048576\]"),
    (dict(max_tokens=2.0), "'max_tokens' must be an integer"),
    (dict(n=10**6), rf"'n' must be in \[1, {MAX_N}\]"),
    (dict(seed="1"), "'seed' must be an integer"),
    (dict(seed=1.5), "'seed' must be an integer"),
    (dict(seed=True), "'seed' must be an integer"),
    (dict(seed=2**70), "'seed' must be a 64-bit integer"),
    (dict(messages=[{"role": "user", "content": "a\ud800b"}]), r"'messages'\[0\]\['content'\] holds a lone surrogate"),
    (dict(stop=["\udfff"]), r"'stop'\[0\] holds a lone surrogate"),
    (dict(stop=[10**5000]), "'stop' must be a string or a list of strings, got a list"),  # repr would raise
    (dict(response_format={"type": "json_object", "schema": deep_schema(2000)}), "nests .*deeper than"),
    (dict(response_format={"type": "json_object", "schema": "[" * 5000}), "nests deeper than"),
    (dict(response_format={"type": "json_object", "schema": deep_schema(MAX_SCHEMA_DEPTH + 1)}),
     f"deeper than {MAX_SCHEMA_DEPTH} subschemas"),
    (dict(response_format={"type": "json_object", "schema": {"type": "object", "properties": {"\ud800": {"type": "string"}}}}),
     "lone surrogate"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[f"{i}-{next(iter(b[0]))}" for i, b in enumerate(BAD)])
def test_nonsense_fields_get_typed_errors(fields: dict, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        parse_chat_request({"messages": USER, **fields})


def test_bounds_are_inclusive_and_documented_constants() -> None:
    ok = parse_chat_request(messages=USER, temperature=100, top_p=1e-9, repetition_penalty=MIN_REPETITION_PENALTY,
                            max_tokens=MAX_TOKENS_LIMIT, n=MAX_N, seed=-(2**63), logit_bias={"5": 1, 6: -1})
    assert (ok.temperature, ok.n, ok.max_tokens, ok.logit_bias) == (100.0, MAX_N, MAX_TOKENS_LIMIT, {5: 1.0, 6: -1.0})


def test_request_nesting_is_bounded_without_recursion_error() -> None:
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(InvalidRequestError, match=f"deeper than {MAX_REQUEST_NESTING} levels"):
        parse_chat_request(messages=[{"role": "user", "content": nested}])
    with pytest.raises(InvalidRequestError, match="lone surrogate"):
        parse_completion_request(prompt="x\ud83d")


def test_schema_grammar_refuses_deep_and_odd_schemas_itself() -> None:
    for schema, message in [
        (deep_schema(3000), "deeper than"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": [["a"]]}, "'required'"),
        ({"type": "object", "properties": {1: {"type": "string"}}}, "property names"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": ["x"]}, "does not define"),
        ({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "null"}, "minItems": True}}},
         "minItems"),
        ({"type": "object", "properties": {"a": {"enum": ["\udc80"]}}}, "lone surrogate"),
        ({"type": "object", "properties": {"a": {"type": "string", 1: 2, "x": 3}}}, "not supported"),
    ]:
        with pytest.raises(InvalidRequestError, match=message):
            SchemaGrammar(schema)
    chain = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(3000)}
    chain["d3000"] = {"type": "string"}
    with pytest.raises(InvalidRequestError, match="subschemas"):
        SchemaGrammar({"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}}, "$defs": chain})
