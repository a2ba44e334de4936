"""Added (and special) tokens: found in the text and split out before the model runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webrt.tokenizer.unicode_regex import WHITE_SPACE, ranges_to_class_body, word_ranges


@dataclass(frozen=True)
class AddedToken:
    """One entry of tokenizer.json's `added_tokens`."""

    id: int
    content: str
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = False
    special: bool = False

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> AddedToken:
        return cls(
            id=int(spec["id"]),
            content=spec["content"],
            single_word=spec.get("single_word", False),
            lstrip=spec.get("lstrip", False),
            rstrip=spec.get("rstrip", False),
            normalized=spec.get("normalized", not spec.get("special", False)),
            special=spec.get("special", False),
        )


# (text, token id or None for plain text, whether the piece starts at offset 0 of the input)
Segment = tuple[str, "int | None", bool]

_word_char: re.Pattern[str] | None = None


def _is_word_char(char: str) -> bool:
    """Unicode regex `\\w` (HF tests single_word boundaries with it)."""
    global _word_char
    if _word_char is None:
        _word_char = re.compile(f"[{ranges_to_class_body(word_ranges())}]")
    return _word_char.match(char) is not None


class _Matcher:
    """Leftmost-longest search for a set of literal strings."""

    def __init__(self, tokens: dict[str, AddedToken]) -> None:
        self.tokens = tokens
        alternatives = sorted((c for c in tokens if c), key=len, reverse=True)
        self.regex = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None

    def split(self, text: str, at_start: bool) -> list[Segment]:
        """Cut `text` around the tokens, applying single_word / lstrip / rstrip like HF."""
        if self.regex is None or not text:
            return [(text, None, at_start)]
        segments: list[Segment] = []
        consumed = 0  # end of the last emitted segment
        length = len(text)
        for match in self.regex.finditer(text):
            start, stop = match.span()
            token = self.tokens[match.group()]
            if token.single_word:
                start_ok = start == 0 or not _is_word_char(text[start - 1])
                stop_ok = stop == length or not _is_word_char(text[stop])
                if not (start_ok and stop_ok):
                    continue
            if token.lstrip:
                new_start = start
                while new_start > 0 and text[new_start - 1] in WHITE_SPACE:
                    new_start -= 1
                start = max(new_start, consumed)
            if token.rstrip:
                while stop < length and text[stop] in WHITE_SPACE:
                    stop += 1
            if consumed < start:
                segments.append((text[consumed:start], None, at_start and consumed == 0))
            segments.append((text[start:stop], token.id, at_start and start == 0))
            consumed = stop
        if consumed < length:
            segments.append((text[consumed:], None, at_start and consumed == 0))
        return segments


class AddedVocabulary:
    """Splits text at added tokens, normalizing the plain pieces in between (HF's two passes)."""

    def __init__(self, tokens: list[AddedToken], normalizer: Callable[[str], str] | None) -> None:
        self.tokens = tokens
        self.normalizer = normalizer
        raw: dict[str, AddedToken] = {}
        normalized: dict[str, AddedToken] = {}
        for token in sorted(tokens, key=lambda t: not t.special):  # special ones first, as HF
            if token.normalized:
                key = normalizer(token.content) if normalizer else token.content
                normalized.setdefault(key, token)
            else:
                raw.setdefault(token.content, token)
        self._raw = _Matcher(raw)
        self._normalized = _Matcher(normalized)

    def split(self, text: str) -> list[Segment]:
        """Segments of `text`: added tokens with their id, normalized plain text with None."""
        out: list[Segment] = []
        normalize = self.normalizer
        for piece, token_id, at_start in self._raw.split(text, True):
            if not piece:
                continue
            if token_id is not None:
                out.append((piece, token_id, at_start))
                continue
            if normalize is not None:
                piece = normalize(piece)
            for sub, sub_id, sub_at_start in self._normalized.split(piece, at_start):
                if sub:
                    out.append((sub, sub_id, sub_at_start))
        return out
