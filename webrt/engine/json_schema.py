"""JSON-schema decoding: a byte-level grammar that admits only documents valid for a schema.

``response_format={"type": "json_schema", "json_schema": {"schema": ...}}`` (OpenAI) or
``{"type": "json_object", "schema": ...}`` (WebLLM) compiles the schema into
:class:`SchemaGrammar`, which :class:`~webrt.engine.json_grammar.JsonTokenIndex` turns into a
token bitmask per step exactly as for plain JSON mode.

The subset is the one structured-output APIs ask for (OpenAI's strict mode):

- ``type``: object, array, string, number, integer, boolean, null, or a list of them;
- objects: ``properties`` (emitted in schema order), ``required``; no other keys are produced
  (``additionalProperties`` may only be absent or false);
- arrays: ``items``, ``minItems``, ``maxItems``;
- ``enum`` and ``const`` (any JSON values, written compactly as ``json.dumps`` writes them);
- ``anyOf`` / ``oneOf`` whose alternatives start with different bytes (e.g. string or null);
- local ``$ref`` into ``$defs`` / ``definitions`` (not recursive);
- annotations (``title``, ``description``, ``default``, ``examples``, ``$schema``, ``$id``).

Anything else (string patterns or lengths, number bounds, free-form objects, recursion) is
refused with an error naming the keyword, rather than silently not enforced. The root must be an
object. Whitespace between tokens is allowed and capped as in plain JSON mode. A schema may nest
at most :data:`MAX_SCHEMA_DEPTH` subschemas (``$ref`` hops included) and :data:`MAX_SCHEMA_NESTING`
JSON objects/arrays deep; deeper ones are refused with InvalidRequestError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webrt.engine.json_grammar import (
    _DIGITS,
    _WHITESPACE,
    N_INT,
    N_MINUS,
    N_ZERO,
    NUMBER_ENDED,
    STRING_CLOSED,
    _number_byte,
    _string_byte,
)
from webrt.errors import InvalidRequestError

#: Subschemas nested in one another (properties, items, anyOf, $ref hops) at most.
MAX_SCHEMA_DEPTH = 64
#: JSON objects/arrays nested in the schema document at most (annotations and enum values too).
MAX_SCHEMA_NESTING = 256

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment", "strict"})
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

# modes of a state (mode, aux, stack); stack frames: ("O", node, next_property) / ("A", node, items_done)
VALUE, OBJ_OPEN, OBJ_AFTER, OBJ_KEY, KEY, COLON, ARR_OPEN, ARR_AFTER, STRING, NUMBER, LITERAL, DONE = range(12)


@dataclass
class _Node:
    kind: str  # object | array | string | number | integer | literals | any_of
    properties: list[tuple[bytes, int, bool]] = field(default_factory=list)  # key bytes after '"', node, required
    items: int = -1
    min_items: int = 0
    max_items: int = -1  # -1: unbounded
    children: list[dict[int, int]] = field(default_factory=list)  # literal trie
    terminal: list[bool] = field(default_factory=list)
    alternatives: list[int] = field(default_factory=list)


class SchemaGrammar:
    """The byte-level grammar of one schema (see the module docstring for the subset)."""

    def __init__(self, schema: Mapping[str, Any]):
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(f"a JSON schema must be an object, got {type(schema).__name__}")
        _check_nesting(schema)
        self._schema = schema
        try:
            #: the schema's JSON text, keys in their given order (which is the order keys are produced)
            self.key = json.dumps(schema, ensure_ascii=False)
        except (TypeError, ValueError) as err:
            raise InvalidRequestError(f"the JSON schema is not JSON data ({err}); pass dicts, lists, strings and numbers") from None
        self._nodes: list[_Node] = []
        self._resolving: list[str] = []
        self._depth = 0
        root = self._compile(schema, "#")
        if self._nodes[root].kind != "object":
            raise InvalidRequestError("the root of a response JSON schema must have type 'object'")
        self.root = (VALUE, (root, 0), ())

    # --- compiling --------------------------------------------------------------------------
    def _add(self, node: _Node) -> int:
        self._nodes.append(node)
        return len(self._nodes) - 1

    def _compile(self, schema: Any, where: str) -> int:
        if self._depth >= MAX_SCHEMA_DEPTH:
            raise InvalidRequestError(
                f"the JSON schema nests deeper than {MAX_SCHEMA_DEPTH} subschemas (at {_short(where)}); flatten it")
        self._depth += 1
        try:
            return self._compile_node(schema, where)
        finally:
            self._depth -= 1

    def _compile_node(self, schema: Any, where: str) -> int:
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(f"schema at {_short(where)} must be an object, got {_short(repr(schema))}")
        if "$ref" in schema:
            return self._compile_ref(schema, where)
        if "const" in schema:
            return self._literals([schema["const"]], where)
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise InvalidRequestError(f"'enum' at {where} must be a non-empty list")
            return self._literals(values, where)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                if not isinstance(options, list) or not options:
                    raise InvalidRequestError(f"'{key}' at {where} must be a non-empty list of schemas")
                self._check_keys(schema, {key}, where)
                return self._any_of([self._compile(o, f"{where}/{key}/{i}") for i, o in enumerate(options)], where)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise InvalidRequestError(f"'type' at {where} must not be an empty list")
            alternatives = [self._compile({**schema, "type": k}, where) for k in kind]
            return alternatives[0] if len(alternatives) == 1 else self._any_of(alternatives, where)
        if kind not in _TYPES:
            raise InvalidRequestError(
                f"schema at {where} needs a 'type' (one of {', '.join(_TYPES)}), 'enum', 'const', 'anyOf' "
                f"or '$ref'; got {kind!r} (untyped values are not supported)"
            )
        if kind == "object":
            return self._object(schema, where)
        if kind == "array":
            return self._array(schema, where)
        self._check_keys(schema, {"type"}, where)
        if kind in ("boolean", "null"):
            return self._literals([True, False] if kind == "boolean" else [None], where)
        return self._add(_Node(kind))

    def _check_keys(self, schema: Mapping[str, Any], allowed: set[str], where: str) -> None:
        unknown = sorted((k for k in schema if k not in allowed and k not in _ANNOTATIONS), key=repr)
        if unknown:
            raise InvalidRequestError(
                f"JSON schema keyword(s) {', '.join(repr(k) for k in unknown)} at {where} are not supported "
                "by webrt's structured output; remove them (see webrt.engine.json_schema for the subset)"
            )

    def _compile_ref(self, schema: Mapping[str, Any], where: str) -> int:
        self._check_keys(schema, {"$ref"}, where)
        ref = schema["$ref"]
        parts = ref.split("/") if isinstance(ref, str) else []
        if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
            raise InvalidRequestError(f"'$ref' at {where} must point into '#/$defs/...', got {ref!r}")
        if ref in self._resolving:
            raise InvalidRequestError(f"'$ref' {ref!r} at {where} is recursive; recursive schemas are not supported")
        definitions = self._schema.get(parts[1])
        target = definitions.get(parts[2]) if isinstance(definitions, Mapping) else None
        if target is None:
            raise InvalidRequestError(f"'$ref' at {where} names {ref!r}, which the schema does not define")
        self._resolving.append(ref)
        try:
            return self._compile(target, ref)
        finally:
            self._resolving.pop()

    def _object(self, schema: Mapping[str, Any], where: str) -> int:
        self._check_keys(schema, {"type", "properties", "required", "additionalProperties", "$defs", "definitions"}, where)
        if schema.get("additionalProperties", False) is not False:
            raise InvalidRequestError(f"'additionalProperties' at {where} must be false or absent (only listed keys are produced)")
        props = schema.get("properties")
        if not isinstance(props, Mapping) or not props:
            raise InvalidRequestError(f"object schema at {where} needs 'properties' (free-form objects are not supported)")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(not isinstance(r, str) or r not in props for r in required):
            raise InvalidRequestError(f"'required' at {where} must list names from 'properties', got {_short(repr(required))}")
        node = _Node("object")
        for name, sub in props.items():
            if not isinstance(name, str):
                raise InvalidRequestError(f"property names at {where} must be strings, got {name!r}")
            key = _utf8(json.dumps(name, ensure_ascii=False), f"property name at {where}")[1:]  # after the opening quote
            node.properties.append((key, self._compile(sub, f"{where}/properties/{name}"), name in required))
        return self._add(node)

    def _array(self, schema: Mapping[str, Any], where: str) -> int:
        self._check_keys(schema, {"type", "items", "minItems", "maxItems"}, where)
        if "items" not in schema:
            raise InvalidRequestError(f"array schema at {where} needs 'items'")
        lo, hi = schema.get("minItems", 0), schema.get("maxItems", -1)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (lo, hi)) or lo < 0 or (hi >= 0 and hi < lo):
            raise InvalidRequestError(f"'minItems'/'maxItems' at {where} must be integers with 0 <= min <= max")
        items = self._compile(schema["items"], f"{where}/items")
        return self._add(_Node("array", items=items, min_items=lo, max_items=hi))

    def _literals(self, values: list[Any], where: str) -> int:
        node = _Node("literals", children=[{}], terminal=[False])
        for value in values:
            try:
                text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError):
                raise InvalidRequestError(f"'enum'/'const' value {value!r} at {where} is not JSON") from None
            at = 0
            for byte in _utf8(text, f"'enum'/'const' value at {where}"):
                nxt = node.children[at].get(byte)
                if nxt is None:
                    nxt = len(node.children)
                    node.children[at][byte] = nxt
                    node.children.append({})
                    node.terminal.append(False)
                at = nxt
            node.terminal[at] = True
        return self._add(node)

    def _any_of(self, alternatives: list[int], where: str) -> int:
        seen: dict[int, int] = {}
        for alt in alternatives:
            for byte in self._first_bytes(alt):
                if seen.setdefault(byte, alt) != alt:
                    raise InvalidRequestError(
                        f"'anyOf'/'oneOf'/type list at {where} has alternatives that can start with the same "
                        f"character {chr(byte)!r}; only alternatives that start differently are supported"
                    )
        return self._add(_Node("any_of", alternatives=alternatives))

    def _first_bytes(self, index: int) -> set[int]:
        node = self._nodes[index]
        if node.kind == "object":
            return {0x7B}
        if node.kind == "array":
            return {0x5B}
        if node.kind == "string":
            return {0x22}
        if node.kind in ("number", "integer"):
            return set(_DIGITS) | {0x2D}
        if node.kind == "literals":
            return set(node.children[0])
        return set().union(*(self._first_bytes(a) for a in node.alternatives))

    # --- the automaton ------------------------------------------------------------------------
    def is_done(self, state: tuple) -> bool:
        return state[0] == DONE

    def free_string_pending(self, state: tuple) -> int | None:
        mode, aux, _ = state
        return aux & 7 if mode == STRING and not (aux >> 3) & 7 else None

    def step(self, state: tuple, byte: int, max_ws: int) -> tuple | None:
        mode, aux, stack = state
        if mode == STRING:
            flags = _string_byte(aux, byte)
            if flags is None:
                return None
            return self._value_done(stack) if flags == STRING_CLOSED else (STRING, flags, stack)
        if mode == NUMBER:
            sub, integer_only = aux
            nxt = _number_byte(sub, byte, integer_only)
            if nxt == NUMBER_ENDED:
                return self.step(self._value_done(stack), byte, max_ws)
            return None if nxt is None else (NUMBER, (nxt, integer_only), stack)
        if mode == LITERAL:
            node_id, at = aux
            node = self._nodes[node_id]
            nxt = node.children[at].get(byte)
            if nxt is not None:
                return self._literal_at(node_id, nxt, stack)
            return self.step(self._value_done(stack), byte, max_ws) if node.terminal[at] else None
        if mode == DONE:
            return None
        if mode == KEY:
            return self._key(aux, byte, stack)
        if byte in _WHITESPACE:
            ws = aux[1] if mode in (VALUE, COLON) else aux
            if ws >= max_ws:
                return None
            return (mode, (aux[0], ws + 1) if mode in (VALUE, COLON) else ws + 1, stack)
        if mode == VALUE:
            return self._start(aux[0], byte, stack)
        if mode == COLON:
            return (VALUE, (aux[0], 0), stack) if byte == 0x3A else None
        kind, node_id, count = stack[-1]
        node = self._nodes[node_id]
        if mode in (OBJ_OPEN, OBJ_AFTER, OBJ_KEY):
            rest = node.properties[count:]
            if byte == 0x7D and mode != OBJ_KEY and not any(required for _, _, required in rest):
                return self._value_done(stack[:-1])
            if byte == 0x2C and mode == OBJ_AFTER and rest:
                return (OBJ_KEY, 0, stack)
            if byte == 0x22 and mode != OBJ_AFTER and rest:
                return (KEY, (self._key_candidates(node, count), 0), stack)
            return None
        # ARR_OPEN / ARR_AFTER
        if byte == 0x5D and count >= node.min_items:
            return self._value_done(stack[:-1])
        room = node.max_items < 0 or count < node.max_items
        if mode == ARR_AFTER:
            return (VALUE, (node.items, 0), stack) if byte == 0x2C and room else None
        return self._start(node.items, byte, stack) if room else None

    def _start(self, node_id: int, byte: int, stack: tuple) -> tuple | None:
        """The state after the first byte of a value of ``node_id``, or None."""
        node = self._nodes[node_id]
        kind = node.kind
        if kind == "object":
            return (OBJ_OPEN, 0, (*stack, ("O", node_id, 0))) if byte == 0x7B else None
        if kind == "array":
            return (ARR_OPEN, 0, (*stack, ("A", node_id, 0))) if byte == 0x5B else None
        if kind == "string":
            return (STRING, 0, stack) if byte == 0x22 else None
        if kind in ("number", "integer"):
            integer_only = kind == "integer"
            if byte == 0x2D:
                return (NUMBER, (N_MINUS, integer_only), stack)
            if byte == 0x30:
                return (NUMBER, (N_ZERO, integer_only), stack)
            return (NUMBER, (N_INT, integer_only), stack) if byte in _DIGITS else None
        if kind == "literals":
            nxt = node.children[0].get(byte)
            return None if nxt is None else self._literal_at(node_id, nxt, stack)
        for alt in node.alternatives:
            state = self._start(alt, byte, stack)
            if state is not None:
                return state
        return None

    def _literal_at(self, node_id: int, at: int, stack: tuple) -> tuple:
        node = self._nodes[node_id]
        if node.terminal[at] and not node.children[at]:
            return self._value_done(stack)
        return (LITERAL, (node_id, at), stack)

    def _value_done(self, stack: tuple) -> tuple:
        """The state after a complete value inside ``stack`` (its innermost container)."""
        if not stack:
            return (DONE, 0, ())
        kind, node_id, count = stack[-1]
        if kind == "O":
            return (OBJ_AFTER, 0, stack)
        return (ARR_AFTER, 0, (*stack[:-1], ("A", node_id, count + 1)))

    @staticmethod
    def _key_candidates(node: _Node, start: int) -> tuple[int, ...]:
        """Properties that may come next: the optional ones up to and including the next required."""
        out = []
        for i in range(start, len(node.properties)):
            out.append(i)
            if node.properties[i][2]:
                break
        return tuple(out)

    def _key(self, aux: tuple, byte: int, stack: tuple) -> tuple | None:
        candidates, pos = aux
        kind, node_id, _ = stack[-1]
        props = self._nodes[node_id].properties
        alive = tuple(i for i in candidates if props[i][0][pos] == byte)
        if not alive:
            return None
        for i in alive:
            if len(props[i][0]) == pos + 1:  # the closing quote: this key is complete
                return (COLON, (props[i][1], 0), (*stack[:-1], ("O", node_id, i + 1)))
        return (KEY, (alive, pos + 1), stack)


def schema_from_response_format(fmt: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema a ``response_format`` carries: OpenAI's ``json_schema.schema`` or WebLLM's
    ``schema`` (a dict or a JSON string); None for plain ``json_object``."""
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
            raise InvalidRequestError("'response_format' of type json_schema needs json_schema={'name': ..., 'schema': {...}}")
        return spec["schema"]
    schema = fmt.get("schema")
    if schema is None:
        return None
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(f"'response_format.schema' is not valid JSON: {e}") from None
        except RecursionError:
            raise InvalidRequestError(
                f"'response_format.schema' nests deeper than {MAX_SCHEMA_NESTING} levels; flatten it") from None
    if not isinstance(schema, Mapping):
        raise InvalidRequestError("'response_format.schema' must be a JSON object (or its JSON text)")
    return schema


def _short(text: str) -> str:
    return text if len(text) <= 100 else text[:97] + "..."


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{what} holds a lone surrogate, which is not text; pass valid Unicode") from None


def _check_nesting(schema: Any) -> None:
    """Refuse documents nested deeper than MAX_SCHEMA_NESTING (iteratively: no RecursionError)."""
    pending = [(schema, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth > MAX_SCHEMA_NESTING:
            raise InvalidRequestError(
                f"the JSON schema nests objects/arrays deeper than {MAX_SCHEMA_NESTING} levels; flatten it")
        pending.extend((child, depth + 1) for child in children)
