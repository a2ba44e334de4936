"""Tokenization models of tokenizer.json: BPE (byte-level or SentencePiece-style) and WordPiece.

A model maps one pre-tokenized word to token ids. Both cache the result per word.
"""

from __future__ import annotations

import heapq
import re
from typing import Any, Protocol

from webrt.errors import TokenizerError

_NO_MERGE = 1 << 62
#: Words whose ids a model remembers; the cache is emptied when full, so a long chat keeps the
#: heap bounded (about 1 MiB of Python objects; HF tokenizers keeps 10,000 words too).
_CACHE_MAX_ENTRIES = 10_000
_CACHE_MAX_WORD_CHARS = 256
# Words with more symbols than this merge with a heap (O(n log n)) instead of list scans.
_HEAP_MERGE_MIN_SYMBOLS = 128
_SPIECE_SPACE = "\u2581"
_CHUNK_MIN_CHARS = 16


class Model(Protocol):
    vocab: dict[str, int]

    def tokenize(self, word: str) -> list[int]:
        """Token ids of one pre-tokenized word."""
        ...


def _parse_merges(raw: list[Any]) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    for entry in raw:
        if isinstance(entry, str):
            parts = entry.split(" ")
            if len(parts) != 2:
                raise TokenizerError(f"BPE merge {entry!r} is not two space-separated tokens")
            merges.append((parts[0], parts[1]))
        else:
            first, second = entry
            merges.append((first, second))
    return merges


