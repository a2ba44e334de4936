"""OpenAI-style requests (validated into dataclasses) and responses (dicts with attribute access).

The field names, defaults and checks follow WebLLM's ``openai_api_protocols`` (itself OpenAI's
API): a bad field raises :class:`webrt.errors.InvalidRequestError` naming the field and what
is accepted. ``tools`` (OpenAI's function list) and ``chat_template_kwargs`` (a webrt extension,
as in vLLM: extra variables for the model's chat template, e.g. ``{"enable_thinking": False}``)
are passed to the model's own chat template; the reply stays plain text (tool calls are not
parsed into ``tool_calls``). Responses are :class:`OpenAIObject` dicts, so ``resp["choices"][0]["message"]``
and ``resp.choices[0].message.content`` both work, and ``json.dumps(resp)`` gives OpenAI JSON.
Pure Python.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from webrt.engine.json_schema import SchemaGrammar, schema_from_response_format
from webrt.errors import InvalidRequestError

MAX_TOP_LOGPROBS = 20
LOGIT_BIAS_LIMIT = 100.0
PENALTY_LIMIT = 2.0
#: Bounds of the numeric request fields (a value outside gets InvalidRequestError naming them).
MAX_N = 128  # choices per request, as OpenAI
MAX_TEMPERATURE = 100.0  # beyond it sampling is uniform anyway
MIN_REPETITION_PENALTY = 0.01  # below it positive logits would be scaled past float32
MAX_REPETITION_PENALTY = 100.0
MAX_TOKENS_LIMIT = 1 << 20  # longer than any context window webrt runs
SEED_LIMIT = 1 << 64  # seeds are 64-bit integers (|seed| < 2**64), as OpenAI's
#: How deeply a request's lists and objects may nest (deeper ones are refused, not recursed into).
MAX_REQUEST_NESTING = 256
_TOKEN_ID_KEY = re.compile(r"-?[0-9]{1,12}")

# Fields shared by chat.completions and completions requests.
_COMMON_FIELDS = (
    "model",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "n",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "ignore_eos",
    "user",
    "extra_body",
)
CHAT_FIELDS = ("messages", "tools", "chat_template_kwargs", *_COMMON_FIELDS)
#: Variables a chat template gets from the engine itself, not from ``chat_template_kwargs``.
RESERVED_TEMPLATE_VARIABLES = ("messages", "tools", "documents", "add_generation_prompt")
COMPLETION_FIELDS = ("prompt", "echo", "suffix", "best_of", *_COMMON_FIELDS)
# Known OpenAI fields webrt does not implement: rejected with a clear message.
_UNSUPPORTED = {
    "tool_choice": "function calling is not supported yet",
    "functions": "function calling is not supported yet",
    "function_call": "function calling is not supported yet",
    "parallel_tool_calls": "function calling is not supported yet",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "service_tier": "there is no service tier in a local engine",
    "store": "there is no storage in a local engine",
    "metadata": "there is no storage in a local engine",
}


class OpenAIObject(dict):
    """A JSON object that also reads as attributes (``chunk.choices[0].delta.content``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def wrap(cls, value: Any) -> Any:
        """Deep-convert dicts (in lists too) to OpenAIObject."""
        if isinstance(value, Mapping):
            return cls({k: cls.wrap(v) for k, v in value.items()})
        if isinstance(value, list):
            return [cls.wrap(v) for v in value]
        return value


@dataclass
class GenerationRequest:
    """Fields common to chat and text completion requests, validated."""

    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    json_mode: bool = False
    json_schema: SchemaGrammar | None = None  # compiled from response_format's schema, when one is given
    ignore_eos: bool = False


@dataclass
class ChatCompletionRequest(GenerationRequest):
    """``chat.completions.create`` parameters."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompletionRequest(GenerationRequest):
    """``completions.create`` parameters."""

    prompt: str = ""


def _merge_args(request: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    if request is not None and not isinstance(request, Mapping):
        raise InvalidRequestError(f"a request must be a dict of parameters, got {type(request).__name__}")
    merged = dict(request or {})
    merged.update(kwargs)
    return merged


def _check_fields(data: Mapping[str, Any], allowed: Sequence[str], endpoint: str) -> None:
    for name in data:
        if name in _UNSUPPORTED and data[name] is not None:
            raise InvalidRequestError(f"{endpoint}: '{name}' is not supported: {_UNSUPPORTED[name]}; remove it.")
    unknown = [k for k in data if k not in allowed and k not in _UNSUPPORTED]
    if unknown:
        raise InvalidRequestError(
            f"{endpoint}: unknown parameter(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(allowed)}."
        )


def _show(value: Any) -> str:
    """A short repr for error messages (huge integers have no cheap repr)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an integer too long to print, somewhere inside
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _number(data: Mapping[str, Any], name: str) -> float | None:
    """A finite number (ints too), or None when absent."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"'{name}' must be a number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidRequestError(f"'{name}' must be a finite number, got {_show(value)}")
    return number


def _in_range(name: str, value: float | None, low: float, high: float, low_open: bool = False) -> float | None:
    """``value`` when it lies in [low, high] (in (low, high] with ``low_open``); None stays None."""
    if value is None:
        return None
    above_low = low < value if low_open else low <= value
    if not (above_low and value <= high):
        raise InvalidRequestError(f"'{name}' must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value:g}")
    return value


def _integer(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"'{name}' must be an integer, got {_show(value)}")
    return value


def _boolean(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequestError(f"'{name}' must be true or false, got {_show(value)}")
    return value


def _parse_common(data: Mapping[str, Any], out: GenerationRequest) -> None:
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError(f"'model' must be a model id string, got {_show(model)}")
    out.model = model
    out.stream = _boolean(data, "stream")
    options = data.get("stream_options")
    if options is not None:
        if not out.stream:
            raise InvalidRequestError("'stream_options' is only allowed with stream=True")
        if not isinstance(options, Mapping) or set(options) - {"include_usage"}:
            raise InvalidRequestError(f"'stream_options' must be {{'include_usage': bool}}, got {_show(options)}")
        out.include_usage = _boolean(options, "include_usage")

    out.temperature = _in_range("temperature", _number(data, "temperature"), 0.0, MAX_TEMPERATURE)
    out.top_p = _in_range("top_p", _number(data, "top_p"), 0.0, 1.0, low_open=True)
    out.max_tokens = _integer(data, "max_tokens")
    if out.max_tokens is not None and not 0 < out.max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidRequestError(
            f"'max_tokens' must be in [1, {MAX_TOKENS_LIMIT}], got {_show(out.max_tokens)}; leave it out to stop "
            "at the context window")
    out.seed = _integer(data, "seed")
    if out.seed is not None and not -SEED_LIMIT < out.seed < SEED_LIMIT:
        raise InvalidRequestError(f"'seed' must be a 64-bit integer (|seed| < 2**64), got {_show(out.seed)}")
    n = _integer(data, "n")
    out.n = 1 if n is None else n
    if not 1 <= out.n <= MAX_N:
        raise InvalidRequestError(f"'n' must be in [1, {MAX_N}], got {_show(out.n)}; make several requests for more choices")
    if out.n > 1 and out.stream:
        raise InvalidRequestError("'n' > 1 is not supported with stream=True (as in WebLLM); stream one choice.")

    stop = data.get("stop")
    if stop is None:
        out.stop = []
    elif isinstance(stop, str):
        out.stop = [stop]
    elif isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        out.stop = list(stop)
    else:
        raise InvalidRequestError(f"'stop' must be a string or a list of strings, got {_show(stop)}")
    if any(s == "" for s in out.stop):
        raise InvalidRequestError("'stop' strings must not be empty")

    for name in ("frequency_penalty", "presence_penalty"):
        setattr(out, name, _in_range(name, _number(data, name), -PENALTY_LIMIT, PENALTY_LIMIT))
    out.repetition_penalty = _in_range(
        "repetition_penalty", _number(data, "repetition_penalty"), MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY)

    bias = data.get("logit_bias")
    out.logit_bias = {}
    if bias is not None:
        if not isinstance(bias, Mapping):
            raise InvalidRequestError(f"'logit_bias' must map token ids to biases, got {_show(bias)}")
        for key, value in bias.items():
            out.logit_bias[_token_id_key(key)] = _logit_bias_value(key, value)

    logprobs = data.get("logprobs")
    top = _integer(data, "top_logprobs")
    if isinstance(logprobs, int) and not isinstance(logprobs, bool) and isinstance(out, CompletionRequest):
        # the legacy completions API: logprobs=<k> means "and the top k"
        out.logprobs, top = True, logprobs if top is None else top
    else:
        out.logprobs = _boolean(data, "logprobs")
    if top is not None:
        if not out.logprobs:
            raise InvalidRequestError("'top_logprobs' needs logprobs=True")
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(f"'top_logprobs' must be in [0, {MAX_TOP_LOGPROBS}], got {top}")
    out.top_logprobs = top or 0

    fmt = data.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, Mapping) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise InvalidRequestError(
                f"'response_format' must be {{'type': 'text'}}, {{'type': 'json_object'}} (optionally with "
                f"'schema') or {{'type': 'json_schema', 'json_schema': {{'schema': ...}}}}, got {_show(fmt)}"
            )
        out.json_mode = kind != "text"
        schema = schema_from_response_format(fmt) if out.json_mode else None
        if schema is not None:  # compiled here: an unsupported schema fails the request up front
            out.json_schema = SchemaGrammar(schema)
    out.ignore_eos = _boolean(data, "ignore_eos")
    extra = data.get("extra_body")
    if extra is not None and not isinstance(extra, Mapping):
        raise InvalidRequestError(f"'extra_body' must be an object, got {_show(extra)}")


def _token_id_key(key: Any) -> int:
    """A logit_bias key: an integer token id, or its decimal string (as JSON object keys are)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and _TOKEN_ID_KEY.fullmatch(key):
        return int(key)
    raise InvalidRequestError(f"'logit_bias' keys must be token ids (integers or strings of digits like \"42\"), got {_show(key)}")


def _logit_bias_value(key: Any, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:
        raise InvalidRequestError(f"'logit_bias' values must be numbers in [-100, 100], got {_show(value)} for {_show(key)}")
    return float(value)


def _check_values(data: Mapping[str, Any]) -> None:
    """Every string in the request is encodable text, and no list or object nests too deeply.

    Walks iteratively, so a request nested thousands of levels deep gets a typed error here
    rather than a RecursionError later (in JSON schema compilation, ``json.dumps`` ...)."""
    pending: list[tuple[Any, str, int]] = [(value, repr(name), 1) for name, value in data.items()]
    while pending:
        value, where, depth = pending.pop()
        if len(where) > 100:
            where = where[:97] + "..."
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise InvalidRequestError(
                    f"{where} holds a lone surrogate {value[err.start]!r} at index {err.start}, which is not text; "
                    "pass valid Unicode (e.g. decode input with errors='replace')") from None
            continue
        if not isinstance(value, (Mapping, list, tuple)):
            continue
        if depth > MAX_REQUEST_NESTING:
            raise InvalidRequestError(
                f"{where} nests lists/objects deeper than {MAX_REQUEST_NESTING} levels; flatten it")
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and isinstance(value, Mapping):
                pending.append((key, f"a key in {where}", depth))
            pending.append((item, f"{where}[{_show(key)}]", depth + 1))


_Request = TypeVar("_Request", bound=GenerationRequest)


def _start_parse(
    request: Mapping[str, Any] | None, kwargs: Mapping[str, Any], allowed: Sequence[str],
    where: str, out: _Request,
) -> tuple[dict[str, Any], _Request]:
    """Merge the arguments, reject unknown fields, and fill ``out``'s common fields."""
    data = _merge_args(request, kwargs)
    _check_fields(data, allowed, where)
    _check_values(data)
    _parse_common(data, out)
    return data, out


def parse_chat_request(request: Mapping[str, Any] | None = None, **kwargs: Any) -> ChatCompletionRequest:
    """Validate ``chat.completions.create`` arguments (a dict and/or keyword arguments)."""
    data, out = _start_parse(request, kwargs, CHAT_FIELDS, "chat.completions.create", ChatCompletionRequest())
    messages = data.get("messages")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty list of {'role': ..., 'content': ...}")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(f"messages[{i}] must be an object with a string 'role', got {_show(message)}")
    last = messages[-1]["role"]
    if last not in ("user", "tool"):
        raise InvalidRequestError(
            f"the last message must come from the user (or a tool), got role {last!r}; "
            "append the user's next message."
        )
    out.messages = [dict(m) for m in messages]
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, (list, tuple)) or not all(
            isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)
            and isinstance(t["function"].get("name"), str) for t in tools
        ):
            raise InvalidRequestError(
                "'tools' must be a list of {'type': 'function', 'function': {'name': ..., 'parameters': ...}}")
        out.tools = [dict(t) for t in tools]
    kwargs_value = data.get("chat_template_kwargs")
    if kwargs_value is not None:
        if not isinstance(kwargs_value, Mapping) or not all(isinstance(k, str) for k in kwargs_value):
            raise InvalidRequestError(f"'chat_template_kwargs' must be an object, got {kwargs_value!r}")
        reserved = sorted(set(kwargs_value) & set(RESERVED_TEMPLATE_VARIABLES))
        if reserved:
            raise InvalidRequestError(
                f"'chat_template_kwargs' may not set {reserved}; pass messages and tools as request fields.")
        out.chat_template_kwargs = dict(kwargs_value)
    return out


