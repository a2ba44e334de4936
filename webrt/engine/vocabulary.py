"""The raw bytes each token id stands for (MLC's ``token_postproc_method``).

Grammar-constrained decoding and ``logprobs[].bytes`` need the bytes a token adds to the
output, not its vocabulary spelling: byte-level BPE spells bytes with GPT-2's printable
characters, SentencePiece spells spaces as ``▁`` and raw bytes as ``<0xNN>``. Pure Python.
"""

from __future__ import annotations

from webrt.tokenizer import Tokenizer
from webrt.tokenizer.byte_level import token_bytes as byte_level_token_bytes
from webrt.tokenizer.decoders import byte_token_value

SENTENCEPIECE_SPACE = "\u2581"
METHODS = ("byte_level", "byte_fallback", "raw")


def postproc_method(chat_config: dict) -> str:
    """``tokenizer_info.token_postproc_method`` (or the older top-level field), default raw."""
    info = chat_config.get("tokenizer_info") or {}
    method = info.get("token_postproc_method") or chat_config.get("token_table_postproc_method") or "raw"
    return method if method in METHODS else "raw"


def token_bytes_of(token: str, method: str) -> bytes:
    """The bytes one vocabulary string decodes to under ``method``."""
    if method == "byte_level":
        return byte_level_token_bytes(token)
    if method == "byte_fallback":
        value = byte_token_value(token)
        if value is not None:
            return bytes([value])
        return token.replace(SENTENCEPIECE_SPACE, " ").encode("utf-8")
    return token.encode("utf-8")


def token_byte_table(tokenizer: Tokenizer, method: str, size: int) -> list[bytes | None]:
    """Bytes of every id below ``size``; ``None`` for special tokens and ids the tokenizer lacks.

    ``size`` is the model's vocabulary (its logits width), which may exceed the tokenizer's.
    """
    special = tokenizer.special_token_ids
    table: list[bytes | None] = []
    for token_id in range(size):
        token = tokenizer.id_to_token(token_id)
        if token is None or token_id in special:
            table.append(None)
        else:
            table.append(token_bytes_of(token, method))
    return table
