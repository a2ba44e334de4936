"""Normalizers of tokenizer.json: functions from text to normalized text.

Only the resulting string matters to webrt (no offset tracking), so each normalizer is a plain
`str -> str` transformation with the semantics of the matching HF `tokenizers` normalizer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any, Literal

from webrt.errors import TokenizerError
from webrt.tokenizer import bert_unicode_tables
from webrt.tokenizer.byte_level import to_byte_chars
from webrt.tokenizer.compose import compose
from webrt.tokenizer.unicode_regex import (
    WHITE_SPACE_CHARS,
    compile_pattern,
    parse_hex_ranges,
    ranges_to_class_body,
)

Normalizer = Callable[[str], str]

_WHITE_SPACE_TO_SPACE = {ord(c): " " for c in WHITE_SPACE_CHARS}


def lowercase_per_char(text: str) -> str:
    """Lowercase char by char, as Rust's `char::to_lowercase` (no final-sigma context rule)."""
    if text.isascii():
        return text.lower()
    if "\u03a3" not in text:
        return text.lower()
    return "".join(c.lower() for c in text)


class _LazyRegex:
    """A regex built on first use."""

    def __init__(self, build: Callable[[], re.Pattern[str]]) -> None:
        self._build = build
        self._pattern: re.Pattern[str] | None = None

    def get(self) -> re.Pattern[str]:
        if self._pattern is None:
            self._pattern = self._build()
        return self._pattern


def _table_regex(table: str) -> re.Pattern[str]:
    return re.compile(f"[{ranges_to_class_body(parse_hex_ranges(table))}]+")


# HF classifies these with Unicode 8.0 tables (see bert_unicode_tables), not the running Unicode.
_CLEAN_TEXT_REMOVED = _LazyRegex(lambda: _table_regex(bert_unicode_tables.CLEAN_TEXT_REMOVED))
_NONSPACING_MARKS = _LazyRegex(lambda: _table_regex(bert_unicode_tables.NONSPACING_MARKS))
_ALL_MARKS = _LazyRegex(lambda: _table_regex(bert_unicode_tables.ALL_MARKS))
_CHINESE_CHAR = re.compile(
    "([\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b920-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f])"
)


def strip_nonspacing_marks(text: str) -> str:
    """Drop Mn characters (BertNormalizer's strip_accents, applied after NFD)."""
    if text.isascii():
        return text
    return _NONSPACING_MARKS.get().sub("", text)


def strip_marks(text: str) -> str:
    """Drop combining marks (the StripAccents normalizer; no NFD of its own)."""
    if text.isascii():
        return text
    return _ALL_MARKS.get().sub("", text)


class BertNormalizer:
    """BERT's cleanup: drop controls, map whitespace to ' ', pad CJK ideographs, strip accents, lowercase."""

    def __init__(
        self, clean_text: bool, handle_chinese_chars: bool, strip_accents: bool | None, lowercase: bool
    ) -> None:
        self.clean_text = clean_text
        self.handle_chinese_chars = handle_chinese_chars
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.lowercase = lowercase

    def __call__(self, text: str) -> str:
        if self.clean_text:
            text = _CLEAN_TEXT_REMOVED.get().sub("", text).translate(_WHITE_SPACE_TO_SPACE)
        if self.handle_chinese_chars and not text.isascii():
            text = _CHINESE_CHAR.sub(r" \1 ", text)
        if self.strip_accents and not text.isascii():
            text = strip_nonspacing_marks(unicodedata.normalize("NFD", text))
        if self.lowercase:
            text = lowercase_per_char(text)
        return text


UnicodeForm = Literal["NFC", "NFD", "NFKC", "NFKD"]
_UNICODE_FORMS: dict[str, UnicodeForm] = {"NFC": "NFC", "NFD": "NFD", "NFKC": "NFKC", "NFKD": "NFKD"}


def _unicode_form(form: UnicodeForm) -> Normalizer:
    def normalize(text: str) -> str:
        if text.isascii() or unicodedata.is_normalized(form, text):
            return text
        return unicodedata.normalize(form, text)

    return normalize


def _strip(left: bool, right: bool) -> Normalizer:
    def strip(text: str) -> str:
        if left:
            text = text.lstrip(WHITE_SPACE_CHARS)
        if right:
            text = text.rstrip(WHITE_SPACE_CHARS)
        return text

    return strip


def _replace(spec: dict[str, Any]) -> Normalizer:
    pattern = spec["pattern"]
    content: str = spec["content"]
    if "String" in pattern:
        literal: str = pattern["String"]
        if not literal:
            return lambda text: text
        return lambda text: text.replace(literal, content)
    regex = compile_pattern(pattern["Regex"])
    replacement = content.replace("\\", "\\\\")
    return lambda text: regex.sub(replacement, text)


def _prepend(prefix: str) -> Normalizer:
    return lambda text: prefix + text if text else text


_NMT_REMOVED = re.compile("[\x01-\x08\x0b\x0e-\x1f\x7f\x8f\x9f]+")
_NMT_TO_SPACE = {
    c: " " for c in [0x09, 0x0A, 0x0C, 0x0D, 0x1680, *range(0x200B, 0x2010), 0x2028, 0x2029,
                     0x2581, 0xFEFF, 0xFFFD]
}


def _nmt(text: str) -> str:
    return _NMT_REMOVED.sub("", text).translate(_NMT_TO_SPACE)


def normalizer_from_spec(spec: dict[str, Any] | None) -> Normalizer | None:
    """Build the normalizer described by tokenizer.json's `normalizer` field (None: identity)."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "Sequence":
        parts = [normalizer_from_spec(child) for child in spec["normalizers"]]
        present = [p for p in parts if p is not None]
        return compose(present)
    if kind in _UNICODE_FORMS:
        return _unicode_form(_UNICODE_FORMS[kind])
    if kind == "Lowercase":
        return lowercase_per_char
    if kind == "Strip":
        return _strip(spec.get("strip_left", True), spec.get("strip_right", True))
    if kind == "StripAccents":
        return strip_marks
    if kind == "Replace":
        return _replace(spec)
    if kind == "Prepend":
        return _prepend(spec["prepend"])
    if kind == "BertNormalizer":
        return BertNormalizer(
            spec.get("clean_text", True),
            spec.get("handle_chinese_chars", True),
            spec.get("strip_accents"),
            spec.get("lowercase", True),
        )
    if kind == "ByteLevel":
        return to_byte_chars
    if kind == "Nmt":
        return _nmt
    if kind == "Precompiled":
        if not spec.get("precompiled_charsmap"):
            return lambda text: text
        raise TokenizerError("normalizer Precompiled (SentencePiece charsmap) is not supported")
    raise TokenizerError(f"normalizer {kind!r} is not supported")
