"""Stop strings: cut generated text at the first stop string, without ever leaking part of one.

Text arrives in pieces (one per token, from the streaming detokenizer). A stop string may be
split across pieces, so the matcher holds back the longest tail of the text that could still
grow into a stop string, and releases it once it cannot (or at the end). Pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStringMatcher:
    """Feed text with :meth:`put`; it returns what is safe to show and whether a stop string hit."""

    def __init__(self, stop_strings: Iterable[str]):
        self.stop_strings = [s for s in dict.fromkeys(stop_strings) if s]
        self.stopped = False
        self._held = ""

    def put(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return (text now safe to emit, whether a stop string was found).

        Once a stop string is found, everything from it on is dropped and later calls return
        ``("", True)``.
        """
        if self.stopped:
            return "", True
        buffer = self._held + text
        first = -1
        for stop in self.stop_strings:
            at = buffer.find(stop)
            if at != -1 and (first == -1 or at < first):
                first = at
        if first != -1:
            self._held = ""
            self.stopped = True
            return buffer[:first], True
        keep = self._partial_match_length(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """Release the held-back tail (the generation ended without completing a stop string)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_match_length(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stop_strings:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:length]):
                    best = length
                    break
        return best
