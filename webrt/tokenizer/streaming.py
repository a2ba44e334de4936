"""Incremental detokenization for streamed generation."""

from __future__ import annotations

from webrt.tokenizer.tokenizer import Tokenizer

_REPLACEMENT_CHAR = "\ufffd"


class StreamingDetokenizer:
    """Turns generated token ids into text as they arrive.

    `put(id)` returns only new, complete text: text that ends in an unfinished UTF-8 sequence
    (decoded as U+FFFD) is held back until the next tokens complete it, and `flush()` returns
    whatever is left. The concatenation of all returned pieces equals
    `tokenizer.decode(all_ids)`.

    Each step decodes a short window: the ids of the last emitted piece (as context) plus the
    new ids, and emits what the new ids add to the context's text. Decoding with context keeps
    spaces that a decoder strips from the first token of a sequence (SentencePiece's leading
    `▁`, WordPiece's word joins): that rule applies only to the very first token of the stream.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._context_start = 0  # first id of the window: start of the last emitted piece
        self._pending_start = 0  # first id not yet emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, self.skip_special_tokens)

    def put(self, token_id: int) -> str:
        """Add one token id; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """Return all text still held back (e.g. an incomplete byte sequence at the end)."""
        return self._emit(final=True)

    def reset(self) -> None:
        """Forget the stream (start a new sequence)."""
        self._ids.clear()
        self._context_start = self._pending_start = 0

    def _emit(self, final: bool) -> str:
        if self._pending_start >= len(self._ids):
            return ""
        context = self._ids[self._context_start : self._pending_start]
        context_text = self._decode(context) if context else ""
        window_text = self._decode(self._ids[self._context_start :])
        if not final and (
            window_text.endswith(_REPLACEMENT_CHAR) or len(window_text) <= len(context_text)
        ):
            return ""
        if not window_text.startswith(context_text):
            # A decoder whose output is not prefix-stable: fall back to the whole stream.
            emitted = self._decode(self._ids[: self._pending_start])
            full = self._decode(self._ids)
            new_text = full[len(emitted) :] if full.startswith(emitted) else ""
        else:
            new_text = window_text[len(context_text) :]
        self._context_start = self._pending_start
        self._pending_start = len(self._ids)
        return new_text
