"""One generated choice, step by step: sample on the device, detokenize, stop, account.

Plain synchronous functions (no asyncio here): the engine calls :meth:`Generation.next_step`
(one prefill chunk, the last one with the first token; then decode + next token) between
``await asyncio.sleep(0)`` so the event loop stays responsive and an interrupt or a cancellation
takes effect within one chunk or token. Each step applies the logit
processors on the device in WebLLM's order (logit bias, penalties, JSON bitmask), then samples:
argmax at temperature ~0, else softmax / argsort / top-p with a uniform draw from the request's
``random.Random`` (seeded requests are therefore reproducible). Pure Python.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from webrt.engine.config import ChatConfig
from webrt.engine.json_grammar import JsonMatcher
from webrt.engine.json_schema import SchemaGrammar
from webrt.engine.loaded_model import LoadedModel
from webrt.engine.model_runner import GREEDY_TEMPERATURE
from webrt.engine.protocol import GenerationRequest
from webrt.engine.stats import RoundStats
from webrt.engine.stop import StopStringMatcher
from webrt.errors import InvalidRequestError, WebrtError
from webrt.tokenizer import StreamingDetokenizer


@dataclass
class GenerationConfig:
    """A request's sampling settings after the model's defaults were filled in."""

    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    json_mode: bool = False
    json_schema: SchemaGrammar | None = None
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_TEMPERATURE

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0


def resolve_generation_config(chat: ChatConfig, request: GenerationRequest, vocab_size: int) -> GenerationConfig:
    """Request fields over the model's defaults (WebLLM: a field given in the request wins)."""

    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    presence, frequency = request.presence_penalty, request.frequency_penalty
    if (presence is None) != (frequency is None):  # WebLLM: setting one zeroes the other
        presence, frequency = presence or 0.0, frequency or 0.0
    for token_id in request.logit_bias:
        if not 0 <= token_id < vocab_size:
            raise InvalidRequestError(f"logit_bias names token {token_id}, outside the vocabulary [0, {vocab_size})")
    return GenerationConfig(
        temperature=pick(request.temperature, chat.temperature),
        top_p=pick(request.top_p, chat.top_p),
        presence_penalty=pick(presence, chat.presence_penalty),
        frequency_penalty=pick(frequency, chat.frequency_penalty),
        repetition_penalty=pick(request.repetition_penalty, chat.repetition_penalty),
        max_tokens=request.max_tokens,
        stop=list(request.stop),
        logit_bias=dict(request.logit_bias),
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs,
        json_mode=request.json_mode,
        json_schema=request.json_schema,
        ignore_eos=request.ignore_eos,
    )


@dataclass
class Step:
    """What one step adds: text safe to show, and the token's logprobs entry (if asked)."""

    text: str = ""
    logprob: dict[str, Any] | None = None


