"""JSON-mode decoding: a byte-level JSON matcher that yields a token bitmask per step.

``response_format={"type": "json_object"}`` must produce text that parses as one JSON object.
:class:`JsonMatcher` tracks a pushdown automaton over the output bytes; before each sampling
step it returns which tokens keep the output a prefix of valid JSON (``apply_bitmask`` then
masks the others out on the device), and once the root object closes the generation ends.

Speed, in pure Python: the vocabulary lives in a byte trie (:class:`JsonTokenIndex`) walked
depth first from the current state, pruning a subtree at its first rejected byte; states are
interned to small ints with a memoised byte transition table, and masks are memoised per state.
Inside a string (where nearly every token is allowed, so pruning cannot help) the tokens made
only of plain string bytes come from a precomputed mask per pending-UTF-8 count, and only the
tokens holding a quote, backslash or control byte are walked. The index and its memos are
shared by every request on a model.

The grammar is RFC 8259 with the root restricted to an object (OpenAI's JSON mode); any other
byte-level grammar with hashable states (:class:`Grammar`, e.g. a JSON schema's) plugs into the
same index with :meth:`JsonTokenIndex.with_grammar`, sharing the vocabulary tries. Runs of
whitespace between tokens are capped at ``max_whitespace`` bytes so a model cannot pad
forever; UTF-8 inside strings must be well formed (lead byte, then its continuation bytes).
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Hashable, Sequence
from typing import Any, Protocol

from webrt.errors import InvalidRequestError

# Modes of the automaton. A state is (mode, aux, stack): ``stack`` is a str of 'O' / 'A'
# frames (innermost last); ``aux`` is the whitespace run for structural modes, packed string
# flags for STRING, the number sub-state for NUMBER, the letters still due for LITERAL.
ROOT, VALUE, ARRAY_FIRST, OBJECT_FIRST, KEY, COLON, AFTER_VALUE, STRING, NUMBER, LITERAL, DONE = range(11)

# NUMBER sub-states: after '-', after a leading '0', integer digits, after '.', fraction
# digits, after 'e', after the exponent sign, exponent digits.
N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_EXP, N_EXP_SIGN, N_EXP_DIGITS = range(8)
_NUMBER_CAN_END = (N_ZERO, N_INT, N_FRAC, N_EXP_DIGITS)

# STRING aux = key_flag * 64 + escape * 8 + utf8_pending, escape: 0 none, 1 after '\',
# 2..5: 4..1 hex digits of \\uXXXX still due.
_KEY_FLAG = 64
_WHITESPACE = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')
_LITERALS = {ord("t"): "rue", ord("f"): "alse", ord("n"): "ull"}

REJECT = -1
_UNKNOWN = -2
DEFAULT_MAX_WHITESPACE = 24
_MASK_MEMO_LIMIT = 4096

State = tuple[int, object, str]


def _utf8_next(pending: int, byte: int) -> int:
    """Pending continuation bytes after ``byte``, or -1 if it breaks UTF-8."""
    if pending:
        return pending - 1 if 0x80 <= byte <= 0xBF else -1
    if byte < 0x80:
        return 0
    if 0xC2 <= byte <= 0xDF:
        return 1
    if 0xE0 <= byte <= 0xEF:
        return 2
    if 0xF0 <= byte <= 0xF4:
        return 3
    return -1


def _is_plain_string_byte(byte: int) -> bool:
    return byte >= 0x20 and byte != 0x22 and byte != 0x5C


def _start_value(byte: int, stack: str) -> State | None:
    """The state after the first byte of a value, or None if no value starts with it."""
    if byte == 0x7B:  # {
        return (OBJECT_FIRST, 0, stack + "O")
    if byte == 0x5B:  # [
        return (ARRAY_FIRST, 0, stack + "A")
    if byte == 0x22:  # "
        return (STRING, 0, stack)
    if byte == 0x2D:  # -
        return (NUMBER, N_MINUS, stack)
    if byte == 0x30:
        return (NUMBER, N_ZERO, stack)
    if 0x31 <= byte <= 0x39:
        return (NUMBER, N_INT, stack)
    rest = _LITERALS.get(byte)
    if rest is not None:
        return (LITERAL, rest, stack)
    return None


def _close(stack: str) -> State:
    """The state after the innermost container closed."""
    outer = stack[:-1]
    return (AFTER_VALUE, 0, outer) if outer else (DONE, 0, "")


def _after_value(byte: int, stack: str, ws: int, max_ws: int) -> State | None:
    if byte in _WHITESPACE:
        return (AFTER_VALUE, ws + 1, stack) if ws < max_ws else None
    top = stack[-1]
    if byte == 0x2C:  # ,
        return (KEY, 0, stack) if top == "O" else (VALUE, 0, stack)
    if (byte == 0x7D and top == "O") or (byte == 0x5D and top == "A"):
        return _close(stack)
    return None


NUMBER_ENDED = -2  # _number_byte: the number ended before the byte


def _number_byte(sub: int, byte: int, integer_only: bool = False) -> int | None:
    """Inside a JSON number: the sub-state after ``byte``, NUMBER_ENDED if the number ended
    before it (the byte belongs to what follows), None if neither."""
    digit = byte in _DIGITS
    if sub == N_MINUS:
        if byte == 0x30:
            return N_ZERO
        return N_INT if digit else None
    if sub in (N_INT, N_FRAC, N_EXP_DIGITS) and digit:
        return sub
    if not integer_only:
        if sub in (N_ZERO, N_INT) and byte == 0x2E:
            return N_DOT
        if sub in (N_ZERO, N_INT, N_FRAC) and byte in (0x65, 0x45):
            return N_EXP
    if sub == N_DOT:
        return N_FRAC if digit else None
    if sub == N_EXP:
        if byte in (0x2B, 0x2D):
            return N_EXP_SIGN
        return N_EXP_DIGITS if digit else None
    if sub == N_EXP_SIGN:
        return N_EXP_DIGITS if digit else None
    return NUMBER_ENDED if sub in _NUMBER_CAN_END else None


def _number(sub: int, byte: int, stack: str, max_ws: int) -> State | None:
    nxt = _number_byte(sub, byte)
    if nxt == NUMBER_ENDED:
        return _after_value(byte, stack, 0, max_ws)
    return None if nxt is None else (NUMBER, nxt, stack)


STRING_CLOSED = -2  # _string_byte: the byte was the closing quote


def _string_byte(flags: int, byte: int) -> int | None:
    """Inside a JSON string: the flags (escape * 8 + UTF-8 bytes pending) after ``byte``,
    STRING_CLOSED at the closing quote, None if no valid string continues so. Escape 0: none,
    1: after a backslash, 2..5: 4..1 hex digits of a \\uXXXX still due."""
    escape, pending = (flags >> 3) & 7, flags & 7
    if escape == 1:
        if byte == 0x75:  # u
            return 2 << 3
        return 0 if byte in _SIMPLE_ESCAPES else None
    if escape:
        return ((escape + 1) % 6) << 3 if byte in _HEX else None
    if pending:
        nxt = _utf8_next(pending, byte)
        return None if nxt < 0 else nxt
    if byte == 0x22:
        return STRING_CLOSED
    if byte == 0x5C:
        return 1 << 3
    if byte < 0x20:
        return None
    nxt = _utf8_next(0, byte)
    return None if nxt < 0 else nxt


def _string(aux: int, byte: int, stack: str) -> State | None:
    is_key = aux & _KEY_FLAG
    flags = _string_byte(aux & (_KEY_FLAG - 1), byte)
    if flags is None:
        return None
    if flags == STRING_CLOSED:
        return (COLON, 0, stack) if is_key else (AFTER_VALUE, 0, stack)
    return (STRING, is_key | flags, stack)


def step_state(state: State, byte: int, max_ws: int = DEFAULT_MAX_WHITESPACE) -> State | None:
    """The automaton's state after one output byte, or None if no valid JSON continues so."""
    mode, aux, stack = state
    if mode == STRING:
        return _string(aux, byte, stack)  # type: ignore[arg-type]
    if mode == NUMBER:
        return _number(aux, byte, stack, max_ws)  # type: ignore[arg-type]
    if mode == LITERAL:
        rest: str = aux  # type: ignore[assignment]
        if byte != ord(rest[0]):
            return None
        return (LITERAL, rest[1:], stack) if len(rest) > 1 else (AFTER_VALUE, 0, stack)
    if mode == DONE:
        return None
    if mode == AFTER_VALUE:
        return _after_value(byte, stack, aux, max_ws)  # type: ignore[arg-type]
    if byte in _WHITESPACE:
        return (mode, aux + 1, stack) if aux < max_ws else None  # type: ignore[operator]
    if mode == ROOT:
        return (OBJECT_FIRST, 0, "O") if byte == 0x7B else None
    if mode == COLON:
        return (VALUE, 0, stack) if byte == 0x3A else None
    if mode == OBJECT_FIRST and byte == 0x7D:
        return _close(stack)
    if mode in (OBJECT_FIRST, KEY):
        return (STRING, _KEY_FLAG, stack) if byte == 0x22 else None
    if mode == ARRAY_FIRST and byte == 0x5D:
        return _close(stack)
    return _start_value(byte, stack)  # VALUE, ARRAY_FIRST


