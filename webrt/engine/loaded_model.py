"""A model the engine has loaded: config, tokenizer, runner, and what its KV cache holds.

The cache holds one token sequence. :meth:`LoadedModel.prefill_prompt` keeps the longest
common prefix of that sequence and the new prompt, rolls back the rest and prefills only the
new part (in ``prefill_chunk_size`` chunks, one step each: :meth:`LoadedModel.prefill_steps`),
so a chat that extends the previous conversation pays only for its new turn. Chat prompts are rendered whole each turn (with the model's own chat
template when the config has one, tokenized without adding special tokens, as transformers'
``apply_chat_template(tokenize=True)`` does; else with ``conv_template``), and that prefix
match finds the tokens of the earlier turns already in the cache. Pure Python.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from webrt.conversation import conversation_from_messages
from webrt.engine.config import ChatConfig, ModelRecord
from webrt.engine.json_grammar import JsonTokenIndex
from webrt.engine.json_schema import SchemaGrammar
from webrt.engine.model_runner import ModelRunner
from webrt.engine.stats import RoundStats
from webrt.engine.vocabulary import token_byte_table
from webrt.errors import InvalidRequestError
from webrt.tokenizer import Tokenizer


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


SCHEMA_INDEXES_KEPT = 8  # compiled response schemas kept per model


class LoadedModel:
    """Everything the engine keeps per loaded model id."""

    def __init__(self, record: ModelRecord, chat_config: ChatConfig, tokenizer: Tokenizer, runner: ModelRunner):
        self.record = record
        self.model_id = record.model_id
        self.chat_config = chat_config
        self.tokenizer = tokenizer
        self.runner = runner
        self.window = chat_config.window
        self.vocab_size = runner.vocab_size
        self.cached_tokens: list[int] = []  # exactly what the KV cache holds, in order
        self.lock = asyncio.Lock()
        self.last_stats: RoundStats | None = None
        conv = chat_config.conv_template
        ids = set(conv.stop_token_ids)
        if chat_config.eos_token_id is not None:
            ids.add(chat_config.eos_token_id)
        self.stop_token_ids = frozenset(ids)
        self._token_bytes: list[bytes | None] | None = None
        self._json_index: JsonTokenIndex | None = None
        self._schema_indexes: dict[str, JsonTokenIndex] = {}

    # --- prompts ------------------------------------------------------------------------------
    def _encode_pieces(self, pieces: list[str]) -> list[int]:
        tokens = list(self.chat_config.conv_template.system_prefix_token_ids or [])
        for piece in pieces:  # piece by piece, as WebLLM does: earlier turns keep their tokens
            tokens.extend(self.tokenizer.encode(piece, add_special_tokens=False))
        return tokens

    def chat_prompt_text(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The model's chat template rendered for ``messages`` (reply header last), as
        ``apply_chat_template(..., tokenize=False, add_generation_prompt=True)`` gives it."""
        template = self.chat_config.chat_template
        if template is None:
            if tools or template_kwargs:
                raise InvalidRequestError(
                    f"model {self.model_id!r} has no chat_template of its own, so 'tools' and "
                    "'chat_template_kwargs' cannot be rendered; re-run `webrt gen_config` on a source with one.")
            conv = conversation_from_messages(self.chat_config.conv_template, messages)
            return conv.as_prompt()
        system = self.chat_config.system_message
        if system is not None and (not messages or messages[0].get("role") != "system"):
            messages = [{"role": "system", "content": system}, *messages]
        return template.render(messages, add_generation_prompt=True, tools=tools, **dict(template_kwargs or {}))

    def chat_prompt_tokens(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """Token ids of the whole conversation, reply header last: the model's chat template
        rendered and tokenized without adding special tokens, else the conv template's pieces."""
        if self.chat_config.chat_template is None and not tools and not template_kwargs:
            conv = conversation_from_messages(self.chat_config.conv_template, messages)
            return self._encode_pieces(conv.get_prompt_array())
        text = self.chat_prompt_text(messages, tools, template_kwargs)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def completion_prompt_tokens(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt (after the template's system prefix ids)."""
        return self._encode_pieces([prompt])

    def has_room_for(self, new_tokens: int) -> bool:
        """Whether the cache can take ``new_tokens`` more tokens."""
        return self.window.has_room_for(self.runner.total_tokens + new_tokens)

    # --- cache --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the KV cache."""
        self.runner.reset()
        self.cached_tokens = []

    def prefill_prompt(self, prompt: list[int]) -> tuple[Any, int]:
        """Make the cache hold ``prompt``; return (logits after its last token, tokens prefilled).

        The engine checked that the prompt fits the window when the request arrived."""
        logits, prefilled = None, 0
        for logits, chunk, _ in self.prefill_steps(prompt):
            prefilled += chunk
        return logits, prefilled

    def prefill_steps(self, prompt: list[int]) -> Iterator[tuple[Any, int, int]]:
        """Make the cache hold ``prompt``, one forward call per step: keep the common prefix,
        then after each chunk yield (its logits, tokens it took, tokens still to prefill).

        Between steps ``cached_tokens`` is exactly what the cache holds, so a caller that stops
        early (an interrupt between chunks) leaves it consistent."""
        keep = common_prefix_length(self.cached_tokens, prompt)
        keep = min(keep, len(prompt) - 1)  # the last prompt token must run to give logits
        drop = len(self.cached_tokens) - keep
        window = self.window
        if drop and window.uses_sliding_window and len(self.cached_tokens) > window.sliding_window_size:
            keep = 0  # tokens slid out of the window cannot be popped back in: start over
        if keep == 0:
            self.reset()
        else:
            self.runner.rollback(drop)
            del self.cached_tokens[keep:]
        new = prompt[keep:]
        done = 0
        for logits, size in self.runner.prefill_chunks(new):
            self.cached_tokens.extend(new[done : done + size])
            done += size
            yield logits, size, len(new) - done

    def decode(self, token: int) -> Any:
        """Feed one generated token; return the next logits."""
        logits = self.runner.decode(token)
        self.cached_tokens.append(token)
        return logits

    # --- vocabulary ---------------------------------------------------------------------------
    def token_bytes(self) -> list[bytes | None]:
        if self._token_bytes is None:
            self._token_bytes = token_byte_table(self.tokenizer, self.chat_config.token_postproc_method, self.vocab_size)
        return self._token_bytes

    def json_index(self, schema: SchemaGrammar | None = None) -> JsonTokenIndex:
        """The JSON-mode token index, built on first use and kept; with ``schema``, the index of
        that grammar over the same vocabulary tries (kept for the last few schemas)."""
        if self._json_index is None:
            self._json_index = JsonTokenIndex(self.token_bytes())
        if schema is None:
            return self._json_index
        index = self._schema_indexes.pop(schema.key, None)
        if index is None:
            index = self._json_index.with_grammar(schema)
        self._schema_indexes[schema.key] = index  # most recently used last
        while len(self._schema_indexes) > SCHEMA_INDEXES_KEPT:
            del self._schema_indexes[next(iter(self._schema_indexes))]
        return index

    def describe_token(self, token_id: int) -> tuple[str, bytes]:
        """(text, bytes) of one token for logprobs; special tokens give their spelling."""
        data = self.token_bytes()[token_id] if 0 <= token_id < self.vocab_size else None
        if data is None:
            spelled = self.tokenizer.id_to_token(token_id) or ""
            return spelled, spelled.encode("utf-8")
        return data.decode("utf-8", errors="replace"), data

    def logprob_entry(self, logits: list[float], token: int, top: int) -> dict[str, Any]:
        return log_softmax_entry(logits, token, top, self.describe_token)


def log_softmax_entry(
    logits: list[float], token: int, top: int, describe: Callable[[int], tuple[str, bytes]]
) -> dict[str, Any]:
    """OpenAI's logprobs entry for ``token``: its log-probability and the ``top`` best.

    ``describe(token_id) -> (text, bytes)``. Log-probabilities are of the processed logits
    (after logit bias, penalties and the JSON mask) at temperature 1.
    """
    peak = max(logits)
    log_total = peak + math.log(math.fsum(math.exp(v - peak) for v in logits))

    def item(token_id: int) -> dict[str, Any]:
        text, data = describe(token_id)
        return {"token": text, "logprob": logits[token_id] - log_total, "bytes": list(data)}

    entry = item(token)
    best = heapq.nlargest(top, range(len(logits)), key=logits.__getitem__) if top else []
    entry["top_logprobs"] = [item(t) for t in best]
    return entry