class Generation:
    """Generates one choice for a prompt on a loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        prompt_tokens: list[int],
        config: GenerationConfig,
        rng: random.Random,
        stats: RoundStats,
    ):
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.config = config
        self.rng = rng
        self.stats = stats
        self.output_ids: list[int] = []
        self.token_counts: dict[int, int] = {}
        self.finish_reason: str | None = None
        self.logprobs: list[dict[str, Any]] = []
        self._pending_token: int | None = None  # sampled, not yet fed to the model
        self._started = False
        #: the prefill in progress (`LoadedModel.prefill_steps`), between two of its chunks
        self._prefill: Iterator[tuple[Any, int, int]] | None = None
        self._detokenizer = StreamingDetokenizer(model.tokenizer)
        stops = list(config.stop)
        if not config.ignore_eos and not config.json_mode:
            # JSON mode ignores the template's stop strings: they may legally occur in a string.
            stops = list(model.chat_config.conv_template.stop_str) + stops
        self._stop_strings = StopStringMatcher(stops)
        self._stop_ids = frozenset() if config.ignore_eos else model.stop_token_ids
        self.matcher: JsonMatcher | None = None
        if config.json_mode:
            begin = time.perf_counter()
            self.matcher = JsonMatcher(model.json_index(config.json_schema))
            stats.grammar_init_time += time.perf_counter() - begin

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def next_step(self) -> Step | None:
        """Do the next unit of model work: one prefill chunk, or one decode step.

        The first calls prefill the prompt (reusing the cached prefix), one chunk of at most
        ``prefill_chunk_size`` tokens per call, returning None until the last chunk, which
        samples the first token. Later calls feed the last token and sample the next one; if the
        cache no longer holds this generation's tokens (another request used it between two
        steps of a stream), they are prefilled again first, chunk by chunk, reusing the common
        prefix. Between two calls the cache matches the model's record, so the caller may stop."""
        if self.finished:
            raise WebrtError("next_step() after the generation finished")
        begin = time.perf_counter()
        if self._prefill is None:
            if not self._started:
                self._prefill = self.model.prefill_steps(self.prompt_tokens)
                self._started = True
            elif self._cache_holds_own_tokens():
                assert self._pending_token is not None
                logits = self.model.decode(self._pending_token)
                self._pending_token = None
                return self._account_decode(begin, self._sample_and_accept(logits))
            else:
                self._prefill = self.model.prefill_steps(self.prompt_tokens + self.output_ids)
        replay = self._pending_token is not None  # prefilling its own tokens again (a decode step)
        logits, size, remaining = next(self._prefill)
        self.stats.prefill_tokens += size
        if not remaining:
            self._prefill = None
            self._pending_token = None
        step = None if remaining else self._sample_and_accept(logits)
        elapsed = time.perf_counter() - begin
        if replay:
            self.stats.decode_time += elapsed
            self.stats.decode_steps += step is not None
        else:
            self.stats.prefill_time += elapsed
            if step is not None and self.stats.first_token_time is None:
                self.stats.first_token_time = time.perf_counter() - self.stats.started
        return step

    def _account_decode(self, begin: float, step: Step) -> Step:
        self.stats.decode_time += time.perf_counter() - begin
        self.stats.decode_steps += 1
        return step

    def _cache_holds_own_tokens(self) -> bool:
        """Whether the cache holds the prompt and every output token but the pending one."""
        cached, prompt, outputs = self.model.cached_tokens, self.prompt_tokens, self.output_ids
        return (len(cached) == len(prompt) + len(outputs) - 1
                and cached[len(prompt):] == outputs[:-1] and cached[: len(prompt)] == prompt)

    def abort(self) -> Step:
        """Stop here (interrupted, maybe between two prefill chunks): finish_reason ``abort``,
        release held-back text."""
        self._prefill = None
        return Step(self._finish("abort"))

    # --- internals ----------------------------------------------------------------------------
    def _sample_and_accept(self, logits: Any) -> Step:
        token, entry = self._sample(logits)
        return self._accept(token, entry)

    def _sample(self, logits: Any) -> tuple[int, dict[str, Any] | None]:
        config, runner = self.config, self.model.runner
        if config.logit_bias:
            runner.apply_logit_bias(logits, config.logit_bias)
        if config.uses_penalties and self.token_counts:
            runner.apply_penalties(
                logits, self.token_counts, config.presence_penalty, config.frequency_penalty, config.repetition_penalty
            )
        if self.matcher is not None:
            begin = time.perf_counter()
            words = self.matcher.next_bitmask()
            self.stats.grammar_time += time.perf_counter() - begin
            runner.apply_bitmask(logits, words)
        host_logits = runner.logits_to_list(logits) if config.logprobs else None
        if config.greedy:
            token = runner.argmax(logits)
        else:
            token = runner.sample(logits, config.temperature, config.top_p, self.rng.random())
        entry = None
        if host_logits is not None:
            entry = self.model.logprob_entry(host_logits, token, config.top_logprobs)
        return token, entry

    def _accept(self, token: int, entry: dict[str, Any] | None) -> Step:
        if token in self._stop_ids:
            return Step(self._finish("stop"))
        self.output_ids.append(token)
        self.token_counts[token] = self.token_counts.get(token, 0) + 1
        self.stats.completion_tokens += 1
        if entry is not None:
            self.logprobs.append(entry)
        if self.matcher is not None and not self.matcher.accept_token(token):
            raise WebrtError(f"internal error: JSON mode sampled token {token}, which its own bitmask forbids")
        text, hit = self._stop_strings.put(self._detokenizer.put(token))
        if hit:
            self.finish_reason = "stop"
        elif self.matcher is not None and self.matcher.is_done:
            text += self._finish("stop")
        elif self.config.max_tokens is not None and len(self.output_ids) >= self.config.max_tokens:
            text += self._finish("length")
        elif not self.model.has_room_for(1):
            text += self._finish("length")
        else:
            self._pending_token = token
        return Step(text, entry)

    def _finish(self, reason: str) -> str:
        """End with ``reason``; return the text still held back (unless a stop string cut it)."""
        self.finish_reason = reason
        self._pending_token = None
        text, hit = self._stop_strings.put(self._detokenizer.flush())
        if hit:
            self.finish_reason = "stop"
            return text
        return text + self._stop_strings.flush()
