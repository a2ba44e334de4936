"""GPT-2's reversible byte <-> printable-character map used by byte-level BPE."""

from __future__ import annotations


def _bytes_to_unicode() -> list[str]:
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_TO_CHAR: list[str] = _bytes_to_unicode()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
# str.translate table taking a latin-1 decoded byte string to byte-level characters.
_LATIN1_TO_BYTE_CHARS = {b: c for b, c in enumerate(BYTE_TO_CHAR) if chr(b) != c}


def to_byte_chars(text: str) -> str:
    """Encode `text` as UTF-8 and spell each byte with its byte-level character."""
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_CHARS)


def token_bytes(token: str) -> bytes:
    """Bytes of a byte-level token; a token with a char outside the map is taken as UTF-8."""
    try:
        return bytes([CHAR_TO_BYTE[c] for c in token])
    except KeyError:
        return token.encode("utf-8")
