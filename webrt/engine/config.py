"""The engine's configuration: WebLLM's ``AppConfig`` / ``ModelRecord`` / ``ChatOptions``.

A model's settings are ``mlc-chat-config.json`` with the record's ``overrides`` and then the
``chat_opts`` given to ``reload()`` laid over it (later wins, as WebLLM spreads them); each
request's own fields (temperature, top_p, penalties) then override the result for that
request. ``conv_config`` layers are merged field by field and applied to the conv template.

A config with the model's own Jinja ``chat_template`` (written by ``webrt gen_config``) renders
prompts with it (:class:`~webrt.conversation.chat_template.ChatTemplate`, byte for byte as
transformers' ``apply_chat_template``), unless ``chat_opts`` / the record's overrides replace
``conv_template``; a ``conv_config`` ``system_message`` then becomes the system message of
conversations that have none. Configs without one (WebLLM / MLC artifacts) use ``conv_template``.
Pure Python (jinja2, also pure Python, is imported only for configs with a chat template).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webrt.chat_config import (
    CACHE_BACKENDS,
    WINDOW_SETTINGS,
    WindowConfig,
    read_int,
    tokenizer_files,
    window_config,
    window_setting_problem,
)
from webrt.conversation import Conversation, conv_template_from_config
from webrt.engine.vocabulary import postproc_method
from webrt.errors import ModelConfigError, ModelNotFoundError
from webrt.ndarray_cache.integrity import ModelIntegrity


@dataclass
class ChatOptions:
    """Fields of ``mlc-chat-config.json`` a user may override (WebLLM's ``ChatOptions``).

    ``None`` means "keep the model's value". ``conv_config`` overrides fields of the conv
    template (e.g. ``{"system_message": "..."}``); ``conv_template`` replaces it (a name or
    a full template object).
    """

    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    conv_template: str | dict[str, Any] | None = None
    conv_config: dict[str, Any] | None = None
    context_window_size: int | None = None
    sliding_window_size: int | None = None
    attention_sink_size: int | None = None
    prefill_chunk_size: int | None = None
    max_history_size: int | None = None
    tokenizer_files: list[str] | None = None
    tokenizer_info: dict[str, Any] | None = None
    token_table_postproc_method: str | None = None
    vocab_size: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    model_type: str | None = None

    @classmethod
    def from_value(cls, value: ChatOptions | Mapping[str, Any] | None, where: str = "chat_opts") -> ChatOptions:
        """From a ChatOptions, a dict (unknown keys raise ModelConfigError) or None."""
        if value is None:
            return cls()
        if isinstance(value, ChatOptions):
            return value
        if not isinstance(value, Mapping):
            raise ModelConfigError(f"{where} must be a dict or ChatOptions, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ModelConfigError(f"{where} has unknown field(s) {unknown}; accepted: {sorted(known)}")
        return cls(**dict(value))

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


#: ``ModelRecord.device`` values: which browser library the loader uses.
RECORD_DEVICES = ("auto", "webgpu", "cpu")


@dataclass
class ModelRecord:
    """One model an engine can load (WebLLM's ``ModelRecord``).

    ``model`` is where the weights and ``mlc-chat-config.json`` are (a URL in the browser, a
    folder natively); ``model_lib`` the compiled library (``.wasm`` / ``.so``; in the browser the
    WebGPU library, as in WebLLM). ``model_lib_cpu`` (webrt) is the browser's CPU library
    (``webrt compile --device wasm``); with it, ``device`` picks the library: ``"auto"`` (the CPU
    one when the page has no WebGPU adapter or only a fallback/software one), ``"webgpu"`` or
    ``"cpu"``. ``model_lib_fallback`` (webrt) is the WebGPU library in the kernel variant for
    fallback (software) adapters (``webrt compile --device webgpu --kernels fallback``), used on such
    an adapter when there is no ``model_lib_cpu``. All the libraries use the same weights.
    """

    model: str
    model_id: str
    model_lib: str
    overrides: ChatOptions = field(default_factory=ChatOptions)
    vram_required_MB: float | None = None
    low_resource_required: bool = False
    buffer_size_required_bytes: int | None = None
    required_features: list[str] = field(default_factory=list)
    model_type: str | None = None
    model_lib_cpu: str | None = None
    model_lib_fallback: str | None = None
    device: str = "auto"
    #: SRI hashes of the model's files, checked on download (`webrt.ndarray_cache.integrity`)
    integrity: ModelIntegrity | None = None

    # WebLLM's older field names
    _ALIASES = {"model_url": "model", "local_id": "model_id", "model_lib_url": "model_lib"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRecord:
        """From a JSON record; accepts the older names ``model_url``, ``local_id``, ``model_lib_url``."""
        if isinstance(data, ModelRecord):
            return data
        if not isinstance(data, Mapping):
            raise ModelConfigError(f"a model record must be an object, got {type(data).__name__}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = cls._ALIASES.get(key, key)
            if name in values and values[name] != value:
                raise ModelConfigError(f"model record sets both {key!r} and {name!r}; keep {name!r}")
            values[name] = value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelConfigError(f"model record has unknown field(s) {unknown}; accepted: {sorted(known)}")
        for required in ("model", "model_id", "model_lib"):
            if not isinstance(values.get(required), str) or not values[required]:
                raise ModelConfigError(f"model record {data!r} needs a string {required!r}")
        values["overrides"] = ChatOptions.from_value(values.get("overrides"), f"overrides of {values['model_id']!r}")
        features = values.get("required_features") or []
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ModelConfigError(f"model record {values['model_id']!r}: required_features must be a list of "
                                   f"WebGPU feature names, got {features!r}")
        values["required_features"] = list(features)
        return cls(**values)

    def __post_init__(self) -> None:
        self.integrity = ModelIntegrity.from_value(self.integrity, self.model_id)
        if self.device not in RECORD_DEVICES:
            raise ModelConfigError(f"model record {self.model_id!r}: device must be one of {RECORD_DEVICES}, "
                                   f"got {self.device!r}")
        if self.model_lib_cpu is not None and (not isinstance(self.model_lib_cpu, str) or not self.model_lib_cpu):
            raise ModelConfigError(f"model record {self.model_id!r}: model_lib_cpu must be a non-empty string "
                                   "(a library compiled with `webrt compile --device wasm`)")
        if self.model_lib_fallback is not None and (not isinstance(self.model_lib_fallback, str)
                                                    or not self.model_lib_fallback):
            raise ModelConfigError(f"model record {self.model_id!r}: model_lib_fallback must be a non-empty string "
                                   "(a library compiled with `webrt compile --device webgpu --kernels fallback`)")
        if self.device == "cpu" and not self.model_lib_cpu:
            raise ModelConfigError(f"model record {self.model_id!r} asks for device 'cpu' but names no "
                                   "model_lib_cpu; compile one with `webrt compile --device wasm` and name it")


@dataclass
class AppConfig:
    """The models an engine may load, and where the browser caches their files."""

    model_list: list[ModelRecord] = field(default_factory=list)
    cache_backend: str = "cache"

    def __post_init__(self) -> None:
        self.model_list = [ModelRecord.from_dict(r) for r in self.model_list]
        if self.cache_backend not in CACHE_BACKENDS:
            raise ModelConfigError(f"cache_backend must be one of {CACHE_BACKENDS}, got {self.cache_backend!r}")
        seen: set[str] = set()
        for record in self.model_list:
            if record.model_id in seen:
                raise ModelConfigError(f"model_id {record.model_id!r} appears twice in model_list")
            seen.add(record.model_id)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AppConfig:
        """From JSON; also reads WebLLM's ``cacheBackend`` and older ``useIndexedDBCache``."""
        if not isinstance(data, Mapping):
            raise ModelConfigError(f"an AppConfig must be an object, got {type(data).__name__}")
        records = data.get("model_list", [])
        if not isinstance(records, list):
            raise ModelConfigError(f"AppConfig model_list must be a list of model records, got {records!r}")
        backend = data.get("cache_backend", data.get("cacheBackend"))
        if backend is None:
            backend = "indexeddb" if data.get("useIndexedDBCache") else "cache"
        return cls([ModelRecord.from_dict(r) for r in records], backend)

    def find(self, model_id: str) -> ModelRecord:
        """The record of ``model_id``, or ModelNotFoundError listing the known ids."""
        for record in self.model_list:
            if record.model_id == model_id:
                return record
        known = ", ".join(r.model_id for r in self.model_list) or "(none)"
        raise ModelNotFoundError(
            f"model {model_id!r} is not in the AppConfig's model_list (known: {known}); "
            "add a ModelRecord for it."
        )


@dataclass
class ChatConfig:
    """A loaded model's resolved settings (mlc-chat-config.json + overrides + chat options)."""

    conv_template: Conversation
    vocab_size: int
    window: WindowConfig
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    tokenizer_files: list[str]
    token_postproc_method: str
    bos_token_id: int | None
    eos_token_id: int | None
    raw: dict[str, Any]
    chat_template: Any = None  # a ChatTemplate (imported lazily: jinja2) or None
    system_message: str | None = None  # conv_config's system_message, for chat-template prompts


def _number(merged: Mapping[str, Any], name: str, default: float) -> float:
    value = merged.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelConfigError(f"{name} must be a number, got {value!r}")
    return float(value)


def _object_or_none(value: Any, name: str) -> Mapping[str, Any]:
    """A JSON object field (null or absent: empty), else ModelConfigError."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ModelConfigError(f"{name} must be an object, got {value!r}; fix it or re-run `webrt gen_config`.")
    return value


def merge_chat_config(
    base: Mapping[str, Any], *layers: ChatOptions | Mapping[str, Any] | None
) -> ChatConfig:
    """``base`` (mlc-chat-config.json) with each layer's set fields laid over it, checked."""
    if not isinstance(base, Mapping):
        raise ModelConfigError(f"mlc-chat-config.json must hold a JSON object, got {type(base).__name__}; "
                               "re-run `webrt gen_config`.")
    merged = dict(base)
    conv_config: dict[str, Any] = dict(_object_or_none(base.get("conv_config"), "conv_config"))
    replaces_conv_template = False
    for layer in layers:
        values = ChatOptions.from_value(layer).to_dict()
        conv_config.update(_object_or_none(values.pop("conv_config", None), "conv_config"))
        replaces_conv_template = replaces_conv_template or "conv_template" in values
        merged.update(values)
    if "conv_template" not in merged:
        raise ModelConfigError("mlc-chat-config.json has no conv_template; re-run `webrt gen_config`.")
    conv = conv_template_from_config(merged["conv_template"], conv_config or None)
    window = window_config(merged)
    for name in WINDOW_SETTINGS:
        problem = window_setting_problem(name, getattr(window, name))
        if problem:
            raise ModelConfigError(f"{problem} (Set it in chat_opts or mlc-chat-config.json.)")
    if window.attention_sink_size >= window.max_total_length:
        raise ModelConfigError(f"attention_sink_size must be -1 (none) or 0..{window.max_total_length - 1}, "
                               f"got {window.attention_sink_size}; fix it in chat_opts.")
    _object_or_none(merged.get("tokenizer_info"), "tokenizer_info")
    files = merged.get("tokenizer_files")
    if files is not None and (not isinstance(files, list) or not all(isinstance(f, str) for f in files)):
        raise ModelConfigError(f"tokenizer_files must be a list of file names, got {files!r}; "
                               "re-run `webrt gen_config`.")
    vocab = read_int(merged, "vocab_size", 0)
    if vocab <= 0:
        raise ModelConfigError("mlc-chat-config.json needs a positive vocab_size")
    repetition = _number(merged, "repetition_penalty", 1.0)
    if repetition <= 0:
        raise ModelConfigError(f"repetition_penalty must be > 0, got {repetition}")
    top_p = _number(merged, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise ModelConfigError(f"top_p must be in (0, 1], got {top_p}")
    temperature = _number(merged, "temperature", 1.0)
    if temperature < 0:
        raise ModelConfigError(f"temperature must be >= 0, got {temperature}")
    bos, eos = merged.get("bos_token_id"), merged.get("eos_token_id")
    chat_template = None
    if merged.get("chat_template") is not None and not replaces_conv_template:
        from webrt.conversation.model_template import SPECIAL_TOKENS_KEY, checked_template

        specials = merged.get(SPECIAL_TOKENS_KEY) or {}
        if not isinstance(specials, Mapping) or not all(isinstance(v, str) for v in specials.values()):
            raise ModelConfigError(f"{SPECIAL_TOKENS_KEY} must map token names to strings; re-run `webrt gen_config`.")
        chat_template = checked_template(
            merged["chat_template"], specials, "the chat_template of mlc-chat-config.json (re-run `webrt gen_config`)")
    system_message = conv_config.get("system_message")
    return ChatConfig(
        conv_template=conv,
        vocab_size=vocab,
        window=window,
        temperature=temperature,
        top_p=top_p,
        presence_penalty=_number(merged, "presence_penalty", 0.0),
        frequency_penalty=_number(merged, "frequency_penalty", 0.0),
        repetition_penalty=repetition,
        tokenizer_files=tokenizer_files(merged),
        token_postproc_method=postproc_method(merged),
        bos_token_id=bos if isinstance(bos, int) else None,
        eos_token_id=eos if isinstance(eos, int) else None,
        raw=merged,
        chat_template=chat_template,
        system_message=system_message if isinstance(system_message, str) else None,
    )


def as_id_list(model_id: str | Sequence[str]) -> list[str]:
    """``reload``'s model id argument as a non-empty list of distinct ids."""
    ids = [model_id] if isinstance(model_id, str) else list(model_id)
    if not ids or not all(isinstance(i, str) and i for i in ids):
        raise ModelConfigError(f"model_id must be a model id or a non-empty list of them, got {model_id!r}")
    if len(set(ids)) != len(ids):
        raise ModelConfigError(f"model_id lists {ids} load the same model twice; list each id once.")
    return ids