class Grammar(Protocol):
    """What :class:`JsonTokenIndex` needs of a byte-level grammar (states must be hashable)."""

    root: Hashable

    def step(self, state: Any, byte: int, max_ws: int) -> Any | None:
        """The state after one output byte, or None if nothing valid continues so."""

    def is_done(self, state: Any) -> bool:
        """Whether the output is complete (nothing more may follow)."""

    def free_string_pending(self, state: Any) -> int | None:
        """Inside a string that takes any text, the UTF-8 continuation bytes still due (else None)."""


class PlainJson:
    """RFC 8259 JSON with an object at the root: OpenAI's ``json_object`` mode."""

    root: State = (ROOT, 0, "")

    def step(self, state: State, byte: int, max_ws: int) -> State | None:
        return step_state(state, byte, max_ws)

    def is_done(self, state: State) -> bool:
        return state[0] == DONE

    def free_string_pending(self, state: State) -> int | None:
        mode, aux, _ = state
        if mode == STRING and not (aux >> 3) & 7:  # type: ignore[operator]
            return aux & 7  # type: ignore[operator]
        return None


class _Trie:
    """A byte trie over token byte strings; node 0 is the root."""

    def __init__(self) -> None:
        self.children: list[dict[int, int]] = [{}]
        self.tokens: list[list[int]] = [[]]

    def insert(self, data: bytes, token_id: int) -> None:
        node = 0
        children, tokens = self.children, self.tokens
        for byte in data:
            nxt = children[node].get(byte)
            if nxt is None:
                nxt = len(children)
                children[node][byte] = nxt
                children.append({})
                tokens.append([])
            node = nxt
        tokens[node].append(token_id)