def parse_completion_request(request: Mapping[str, Any] | None = None, **kwargs: Any) -> CompletionRequest:
    """Validate ``completions.create`` arguments (a dict and/or keyword arguments)."""
    data, out = _start_parse(request, kwargs, COMPLETION_FIELDS, "completions.create", CompletionRequest())
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequestError("'prompt' must be a non-empty string (lists of prompts are not supported)")
    for name, allowed in (("echo", (None, False)), ("suffix", (None,)), ("best_of", (None, 1))):
        if data.get(name) not in allowed:
            raise InvalidRequestError(f"'{name}' is not supported by completions.create; remove it.")
    out.prompt = prompt
    return out


# --- responses -------------------------------------------------------------------------------
def new_response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def chat_completion(
    response_id: str, model: str, choices: list[dict[str, Any]], usage: dict[str, Any]
) -> OpenAIObject:
    """A ``chat.completion`` object."""
    return OpenAIObject.wrap(
        {"id": response_id, "object": "chat.completion", "created": now(), "model": model,
         "choices": choices, "usage": usage, "system_fingerprint": None}
    )


def chat_choice(index: int, text: str, finish_reason: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish_reason,
        "logprobs": None if logprobs is None else {"content": logprobs},
    }


def chat_chunk(
    response_id: str,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    with_usage_field: bool = False,
) -> OpenAIObject:
    """A ``chat.completion.chunk``; ``delta=None`` makes the usage-only chunk (no choices)."""
    chunk: dict[str, Any] = {"id": response_id, "object": "chat.completion.chunk", "created": now(), "model": model}
    if delta is None:
        chunk["choices"] = []
    else:
        chunk["choices"] = [
            {"index": 0, "delta": delta, "finish_reason": finish_reason,
             "logprobs": None if logprobs is None else {"content": logprobs}}
        ]
    if with_usage_field or usage is not None:
        chunk["usage"] = usage
    return OpenAIObject.wrap(chunk)


def text_completion(
    response_id: str, model: str, choices: list[dict[str, Any]], usage: dict[str, Any] | None
) -> OpenAIObject:
    """A ``text_completion`` object (also the shape of its stream chunks)."""
    out: dict[str, Any] = {"id": response_id, "object": "text_completion", "created": now(), "model": model,
                           "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return OpenAIObject.wrap(out)


def text_choice(index: int, text: str, finish_reason: str | None, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {
        "index": index,
        "text": text,
        "finish_reason": finish_reason,
        "logprobs": None if logprobs is None else {"content": logprobs},
    }
