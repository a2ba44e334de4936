"""Pre-tokenizers of tokenizer.json: split normalized text into the words the model sees.

Every pre-tokenizer maps `(pieces, first_at_start)` to new pieces, where `first_at_start` says
whether `pieces[0]` begins at offset 0 of the original text (only Metaspace's `prepend_scheme:
"first"` looks at it). Empty pieces are dropped, as in HF `tokenizers`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

from webrt.errors import TokenizerError
from webrt.tokenizer import bert_unicode_tables
from webrt.tokenizer.byte_level import to_byte_chars
from webrt.tokenizer.unicode_regex import (
    WHITE_SPACE_CHARS,
    category_ranges,
    compile_pattern,
    parse_hex_ranges,
    ranges_to_class_body,
    word_ranges,
)

# The GPT-2 pattern that ByteLevel(use_regex=true) splits with.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

Span = tuple[int, int]

_BEHAVIORS = ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")


class PreTokenizer(Protocol):
    def pre_tokenize(self, pieces: list[str], first_at_start: bool) -> tuple[list[str], bool]:
        """Split every piece; return the new pieces and whether the first is at text offset 0."""
        ...


def split_spans(
    length: int, matches: Iterable[Span], behavior: str, invert: bool = False
) -> list[Span]:
    """The kept (start, end) spans of a text of `length` chars split at `matches`.

    Mirrors `NormalizedString::split` of HF tokenizers for each `SplitDelimiterBehavior`.
    """
    segments: list[tuple[int, int, bool]] = []
    previous_end = 0
    for start, end in matches:
        if previous_end != start:
            segments.append((previous_end, start, invert))
        segments.append((start, end, not invert))
        previous_end = end
    if previous_end != length or not segments:
        segments.append((previous_end, length, invert))

    kept: list[list[int]] = []
    if behavior == "Removed":
        kept = [[s, e] for s, e, is_match in segments if not is_match]
    elif behavior == "Isolated":
        kept = [[s, e] for s, e, _ in segments]
    elif behavior == "Contiguous":
        previous_match = False
        for s, e, is_match in segments:
            if is_match == previous_match and kept:
                kept[-1][1] = e
            else:
                kept.append([s, e])
            previous_match = is_match
    elif behavior == "MergedWithPrevious":
        previous_match = False
        for s, e, is_match in segments:
            if is_match and not previous_match and kept:
                kept[-1][1] = e
            else:
                kept.append([s, e])
            previous_match = is_match
    elif behavior == "MergedWithNext":
        previous_match = False
        for s, e, is_match in reversed(segments):
            if is_match and not previous_match and kept:
                kept[-1][0] = s
            else:
                kept.append([s, e])
            previous_match = is_match
        kept.reverse()
    else:
        raise TokenizerError(f"split behavior {behavior!r} is not supported")
    return [(s, e) for s, e in kept if e > s]


class _SpanSplitter:
    """Base for pre-tokenizers defined by a match finder and a split behavior."""

    behavior = "Isolated"
    invert = False

    def find_matches(self, text: str) -> Iterable[Span]:
        raise NotImplementedError

    def pre_tokenize(self, pieces: list[str], first_at_start: bool) -> tuple[list[str], bool]:
        out: list[str] = []
        at_start = first_at_start
        for index, piece in enumerate(pieces):
            spans = split_spans(len(piece), self.find_matches(piece), self.behavior, self.invert)
            if index == 0 and spans:
                at_start = first_at_start and spans[0][0] == 0
            out.extend(piece[s:e] for s, e in spans)
        if pieces and not out:
            at_start = False
        return out, at_start


def _regex_pieces(pattern: re.Pattern[str], text: str) -> list[str]:
    """Isolated split at every match of `pattern` (fast path: matches that tile the text)."""
    if not text:
        return []
    if pattern.groups == 0:
        found = pattern.findall(text)
        if sum(map(len, found)) == len(text):
            return [piece for piece in found if piece] if "" in found else found
    pieces: list[str] = []
    previous_end = 0
    for match in pattern.finditer(text):
        start, end = match.span()
        if start > previous_end:
            pieces.append(text[previous_end:start])
        if end > start:
            pieces.append(text[start:end])
        previous_end = end
    if previous_end < len(text):
        pieces.append(text[previous_end:])
    return pieces


class Split(_SpanSplitter):
    """Split at a literal string or an (Oniguruma) regex with a given delimiter behavior."""

    def __init__(self, pattern: re.Pattern[str], behavior: str, invert: bool) -> None:
        if behavior not in _BEHAVIORS:
            raise TokenizerError(f"Split behavior {behavior!r} is not supported")
        self.pattern = pattern  # an empty literal matches between every two chars, as in HF
        self.behavior = behavior
        self.invert = invert

    def find_matches(self, text: str) -> Iterable[Span]:
        return (m.span() for m in self.pattern.finditer(text))

    def pre_tokenize(self, pieces: list[str], first_at_start: bool) -> tuple[list[str], bool]:
        if self.behavior == "Isolated" and not self.invert:
            out: list[str] = []
            for piece in pieces:
                out.extend(_regex_pieces(self.pattern, piece))
            return out, first_at_start and bool(out)
        return super().pre_tokenize(pieces, first_at_start)


class _CharClassSplitter(_SpanSplitter):
    """Every single char of a class is a match (HF's `Fn(char) -> bool` patterns)."""

    def __init__(self, char_class: re.Pattern[str], behavior: str) -> None:
        self.char_class = char_class
        self.behavior = behavior

    def find_matches(self, text: str) -> Iterable[Span]:
        return (m.span() for m in self.char_class.finditer(text))


class ByteLevel:
    """GPT-2 byte-level: optional prefix space, optional GPT-2 regex split, bytes -> chars."""

    def __init__(self, add_prefix_space: bool, use_regex: bool) -> None:
        self.add_prefix_space = add_prefix_space
        self.regex = compile_pattern(GPT2_PATTERN) if use_regex else None

    def pre_tokenize(self, pieces: list[str], first_at_start: bool) -> tuple[list[str], bool]:
        out: list[str] = []
        for piece in pieces:
            if not piece:
                continue
            if self.add_prefix_space and not piece.startswith(" "):
                piece = " " + piece
            if self.regex is not None:
                out.extend(map(to_byte_chars, _regex_pieces(self.regex, piece)))
            else:
                out.append(to_byte_chars(piece))
        return out, first_at_start and bool(out)


class Metaspace:
    """SentencePiece's `▁`: replace spaces, maybe prepend `▁`, split before each `▁`."""

    def __init__(self, replacement: str, prepend_scheme: str, split: bool) -> None:
        if prepend_scheme not in ("always", "first", "never"):
            raise TokenizerError(f"Metaspace prepend_scheme {prepend_scheme!r} is not supported")
        self.replacement = replacement
        self.prepend_scheme = prepend_scheme
        self.split = split

    def pre_tokenize(self, pieces: list[str], first_at_start: bool) -> tuple[list[str], bool]:
        rep = self.replacement
        out: list[str] = []
        for index, piece in enumerate(pieces):
            if not piece:
                continue
            piece = piece.replace(" ", rep)
            if not piece.startswith(rep) and (
                self.prepend_scheme == "always"
                or (self.prepend_scheme == "first" and index == 0 and first_at_start)
            ):
                piece = rep + piece
            if not self.split:
                out.append(piece)
                continue
            parts = piece.split(rep)
            if parts[0]:
                out.append(parts[0])
            out.extend(rep + part for part in parts[1:])
        return out, first_at_start and bool(out)


class _RegexFindAll:
    """Keep exactly the matches of a regex (whitespace removed, everything else isolated)."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def pre_tokenize(self, pieces: list[str], first_at_start: bool) -> tuple[list[str], bool]:
        out: list[str] = []
        at_start = first_at_start
        for index, piece in enumerate(pieces):
            if index == 0:
                first = self.pattern.search(piece)
                at_start = first_at_start and first is not None and first.start() == 0
            out.extend(self.pattern.findall(piece))
        return out, at_start and bool(out)


class SequencePreTokenizer:
    def __init__(self, children: list[PreTokenizer]) -> None:
        self.children = children

    def pre_tokenize(self, pieces: list[str], first_at_start: bool) -> tuple[list[str], bool]:
        for child in self.children:
            pieces, first_at_start = child.pre_tokenize(pieces, first_at_start)
        return pieces, first_at_start


def _char_class(ranges: list[tuple[int, int]], extra: str = "") -> str:
    points = list(ranges) + [(ord(c), ord(c)) for c in extra]
    return ranges_to_class_body(sorted(points))


def _punctuation_class() -> str:
    """HF's `is_ascii_punctuation() || is_punctuation()` (P as of Unicode 8.0, see the table)."""
    return _char_class(parse_hex_ranges(bert_unicode_tables.PUNCTUATION))


def _white_space_class() -> str:
    return _char_class([], WHITE_SPACE_CHARS)


def _word_class() -> str:
    return _char_class(word_ranges())


def bert_pre_tokenizer() -> PreTokenizer:
    """Split on whitespace (dropped) and isolate each punctuation char."""
    punct, space = _punctuation_class(), _white_space_class()
    return _RegexFindAll(re.compile(f"[^{space}{punct}]+|[{punct}]"))


def pre_tokenizer_from_spec(spec: dict[str, Any] | None) -> PreTokenizer | None:
    """Build the pre-tokenizer described by tokenizer.json's `pre_tokenizer` field."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "Sequence":
        children = [pre_tokenizer_from_spec(child) for child in spec["pretokenizers"]]
        return SequencePreTokenizer([c for c in children if c is not None])
    if kind == "ByteLevel":
        return ByteLevel(spec.get("add_prefix_space", True), spec.get("use_regex", True))
    if kind == "Split":
        pattern = spec["pattern"]
        if "String" in pattern:
            compiled = re.compile(re.escape(pattern["String"]))
        else:
            compiled = compile_pattern(pattern["Regex"])
        return Split(compiled, spec.get("behavior", "Isolated"), spec.get("invert", False))
    if kind == "Metaspace":
        replacement = spec.get("replacement", "\u2581")
        if "prepend_scheme" in spec:
            scheme = spec["prepend_scheme"]
        else:
            scheme = "always" if spec.get("add_prefix_space", True) else "never"
        return Metaspace(replacement, scheme, spec.get("split", True))
    if kind == "BertPreTokenizer":
        return bert_pre_tokenizer()
    if kind == "Whitespace":
        word, space = _word_class(), _white_space_class()
        return _RegexFindAll(re.compile(f"[{word}]+|[^{word}{space}]+"))
    if kind == "WhitespaceSplit":
        return _RegexFindAll(re.compile(f"[^{_white_space_class()}]+"))
    if kind == "Punctuation":
        punct = re.compile(f"[{_punctuation_class()}]")
        return _CharClassSplitter(punct, spec.get("behavior", "Isolated"))
    if kind == "Digits":
        digits = re.compile(f"[{_char_class(list(category_ranges('N')))}]")
        behavior = "Isolated" if spec.get("individual_digits", False) else "Contiguous"
        return _CharClassSplitter(digits, behavior)
    if kind == "CharDelimiterSplit":
        return _CharClassSplitter(re.compile(re.escape(spec["delimiter"])), "Removed")
    raise TokenizerError(f"pre-tokenizer {kind!r} is not supported")

