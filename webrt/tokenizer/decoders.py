"""Decoders of tokenizer.json: token strings back to text.

Each decoder maps a list of token strings to a new list (HF's `decode_chain`); the decoded text is
the concatenation of the final list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from webrt.errors import TokenizerError
from webrt.tokenizer.byte_level import token_bytes
from webrt.tokenizer.compose import compose
from webrt.tokenizer.unicode_regex import compile_pattern

DecodeChain = Callable[[list[str]], list[str]]

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def byte_level(tokens: list[str]) -> list[str]:
    """Byte-level chars -> bytes -> UTF-8 (invalid sequences become U+FFFD)."""
    return [b"".join(map(token_bytes, tokens)).decode("utf-8", "replace")]


def _metaspace(replacement: str, strip_first: bool) -> DecodeChain:
    def decode(tokens: list[str]) -> list[str]:
        out = []
        for index, token in enumerate(tokens):
            if index == 0 and strip_first:
                out.append(token.replace(replacement, ""))
            else:
                out.append(token.replace(replacement, " "))
        return out

    return decode


_WORDPIECE_CLEANUPS = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
    (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)


def cleanup_tokenization_spaces(text: str) -> str:
    """Remove spaces before punctuation and inside English contractions (HF `cleanup`)."""
    for dirty, clean in _WORDPIECE_CLEANUPS:
        text = text.replace(dirty, clean)
    return text


def _wordpiece(prefix: str, cleanup: bool) -> DecodeChain:
    def decode(tokens: list[str]) -> list[str]:
        out = []
        for index, token in enumerate(tokens):
            if index != 0:
                token = token.replace(prefix, "", 1) if token.startswith(prefix) else " " + token
            if cleanup:
                token = cleanup_tokenization_spaces(token)
            out.append(token)
        return out

    return decode


def _replace(spec: dict[str, Any]) -> DecodeChain:
    pattern = spec["pattern"]
    content: str = spec["content"]
    if "String" in pattern:
        literal: str = pattern["String"]
        if not literal:
            return lambda tokens: tokens
        return lambda tokens: [t.replace(literal, content) for t in tokens]
    regex = compile_pattern(pattern["Regex"])
    replacement = content.replace("\\", "\\\\")
    return lambda tokens: [regex.sub(replacement, t) for t in tokens]


def byte_token_value(token: str) -> int | None:
    """The byte of a `<0xNN>` token (Rust `u8::from_str_radix` rules), else None."""
    if len(token) != 6 or not token.startswith("<0x") or not token.endswith(">"):
        return None
    digits = token[3:5]
    if digits[0] == "+":
        digits = digits[1:]
    if not digits or not all(c in _HEX_DIGITS for c in digits):
        return None
    return int(digits, 16)


def byte_fallback(tokens: list[str]) -> list[str]:
    """Join runs of `<0xNN>` tokens into text; an invalid run gives one U+FFFD per byte."""
    out: list[str] = []
    pending = bytearray()
    for token in tokens:
        value = byte_token_value(token)
        if value is not None:
            pending.append(value)
            continue
        if pending:
            out.extend(_bytes_to_tokens(pending))
            pending = bytearray()
        out.append(token)
    if pending:
        out.extend(_bytes_to_tokens(pending))
    return out


def _bytes_to_tokens(data: bytearray) -> list[str]:
    try:
        return [data.decode("utf-8")]
    except UnicodeDecodeError:
        return ["\ufffd"] * len(data)


def fuse(tokens: list[str]) -> list[str]:
    return ["".join(tokens)]


def _strip(content: str, start: int, stop: int) -> DecodeChain:
    def strip_token(token: str) -> str:
        begin = 0
        while begin < min(start, len(token)) and token[begin] == content:
            begin += 1
        end = len(token)
        for _ in range(stop):
            if end > begin and token[end - 1] == content:
                end -= 1
            else:
                break
        return token[begin:end]

    return lambda tokens: [strip_token(t) for t in tokens]


def _bpe_suffix(suffix: str) -> DecodeChain:
    def decode(tokens: list[str]) -> list[str]:
        last = len(tokens) - 1
        return [t.replace(suffix, "" if i == last else " ") for i, t in enumerate(tokens)]

    return decode


def decoder_from_spec(spec: dict[str, Any] | None) -> DecodeChain | None:
    """Build the decoder described by tokenizer.json's `decoder` field (None: join with ' ')."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "ByteLevel":
        return byte_level
    if kind == "Metaspace":
        if "prepend_scheme" in spec:
            strip_first = spec["prepend_scheme"] != "never"
        else:
            strip_first = spec.get("add_prefix_space", True)
        return _metaspace(spec.get("replacement", "\u2581"), strip_first)
    if kind == "WordPiece":
        return _wordpiece(spec.get("prefix", "##"), spec.get("cleanup", True))
    if kind == "Replace":
        return _replace(spec)
    if kind == "ByteFallback":
        return byte_fallback
    if kind == "Fuse":
        return fuse
    if kind == "Strip":
        return _strip(spec.get("content", " "), spec.get("start", 0), spec.get("stop", 0))
    if kind == "BPEDecoder":
        return _bpe_suffix(spec.get("suffix", "</w>"))
    if kind == "Sequence":
        return compose([d for d in map(decoder_from_spec, spec["decoders"]) if d is not None])
    raise TokenizerError(f"decoder {kind!r} is not supported")