class JsonTokenIndex:
    """Everything about a vocabulary that JSON matching reuses across requests.

    ``token_bytes[i]`` is the bytes token ``i`` adds to the output (``None`` or ``b""`` for
    special tokens, which JSON mode never allows). Build once per model; cheap to share.
    """

    def __init__(self, token_bytes: Sequence[bytes | None], max_whitespace: int = DEFAULT_MAX_WHITESPACE):
        self.vocab_size = len(token_bytes)
        self.words = (self.vocab_size + 31) // 32
        self.max_whitespace = max_whitespace
        self.token_bytes = list(token_bytes)
        self.full_trie = _Trie()
        self.special_trie = _Trie()  # tokens holding a quote, backslash or control byte
        plain = [bytearray(self.words * 4) for _ in range(4)]
        for token_id, data in enumerate(self.token_bytes):
            if not data:
                continue
            self.full_trie.insert(data, token_id)
            if all(_is_plain_string_byte(b) for b in data):
                for pending in range(4):
                    p = pending
                    for b in data:
                        p = _utf8_next(p, b)
                        if p < 0:
                            break
                    if p >= 0:
                        plain[pending][token_id >> 3] |= 1 << (token_id & 7)
            else:
                self.special_trie.insert(data, token_id)
        self.plain_string_masks = [int.from_bytes(m, "little") for m in plain]
        self.use_grammar(PlainJson())

    def use_grammar(self, grammar: Grammar) -> None:
        """Match ``grammar`` from now on, with fresh interned-state tables (transitions and
        masks memoised per state); the vocabulary tries stay."""
        self.grammar = grammar
        self._state_ids: dict[Any, int] = {}
        self._states: list[Any] = []
        self._transitions: list[list[int]] = []
        self._masks: dict[int, int] = {}
        self.root_state = self.intern(self.grammar.root)

    def with_grammar(self, grammar: Grammar) -> JsonTokenIndex:
        """An index for another grammar over the same vocabulary: the tries are shared, the state
        tables are its own."""
        other = copy.copy(self)
        other.use_grammar(grammar)
        return other

    # --- states -------------------------------------------------------------------------------
    def intern(self, state: Any) -> int:
        sid = self._state_ids.get(state)
        if sid is None:
            sid = len(self._states)
            self._state_ids[state] = sid
            self._states.append(state)
            self._transitions.append([_UNKNOWN] * 256)
        return sid

    def state(self, sid: int) -> Any:
        return self._states[sid]

    def advance(self, sid: int, byte: int) -> int:
        """Interned state after ``byte`` (REJECT if invalid), memoised."""
        row = self._transitions[sid]
        nxt = row[byte]
        if nxt == _UNKNOWN:
            state = self.grammar.step(self._states[sid], byte, self.max_whitespace)
            nxt = REJECT if state is None else self.intern(state)
            row[byte] = nxt
        return nxt

    def advance_bytes(self, sid: int, data: bytes) -> int:
        for byte in data:
            sid = self.advance(sid, byte)
            if sid == REJECT:
                return REJECT
        return sid

    def is_done(self, sid: int) -> bool:
        return self.grammar.is_done(self._states[sid])

    # --- masks --------------------------------------------------------------------------------
    def allowed_mask(self, sid: int) -> int:
        """Bit ``i`` set iff token ``i`` keeps the output a prefix of valid JSON (memoised)."""
        mask = self._masks.get(sid)
        if mask is not None:
            return mask
        pending = self.grammar.free_string_pending(self._states[sid])
        if pending is not None:
            mask = self.plain_string_masks[pending] | self._walk(self.special_trie, sid)
        else:
            mask = self._walk(self.full_trie, sid)
        if len(self._masks) >= _MASK_MEMO_LIMIT:
            self._masks.clear()
        self._masks[sid] = mask
        return mask

    def _walk(self, trie: _Trie, sid: int) -> int:
        """Depth-first walk of ``trie`` from state ``sid``, pruning at the first rejected byte."""
        accepted = bytearray(self.words * 4)
        children, tokens, advance = trie.children, trie.tokens, self.advance
        pending = [(0, sid)]
        while pending:
            node, state = pending.pop()
            for byte, child in children[node].items():
                nxt = advance(state, byte)
                if nxt < 0:
                    continue
                for token_id in tokens[child]:
                    accepted[token_id >> 3] |= 1 << (token_id & 7)
                if children[child]:
                    pending.append((child, nxt))
        return int.from_bytes(accepted, "little")

    def mask_to_words(self, mask: int) -> list[int]:
        """A bit mask as the signed int32 words ``apply_bitmask_inplace`` takes."""
        return list(struct.unpack(f"<{self.words}i", mask.to_bytes(self.words * 4, "little")))


class JsonMatcher:
    """The JSON state of one generation: ask for the next bitmask, then accept the sampled token."""

    def __init__(self, index: JsonTokenIndex):
        self.index = index
        self.state = index.root_state

    @property
    def is_done(self) -> bool:
        """Whether the root object is complete (nothing more may follow)."""
        return self.index.is_done(self.state)

    def allowed_mask(self) -> int:
        return self.index.allowed_mask(self.state)

    def next_bitmask(self) -> list[int]:
        """int32 words (bit set = allowed) for ``ModelRunner.apply_bitmask``."""
        mask = self.allowed_mask()
        if not mask:
            raise InvalidRequestError(
                "JSON mode reached a state no token of this vocabulary can continue; "
                "the tokenizer lacks single-byte tokens, so response_format json_object cannot be used."
            )
        return self.index.mask_to_words(mask)

    def accept_token(self, token_id: int) -> bool:
        """Advance over ``token_id``'s bytes; False (state unchanged) if they break JSON."""
        data = self.index.token_bytes[token_id] if 0 <= token_id < self.index.vocab_size else None
        if not data:
            return False
        nxt = self.index.advance_bytes(self.state, data)
        if nxt == REJECT:
            return False
        self.state = nxt
        return True