class BPE:
    """Byte-pair encoding with HF semantics: lowest merge rank first, leftmost on ties."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        *,
        unk_token: str | None = None,
        byte_fallback: bool = False,
        fuse_unk: bool = False,
        continuing_subword_prefix: str | None = None,
        end_of_word_suffix: str | None = None,
        ignore_merges: bool = False,
    ) -> None:
        self.vocab = vocab
        # Later duplicates win, as when HF collects the merges into a map.
        self.ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self.unk_token = unk_token
        self.byte_fallback = byte_fallback
        self.fuse_unk = fuse_unk
        self.prefix = continuing_subword_prefix or ""
        self.suffix = end_of_word_suffix or ""
        self.ignore_merges = ignore_merges
        self._cache: dict[str, list[int]] = {}
        # `<0xNN>` token of each byte, or None where the vocabulary lacks it.
        self._byte_tokens: list[str | None] | None = None
        if byte_fallback:
            names = [f"<0x{b:02X}>" for b in range(256)]
            self._byte_tokens = [name if name in vocab else None for name in names]
        self._chunk_pattern = self._independent_chunks()
        if unk_token is not None and unk_token not in vocab:
            raise TokenizerError(f"BPE unk_token {unk_token!r} is not in the vocabulary")

    def _independent_chunks(self) -> re.Pattern[str] | None:
        """SentencePiece vocabularies (no pre-tokenizer: a whole line is one word) never hold a
        token with `▁` after another char, so no merge crosses the start of a `▁` run. Then
        each chunk `▁*[^▁]+` merges independently of the others and can be cached on its own.
        """
        if self.ignore_merges or _SPIECE_SPACE not in self.vocab or self.prefix or self.suffix:
            return None
        crossing = re.compile(f"[^{_SPIECE_SPACE}]{_SPIECE_SPACE}")
        if any(crossing.search(token) for token in self.vocab):
            return None
        return re.compile(f"{_SPIECE_SPACE}*[^{_SPIECE_SPACE}]+|{_SPIECE_SPACE}+")

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> BPE:
        dropout = spec.get("dropout")
        if dropout:
            raise TokenizerError("BPE dropout is not supported (it makes encoding random)")
        return cls(
            spec["vocab"],
            _parse_merges(spec.get("merges", [])),
            unk_token=spec.get("unk_token"),
            byte_fallback=spec.get("byte_fallback", False),
            fuse_unk=spec.get("fuse_unk", False),
            continuing_subword_prefix=spec.get("continuing_subword_prefix"),
            end_of_word_suffix=spec.get("end_of_word_suffix"),
            ignore_merges=spec.get("ignore_merges", False),
        )

    def tokenize(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if not word:
            return []
        if self.ignore_merges:
            whole = self.vocab.get(word)
            if whole is not None:
                return [whole]
        chunks = None
        if self._chunk_pattern is not None and len(word) > _CHUNK_MIN_CHARS:
            chunks = self._chunk_pattern.findall(word)
        if chunks is not None and len(chunks) > 1:
            ids = [i for chunk in chunks for i in self.tokenize(chunk)]
        else:
            ids = self._merge_word(word)
        if len(word) <= _CACHE_MAX_WORD_CHARS:
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def _merge_word(self, word: str) -> list[int]:
        symbols = self._initial_symbols(word)
        if len(symbols) > 1:
            if len(symbols) < _HEAP_MERGE_MIN_SYMBOLS:
                symbols = self._merge_by_scan(symbols)
            else:
                symbols = self._merge_by_heap(symbols)
        vocab = self.vocab
        try:
            return [vocab[s] for s in symbols]
        except KeyError as exc:
            raise TokenizerError(f"BPE merge result {exc.args[0]!r} is not in the vocabulary") from None

    def _initial_symbols(self, word: str) -> list[str]:
        vocab = self.vocab
        if not self.prefix and not self.suffix and self._byte_tokens is None and self.unk_token is None:
            # Common byte-level case: every char is a base token (unknown chars are dropped).
            chars = list(word)
            for c in chars:
                if c not in vocab:
                    return [c for c in chars if c in vocab]
            return chars
        symbols: list[str] = []
        unk_pending = False  # an unk symbol waits to be emitted (fused unks extend it)
        last = len(word) - 1
        for index, char in enumerate(word):
            piece = char
            if index > 0 and self.prefix:
                piece = self.prefix + piece
            if index == last and self.suffix:
                piece = piece + self.suffix
            if piece in vocab:
                if unk_pending:
                    symbols.append(self.unk_token)  # type: ignore[arg-type]
                    unk_pending = False
                symbols.append(piece)
                continue
            if self._byte_tokens is not None:
                byte_tokens = [self._byte_tokens[b] for b in piece.encode("utf-8")]
                if None not in byte_tokens:
                    if unk_pending:
                        symbols.append(self.unk_token)  # type: ignore[arg-type]
                        unk_pending = False
                    symbols.extend(byte_tokens)  # type: ignore[arg-type]
                    continue
            if self.unk_token is not None:
                if unk_pending and not self.fuse_unk:
                    symbols.append(self.unk_token)
                unk_pending = True
        if unk_pending:
            symbols.append(self.unk_token)  # type: ignore[arg-type]
        return symbols

    def _merge_by_scan(self, symbols: list[str]) -> list[str]:
        get = self.ranks.get
        cut = len(self.prefix)
        pair_ranks = [get(pair, _NO_MERGE) for pair in zip(symbols, symbols[1:], strict=False)]
        while True:
            best = min(pair_ranks)
            if best == _NO_MERGE:
                return symbols
            i = pair_ranks.index(best)
            merged = symbols[i] + symbols[i + 1][cut:]
            symbols[i : i + 2] = [merged]
            del pair_ranks[i]
            if not pair_ranks:
                return symbols
            if i > 0:
                pair_ranks[i - 1] = get((symbols[i - 1], merged), _NO_MERGE)
            if i < len(pair_ranks):
                pair_ranks[i] = get((merged, symbols[i + 1]), _NO_MERGE)

    def _merge_by_heap(self, symbols: list[str]) -> list[str]:
        get = self.ranks.get
        cut = len(self.prefix)
        count = len(symbols)
        nxt = list(range(1, count + 1))
        nxt[-1] = -1
        prv = list(range(-1, count - 1))
        alive = [True] * count
        pairs = zip(symbols, symbols[1:], strict=False)
        heap = [(r, i) for i, pair in enumerate(pairs) if (r := get(pair)) is not None]
        heapq.heapify(heap)
        while heap:
            rank, pos = heapq.heappop(heap)
            right = nxt[pos]
            if not alive[pos] or right < 0 or get((symbols[pos], symbols[right])) != rank:
                continue  # stale entry
            merged = symbols[pos] + symbols[right][cut:]
            symbols[pos] = merged
            alive[right] = False
            after = nxt[right]
            nxt[pos] = after
            if after >= 0:
                prv[after] = pos
            before = prv[pos]
            if before >= 0:
                r = get((symbols[before], merged))
                if r is not None:
                    heapq.heappush(heap, (r, before))
            if after >= 0:
                r = get((merged, symbols[after]))
                if r is not None:
                    heapq.heappush(heap, (r, pos))
        return [s for s, keep in zip(symbols, alive, strict=True) if keep]


class WordPiece:
    """Greedy longest-match-first WordPiece (BERT) with `##` continuations."""

    def __init__(
        self,
        vocab: dict[str, int],
        unk_token: str = "[UNK]",
        continuing_subword_prefix: str = "##",
        max_input_chars_per_word: int = 100,
    ) -> None:
        self.vocab = vocab
        self.unk_token = unk_token
        self.prefix = continuing_subword_prefix
        self.max_input_chars_per_word = max_input_chars_per_word
        self._longest_token = max((len(t) for t in vocab), default=1)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> WordPiece:
        return cls(
            spec["vocab"],
            spec.get("unk_token", "[UNK]"),
            spec.get("continuing_subword_prefix", "##"),
            spec.get("max_input_chars_per_word", 100),
        )

    def _unk(self) -> list[int]:
        unk_id = self.vocab.get(self.unk_token)
        if unk_id is None:
            raise TokenizerError(f"WordPiece unk_token {self.unk_token!r} is not in the vocabulary")
        return [unk_id]

    def tokenize(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if len(word) > self.max_input_chars_per_word:
            return self._unk()
        vocab = self.vocab
        ids: list[int] = []
        start = 0
        length = len(word)
        while start < length:
            end = min(length, start + self._longest_token)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                found = vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                ids = self._unk()
                break
            ids.append(found)
            start = end
        if len(self._cache) >= _CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[word] = ids
        return ids


def model_from_spec(spec: dict[str, Any]) -> Model:
    """Build the model described by tokenizer.json's `model` field."""
    kind = spec.get("type")
    if kind is None:
        kind = "BPE" if "merges" in spec else "WordPiece" if "max_input_chars_per_word" in spec else None
    if kind == "BPE":
        return BPE.from_spec(spec)
    if kind == "WordPiece":
        return WordPiece.from_spec(spec)
    raise TokenizerError(f"model {kind!r} is not supported (webrt supports BPE and WordPiece)")
