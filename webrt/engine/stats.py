"""What one request cost: token counts and timings, reported as OpenAI ``usage``. Pure Python."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundStats:
    """Counters and timings of one request (all its choices)."""

    prompt_tokens: int = 0
    prefill_tokens: int = 0  # tokens actually run through the model (the rest were cached)
    prefill_time: float = 0.0  # prefill + first-token sampling
    completion_tokens: int = 0
    decode_steps: int = 0
    decode_time: float = 0.0
    first_token_time: float | None = None  # seconds from the request until the first token
    grammar_init_time: float = 0.0
    grammar_time: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def usage(self) -> dict[str, Any]:
        """OpenAI ``usage`` with WebLLM's ``extra`` timings."""
        extra: dict[str, Any] = {
            "e2e_latency_s": time.perf_counter() - self.started,
            "prefill_tokens_per_s": self.prefill_tokens / self.prefill_time if self.prefill_time > 0 else 0.0,
            "decode_tokens_per_s": self.decode_steps / self.decode_time if self.decode_time > 0 else 0.0,
            "time_to_first_token_s": self.first_token_time or 0.0,
            "time_per_output_token_s": self.decode_time / self.decode_steps if self.decode_steps else 0.0,
            "prefill_tokens": self.prefill_tokens,
        }
        if self.grammar_init_time or self.grammar_time:
            extra["grammar_init_s"] = self.grammar_init_time
            extra["grammar_per_token_s"] = self.grammar_time / max(self.completion_tokens, 1)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": max(self.prompt_tokens - self.prefill_tokens, 0)},
            "extra": extra,
        }
