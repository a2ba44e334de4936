"""Drive one model library through the paged KV cache: prefill, decode, sample on the device.

Pure Python over :class:`webrt.engine.backend.Backend`; the same code runs natively and in the
browser. One sequence (id 0) lives in the cache. Prompts are prefilled in chunks of at most
``prefill_chunk_size`` tokens; the library's memory plan is sized for that bound. The caller
keeps the cache within the window (the engine checks each prompt once, when a request arrives).
"""

from __future__ import annotations

import struct
from typing import Any, Iterator, Sequence

from webrt.chat_config import WindowConfig
from webrt.engine.backend import Backend
from webrt.errors import ModelLibraryError

PAGE_SIZE = 16


def kv_cache_pages(capacity: int, sliding_window: bool, sequences: int = 1, page_size: int = PAGE_SIZE) -> int:
    """Pages TVM's paged KV cache (0.27, ``paged_kv_cache.cc``) allocates per layer for a capacity of
    ``capacity`` tokens: one page more than the capacity needs, plus two per sequence with a
    sliding window. The one rule the compiler's memory plan and the browser's GPU check share."""
    return -(-capacity // page_size) + 1 + (2 * sequences if sliding_window else 0)
#: At or below this temperature sampling is argmax (greedy).
GREEDY_TEMPERATURE = 1e-5
REQUIRED_FUNCTIONS = ("embed", "decode", "create_tir_paged_kv_cache", "argmax_logits", "softmax_with_temperature")


def _pack(fmt: str, values: Sequence[Any]) -> bytes:
    return struct.pack(f"<{len(values)}{fmt}", *values)


class ModelRunner:
    """The KV cache and the per-step calls for a single conversation."""

    def __init__(self, backend: Backend, window: WindowConfig, vocab_size: int = 0):
        """``vocab_size`` counts for a library that does not record its own."""
        self.backend = backend
        self.window = window
        missing = [f for f in REQUIRED_FUNCTIONS if not backend.has_function(f)]
        if missing:
            raise ModelLibraryError(f"the model library lacks {', '.join(missing)}; recompile it with `webrt compile`.")
        meta = backend.metadata
        self.vocab_size = int(meta.get("webrt", {}).get("vocab_size") or meta.get("vocab_size") or vocab_size)
        lib_chunk = int(meta.get("prefill_chunk_size", window.prefill_chunk_size))
        self.chunk = max(1, min(window.prefill_chunk_size, lib_chunk))
        g = backend.global_function
        self._begin_forward = g("vm.builtin.kv_state_begin_forward")
        self._end_forward = g("vm.builtin.kv_state_end_forward")
        self._add_sequence = g("vm.builtin.kv_state_add_sequence")
        self._clear = g("vm.builtin.kv_state_clear")
        self._popn = g("vm.builtin.kv_state_popn")
        self._embed = backend.function("embed")
        self._decode = backend.function("decode")
        self._prefill = backend.function("prefill") if backend.has_function("prefill") else None
        self._argmax = backend.function("argmax_logits")
        shape = backend.shape_tuple
        self.kv_cache = backend.function("create_tir_paged_kv_cache")(
            shape([1]),
            shape([window.max_total_length]),
            shape([self.chunk]),
            shape([PAGE_SIZE]),
            shape([1 if window.uses_sliding_window else 0]),
        )
        self._seq_zero = shape([0])
        self._one_token: Any = None
        self.total_tokens = 0  # tokens currently in the cache
        self.reset()

    # --- cache --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the cache and start sequence 0 again."""
        self._clear(self.kv_cache)
        self._add_sequence(self.kv_cache, 0)
        if self.window.uses_sliding_window:
            # TVM's window counts the past tokens a query sees besides itself; HF's (and the
            # model's) counts the query too, so a window of W here is W - 1 there.
            self.backend.global_function("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")(
                self.kv_cache, 0, self.window.sliding_window_size - 1, max(self.window.attention_sink_size, 0)
            )
        self.total_tokens = 0

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` tokens of the cache."""
        if n <= 0:
            return
        if n > self.total_tokens:
            raise ValueError(f"cannot roll back {n} tokens, the cache holds {self.total_tokens}")
        self._popn(self.kv_cache, 0, n)
        self.total_tokens -= n

    # --- forward --------------------------------------------------------------------------------
    def _token_ids(self, tokens: Sequence[int]) -> Any:
        """The ids on the device; a decode step reuses one tensor rather than allocating one."""
        data = _pack("i", tokens)
        if len(tokens) != 1:
            return self.backend.upload(data, (len(tokens),), "int32")
        if self._one_token is None:
            self._one_token = self.backend.upload(data, (1,), "int32")
        else:
            self.backend.write(self._one_token, data)
        return self._one_token

    def _forward(self, tokens: Sequence[int]) -> Any:
        n = len(tokens)
        embedding = self._embed(self._token_ids(tokens), self.backend.params)
        hidden = embedding.shape[-1]
        embedding = self.backend.view(embedding, (1, n, hidden))
        self._begin_forward(self.kv_cache, self._seq_zero, self.backend.shape_tuple([n]))
        fn = self._prefill if (n > 1 and self._prefill is not None) else self._decode
        if n > 1 and self._prefill is None:
            raise ModelLibraryError("the model library has no prefill function; recompile it with `webrt compile`.")
        out = fn(embedding, self.kv_cache, self.backend.params)
        self._end_forward(self.kv_cache)
        self.total_tokens += n
        return out[0]

    def prefill(self, tokens: Sequence[int]) -> Any:
        """Append ``tokens`` to the cache; return the logits tensor [1, 1, V] after the last one."""
        logits = None
        for logits, _ in self.prefill_chunks(tokens):
            pass
        return logits

    def prefill_chunks(self, tokens: Sequence[int]) -> Iterator[tuple[Any, int]]:
        """Append ``tokens`` one forward call at a time; after each call yield (its logits
        tensor [1, 1, V], the tokens it took). Between two calls the cache holds exactly the
        tokens of the calls so far, so a caller may stop (or yield to the event loop) there."""
        if not tokens:
            raise ValueError("prefill needs at least one token")
        start = 0
        while start < len(tokens):
            size = self._chunk_size_at(len(tokens) - start)
            logits = self._forward(tokens[start : start + size])
            start += size
            yield logits, size

    def _chunk_size_at(self, remaining: int) -> int:
        """How many tokens the next forward call may take.

        With a sliding window, TVM's paged KV cache slides once per call, not per query: a
        multi-token call is exact only while the cache has not reached the window yet. Past
        that point prompts advance one token at a time (exact, like decoding; slower).
        """
        size = min(self.chunk, remaining)
        if self.window.uses_sliding_window:
            room = self.window.sliding_window_size - self.total_tokens
            size = min(size, room) if room > 1 else 1
        return size

    def decode(self, token: int) -> Any:
        """Append one token; return the logits tensor [1, 1, V]."""
        return self._forward([token])

    # --- logits & sampling --------------------------------------------------------------------
    def logits_to_list(self, logits: Any) -> list[float]:
        """Copy the logits to the host as Python floats (for logprobs and tests)."""
        data = self.backend.download(logits)
        return list(struct.unpack(f"<{len(data) // 4}f", data))

    def argmax(self, logits: Any) -> int:
        """Greedy token id; only 4 bytes come back from the device."""
        return struct.unpack("<i", self.backend.download(self._argmax(logits), 4))[0]

    def probs(self, logits: Any, temperature: float) -> Any:
        """softmax(logits / temperature) on the device, shaped [1, 1, V]."""
        t = self.backend.upload(_pack("f", [temperature]), (1,), "float32")
        return self.backend.function("softmax_with_temperature")(logits, t)

    def sample(self, logits: Any, temperature: float, top_p: float, uniform: float, sort: bool = False) -> int:
        """Draw a token on the device; only the 4-byte id comes back.

        The inverse CDF runs over the probabilities in token-id order: all of them
        (``sample_from_probs``) or, with a top-p cut, those above the cut's floor
        (``sample_top_p_from_probs``); neither sorts. Libraries without these (MLC's), or
        ``sort=True`` (for benchmarks), sort first (``argsort_probs`` + ``sample_with_top_p``,
        WebLLM's pair).
        """
        if temperature <= GREEDY_TEMPERATURE:
            return self.argmax(logits)
        b = self.backend
        probs = b.view(self.probs(logits, temperature), (1, self.vocab_size))
        u = b.upload(_pack("f", [uniform]), (1,), "float32")
        sort_free = "sample_from_probs" if top_p >= 1.0 else "sample_top_p_from_probs"
        if sort or not b.has_function(sort_free):
            sorted_probs, sorted_ids = b.function("argsort_probs")(probs)
            token = b.function("sample_with_top_p")(
                sorted_probs,
                sorted_ids,
                u,
                b.upload(_pack("i", [0]), (1,), "int32"),
                b.upload(_pack("f", [top_p]), (1,), "float32"),
            )
        elif top_p >= 1.0:
            token = b.function("sample_from_probs")(probs, u)
        else:
            token = b.function("sample_top_p_from_probs")(
                probs, u, b.upload(_pack("i", [0]), (1,), "int32"), b.upload(_pack("f", [top_p]), (1,), "float32")
            )
        return struct.unpack("<i", b.download(token, 4))[0]

    def apply_penalties(
        self, logits: Any, token_counts: dict[int, int], presence: float, frequency: float, repetition: float
    ) -> None:
        """OpenAI presence/frequency and CTRL-style repetition penalties, in place on the device."""
        if not token_counts:
            return
        ids = sorted(token_counts)
        b = self.backend
        b.function("apply_penalty_inplace")(
            b.view(logits, (1, self.vocab_size)),
            b.upload(_pack("i", [0]), (1,), "int32"),
            b.upload(_pack("i", [0] * len(ids)), (len(ids),), "int32"),
            b.upload(_pack("i", ids), (len(ids),), "int32"),
            b.upload(_pack("i", [token_counts[i] for i in ids]), (len(ids),), "int32"),
            b.upload(_pack("f", [presence, frequency, repetition]), (1, 3), "float32"),
        )

    def apply_logit_bias(self, logits: Any, bias: dict[int, float]) -> None:
        """Add ``bias[token]`` to the logits, in place on the device."""
        if not bias:
            return
        ids = sorted(bias)
        b = self.backend
        b.function("apply_logit_bias_inplace")(
            b.view(logits, (1, self.vocab_size)),
            b.upload(_pack("i", [0] * len(ids)), (len(ids),), "int32"),
            b.upload(_pack("i", ids), (len(ids),), "int32"),
            b.upload(_pack("f", [bias[i] for i in ids]), (len(ids),), "float32"),
        )

    def apply_bitmask(self, logits: Any, allowed_words: Sequence[int]) -> None:
        """Keep only tokens whose bit is set (``allowed_words`` is ceil(V/32) int32 words)."""
        b = self.backend
        b.function("apply_bitmask_inplace")(
            b.view(logits, (1, self.vocab_size)),
            b.upload(_pack("i", [0]), (1,), "int32"),
            b.upload(_pack("i", allowed_words), (1, len(allowed_words)), "int32"),
        )
