"""Property-based fuzzing (hypothesis) of webrt's input parsers: random mutations of VALID
documents (a field replaced by nonsense of another type, deleted, nulled, wrapped in a list,
turned into a string, swapped with another part of the document) must give a result or one of
webrt's typed errors (WebrtError subclasses), never another exception and never a hang.

Parsers: tokenizer.json (``Tokenizer.from_dict``, then encode/decode of a short text),
mlc-chat-config.json (``merge_chat_config``), tensor-cache.json (``TensorCacheIndex.from_json``),
AppConfig / ModelRecord (``from_dict``), conversation templates (``conv_template`` JSON and
``get_conv_template`` with a conv_config), HF config.json (``TransformerConfig.from_hf``).
Needs ``hypothesis`` (skipped without it); a fixed seed and no example database.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from webrt.errors import WebrtError  # noqa: E402

SETTINGS = dict(deadline=5000, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

PIECES = ["a", "b", " ", "\n", "{", '"', "\\", "\x00", "\u00e9", "\U0001f600", "<|im_end|>", "1", "\ud800"]
TEXT = st.lists(st.sampled_from(PIECES), max_size=4).map("".join)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.sampled_from([0, -1, 1, 2**31, 2**63, 10**400, 1e308, 1e-300, 0.5, -0.0])
           | st.floats(allow_nan=True, allow_infinity=True) | TEXT)
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                       max_leaves=4)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``doc`` (dict keys and list indices)."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out += _paths(value, (*prefix, key))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


OPS = ["nonsense", "delete", "null", "wrap", "stringify", "swap", "negate", "empty", "dup"]


@st.composite
def mutated(draw: Callable, valid: Any, max_mutations: int = 3) -> Any:
    """``valid`` with 1..max_mutations random mutations (or, one time in ten, unchanged)."""
    doc = copy.deepcopy(valid)
    if draw(st.integers(0, 9)) == 0:
        return doc
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = _paths(doc)
        if not paths:
            return draw(JSONISH)
        path = draw(st.sampled_from(paths))
        parent, key = _get(doc, path[:-1]), path[-1]
        value = parent[key]
        op = draw(st.sampled_from(OPS))
        if op == "nonsense":
            new = draw(JSONISH)
        elif op == "delete":
            del parent[key]
            continue
        elif op == "null":
            new = None
        elif op == "wrap":
            new = draw(st.sampled_from([[value], {"x": value}, (value,)]))
            new = list(new) if isinstance(new, tuple) else new
        elif op == "stringify":
            new = str(value)
        elif op == "swap":  # another part of the document in this place: shape confusion
            new = copy.deepcopy(_get(doc, draw(st.sampled_from(paths))))
        elif op == "negate":
            new = -value if isinstance(value, (int, float)) and not isinstance(value, bool) else \
                (not value if isinstance(value, bool) else draw(st.integers(-(2**40), 0)))
        elif op == "empty":
            new = type(value)() if isinstance(value, (dict, list, str)) else 0
        else:  # dup: a list grows a copy of an item, a dict a copy of a value under a new key
            if isinstance(value, list) and value:
                value.append(copy.deepcopy(draw(st.sampled_from(value))))
                continue
            if isinstance(value, dict) and value:
                value[draw(TEXT)] = copy.deepcopy(draw(st.sampled_from(list(value.values()))))
                continue
            new = [value, value]
        parent[key] = new
    return doc


def only_typed(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except WebrtError:
        return None
    except RecursionError:  # a self-nesting document of unbounded depth: not an input we produce
        return None


# --- valid documents ------------------------------------------------------------------------------
def _added(i: int, content: str, special: bool = True) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": not special, "special": special}


BYTE_LEVEL = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [_added(7, "<|im_end|>"), _added(8, "<|im_start|>")],
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(?i:'s|'t)|\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+|\\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": {"a": 0, "b": 1, "\u0120": 2, "ab": 3, "\u0120a": 4, "c": 5, "1": 6,
                        "<|im_end|>": 7, "<|im_start|>": 8},
              "merges": ["a b", ["\u0120", "a"]]},
}

SENTENCEPIECE = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [_added(0, "<unk>"), _added(1, "<s>"), _added(2, "</s>")],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                        {"type": "Replace", "pattern": {"String": " "},
                                                         "content": "\u2581"}]},
    "pre_tokenizer": None,
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                {"Sequence": {"id": "B", "type_id": 1}}],
                       "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
              "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "<0xC3>": 4, "<0xA9>": 5, "\u2581": 6,
                        "a": 7, "b": 8, "\u2581a": 9, "ab": 10},
              "merges": ["\u2581 a", "a b"]},
}

WORDPIECE = {
    "version": "1.0",
    "truncation": {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0},
    "padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                "pad_type_id": 0, "pad_token": "[PAD]"},
    "added_tokens": [_added(0, "[PAD]"), _added(1, "[UNK]"), _added(2, "[CLS]"), _added(3, "[SEP]")],
    "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                   "strip_accents": None, "lowercase": True},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
    "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "max_input_chars_per_word": 100,
              "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "##b": 6, "ab": 7, "1": 8}},
}

METASPACE = {
    "added_tokens": [_added(0, "<unk>")],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Strip",
                                                        "strip_left": True, "strip_right": True}]},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "Punctuation", "behavior": "Isolated"},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}]},
    "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1],
                       "trim_offsets": True, "add_prefix_space": True},
    "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
    "model": {"type": "BPE", "unk_token": "<unk>", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3, "a": 4,
                                                              "\u2581a": 5}, "merges": ["\u2581 a"]},
}


@pytest.mark.parametrize("spec", [BYTE_LEVEL, SENTENCEPIECE, WORDPIECE, METASPACE])
def test_seed_tokenizers_are_valid(spec: dict) -> None:
    from webrt.tokenizer import Tokenizer

    tok = Tokenizer.from_dict(copy.deepcopy(spec))
    ids = tok.encode("ab a\u00e9 1<|im_end|>")
    assert ids and isinstance(tok.decode(ids), str)


TOKENIZER_CONFIG = {"bos_token": "<s>", "eos_token": {"content": "<|im_end|>", "special": True}, "add_bos_token": True}


@settings(max_examples=1500, **SETTINGS)
@given(st.sampled_from([BYTE_LEVEL, SENTENCEPIECE, WORDPIECE, METASPACE]).flatmap(lambda s: mutated(s, 4)),
       st.none() | mutated(TOKENIZER_CONFIG, 2))
def test_tokenizer_json_mutations_give_a_tokenizer_or_a_typed_error(spec: Any, config: Any) -> None:
    from webrt.tokenizer import Tokenizer

    tok = only_typed(lambda: Tokenizer.from_dict(spec, config))
    if tok is None:
        return
    for text in ("ab a\u00e9 1<|im_end|>", ""):
        ids = only_typed(lambda: tok.encode(text))
        if ids is not None:
            assert all(isinstance(i, int) for i in ids)
            out = only_typed(lambda: tok.decode(ids))
            assert out is None or isinstance(out, str)


# --- HF config.json -------------------------------------------------------------------------------
HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 320, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "rms_norm_eps": 1e-5, "max_position_embeddings": 256, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 128},
    "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "sliding_window": None,
    "use_sliding_window": False, "bos_token_id": 1, "eos_token_id": 2,
}
HF_CONFIG_V5 = {**{k: v for k, v in HF_CONFIG.items() if k not in ("rope_theta", "rope_scaling")},
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "sliding_window": 64,
                "use_sliding_window": True}


@settings(max_examples=1500, **SETTINGS)
@given(st.sampled_from([HF_CONFIG, HF_CONFIG_V5]).flatmap(lambda s: mutated(s, 3)))
def test_config_json_mutations_give_a_config_or_a_typed_error(d: Any) -> None:
    from webrt.models.config import MAX_POSITIONS, TransformerConfig

    config = only_typed(lambda: TransformerConfig.from_hf(d))
    if config is None:
        return
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "context_window_size"):
        value = getattr(config, name)
        assert type(value) is int and 1 <= value <= MAX_POSITIONS, (name, value)
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert math.isfinite(config.rope_theta) and config.rope_theta > 0 and config.rms_norm_eps > 0
    assert TransformerConfig.from_dict(config.to_dict()) == config


# --- mlc-chat-config.json -------------------------------------------------------------------------
CONV = {
    "name": "chatml", "system_template": "<|im_start|>system\n{system_message}<|im_end|>\n",
    "system_message": "You are helpful.", "system_prefix_token_ids": None, "add_role_after_system_message": True,
    "roles": {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
    "role_templates": {"user": "{user_message}", "assistant": "{assistant_message}"},
    "messages": [], "seps": ["<|im_end|>\n"], "role_content_sep": "\n", "role_empty_sep": "\n",
    "stop_str": ["<|im_end|>"], "stop_token_ids": [2, 7], "function_string": "", "use_function_calling": False,
}
CHAT_CONFIG = {
    "version": "0.1", "model_type": "llama", "quantization": "q0f32", "model_config": {},
    "vocab_size": 320, "context_window_size": 256, "sliding_window_size": -1, "prefill_chunk_size": 64,
    "attention_sink_size": -1, "tensor_parallel_shards": 1, "temperature": 0.7, "presence_penalty": 0.0,
    "frequency_penalty": 0.0, "repetition_penalty": 1.0, "top_p": 0.95, "top_k": 40,
    "tokenizer_files": ["tokenizer.json", "tokenizer_config.json"],
    "tokenizer_info": {"token_postproc_method": "byte_level", "prepend_space_in_encode": False,
                       "strip_space_in_decode": False},
    "conv_template": CONV, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                     "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "chat_template_special_tokens": {"eos_token": "<|im_end|>"},
}
CHAT_OPTS = {"temperature": 0.5, "top_p": 0.9, "context_window_size": 128, "conv_config": {"system_message": "hi"}}


CHAT_CONFIG_CONV_ONLY = {k: v for k, v in CHAT_CONFIG.items() if k not in ("chat_template", "chat_template_special_tokens")}


@settings(max_examples=500, **SETTINGS)  # a chat_template costs a Jinja compile: fewer examples
@given(st.sampled_from([CHAT_CONFIG, CHAT_CONFIG_CONV_ONLY, CHAT_CONFIG_CONV_ONLY]).flatmap(lambda s: mutated(s, 3)),
       st.none() | mutated(CHAT_OPTS, 2))
def test_chat_config_mutations_give_a_config_or_a_typed_error(base: Any, opts: Any) -> None:
    from webrt.engine.config import merge_chat_config

    config = only_typed(lambda: merge_chat_config(base, opts))
    if config is None:
        return
    assert config.vocab_size > 0 and 0 < config.top_p <= 1 and config.temperature >= 0
    assert config.window.max_total_length > 0
    prompt = only_typed(config.conv_template.as_prompt)
    assert prompt is None or isinstance(prompt, str)


# --- conversation templates -----------------------------------------------------------------------
@settings(max_examples=1000, **SETTINGS)
@given(mutated(CONV, 3), st.sampled_from(["custom", "chatml", "llama-2", "nope"]),
       st.lists(st.sampled_from(["user", "assistant", "system", "bot"]), max_size=3), TEXT)
def test_conv_template_mutations_give_a_template_or_a_typed_error(data: Any, name: str, roles: list, text: str) -> None:
    from webrt.conversation import get_conv_template
    from webrt.conversation.conversation import Conversation

    for make in (lambda: Conversation.from_json_dict(data), lambda: get_conv_template(name, data)):
        conv = only_typed(make)
        if conv is None:
            continue
        for role in roles:
            only_typed(lambda: conv.append_message(role, text))
        only_typed(lambda: conv.append_reply_header())
        prompt = only_typed(conv.as_prompt)
        assert prompt is None or isinstance(prompt, str)
        only_typed(conv.to_json_dict)


# --- tensor-cache.json ----------------------------------------------------------------------------
TENSOR_CACHE = {
    "metadata": {"ParamSize": 3, "ParamBytes": 96.0, "BitsPerParam": 32.0},
    "records": [
        {"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes": 96,
         "md5sum": "0123456789abcdef0123456789abcdef",
         "records": [
             {"name": "a", "shape": [4, 4], "dtype": "float32", "format": "f32-to-bf16", "nbytes": 32, "byteOffset": 0},
             {"name": "b", "shape": [16], "dtype": "float32", "format": "raw", "nbytes": 64, "byteOffset": 32}]},
        {"dataPath": "params_shard_1.bin", "format": "raw-shard", "nbytes": 8,
         "md5sum": "fedcba9876543210fedcba9876543210",
         "records": [{"name": "c", "shape": [2], "dtype": "uint32", "format": "raw", "nbytes": 8, "byteOffset": 0}]},
    ],
}


def test_seed_tensor_cache_is_valid() -> None:
    from webrt.ndarray_cache.format import TensorCacheIndex

    TensorCacheIndex.from_json(copy.deepcopy(TENSOR_CACHE))


@settings(max_examples=1500, **SETTINGS)
@given(mutated(TENSOR_CACHE, 3))
def test_tensor_cache_mutations_give_an_index_or_a_typed_error(data: Any) -> None:
    from webrt.ndarray_cache.format import TensorCacheIndex

    index = only_typed(lambda: TensorCacheIndex.from_json(data))
    if index is not None:
        assert TensorCacheIndex.loads(index.dumps()).shards == index.shards


# --- AppConfig / ModelRecord ----------------------------------------------------------------------
APP_CONFIG = {
    "model_list": [
        {"model": "https://example.com/m/", "model_id": "m", "model_lib": "https://example.com/m.wasm",
         "overrides": {"temperature": 0.2, "context_window_size": 512}, "vram_required_MB": 100.5,
         "low_resource_required": False, "required_features": ["shader-f16"], "model_type": "llm"},
        {"model_url": "https://example.com/n/", "local_id": "n", "model_lib_url": "n.wasm"},
    ],
    "cache_backend": "cache", "useIndexedDBCache": False,
}


@settings(max_examples=1500, **SETTINGS)
@given(mutated(APP_CONFIG, 3))
def test_app_config_mutations_give_a_config_or_a_typed_error(data: Any) -> None:
    from webrt.engine.config import AppConfig, ModelRecord

    app = only_typed(lambda: AppConfig.from_dict(data))
    if app is not None:
        for record in app.model_list:
            assert all(isinstance(getattr(record, f), str) and getattr(record, f)
                       for f in ("model", "model_id", "model_lib"))
            assert only_typed(lambda: app.find(record.model_id)) is record
    if isinstance(data, dict) and isinstance(data.get("model_list"), list):
        for entry in data["model_list"]:
            only_typed(lambda: ModelRecord.from_dict(entry))


# --- what the fuzzing found, as fixed examples ----------------------------------------------------
@pytest.mark.parametrize("path, value, field", [
    (("added_tokens", 0, "content"), ["<|im_end|>"], "content"),  # unhashable content
    (("added_tokens", 0, "id"), "7", "id"),
    (("added_tokens",), "[]", "added_tokens"),
    (("model", "merges", 1), ["\u0120"], "merges"),  # a one-part merge
    (("model", "merges"), {"a": "b"}, "merges"),
    (("model", "vocab"), [["a", 0]], "vocab"),
    (("model", "vocab", "a"), "0", "vocab"),
    (("post_processor",), {"type": "BertProcessing", "sep": ["</s>"], "cls": ["<s>", 1]}, "sep"),
    (("post_processor",), {"type": "TemplateProcessing", "single": [{"SpecialToken": "<s>"}]}, "single"),
    (("post_processor",), {"type": "TemplateProcessing", "single": [{"SpecialToken": {}}]}, "single"),
    (("pre_tokenizer", "pretokenizers", 0, "pattern"), {"Regex": None}, "pattern"),
    (("pre_tokenizer", "pretokenizers"), None, "pretokenizers"),
    (("normalizer",), ["NFC"], "normalizer"),
    (("decoder",), {"type": "Sequence", "decoders": 5}, "decoders"),
    (("truncation",), {"max_length": "8"}, "max_length"),
    (("padding",), {"strategy": {"Fixed": 8}, "pad_to_multiple_of": [8]}, "pad_to_multiple_of"),
])
def test_malformed_tokenizer_json_fields_are_named(path: tuple, value: Any, field: str) -> None:
    from webrt.errors import TokenizerError
    from webrt.tokenizer import Tokenizer

    spec = copy.deepcopy(BYTE_LEVEL)
    _get(spec, path[:-1])[path[-1]] = value
    with pytest.raises(TokenizerError, match=field):
        Tokenizer.from_dict(spec)


@pytest.mark.parametrize("text, config", [("1" * 5000, None), ("[" * 100_000, None), ("{}", "7" * 5000),
                                          ('{"model": null}', None)])
def test_tokenizer_json_text_that_json_cannot_hold_is_a_tokenizer_error(text: str, config: Any) -> None:
    from webrt.errors import TokenizerError
    from webrt.tokenizer import Tokenizer

    with pytest.raises(TokenizerError):
        Tokenizer.from_json_str(text, config)


def test_tokenizer_config_must_be_an_object() -> None:
    from webrt.errors import TokenizerError
    from webrt.tokenizer import Tokenizer

    with pytest.raises(TokenizerError, match="tokenizer_config"):
        Tokenizer.from_dict(copy.deepcopy(BYTE_LEVEL), ["bos_token"])  # type: ignore[arg-type]


def test_null_added_tokens_and_optional_bpe_fields_still_load() -> None:
    from webrt.tokenizer import Tokenizer

    spec = copy.deepcopy(SENTENCEPIECE)
    spec["added_tokens"] = None
    spec["model"]["continuing_subword_prefix"] = None
    assert Tokenizer.from_dict(spec).encode("ab")


@pytest.mark.parametrize("base_change, opts, field", [
    ({"conv_config": "x"}, None, "conv_config"), ({}, {"conv_config": [1]}, "conv_config"),
    ({"tokenizer_info": "byte_level"}, None, "tokenizer_info"), ({"tokenizer_files": 5}, None, "tokenizer_files"),
    ({}, {"context_window_size": 10**9}, "context_window_size"), ({}, {"prefill_chunk_size": 2**63}, "prefill_chunk_size"),
    ({}, {"attention_sink_size": -100}, "attention_sink_size"),
    ({"conv_template": {**CONV, "role_templates": "x"}}, None, "role_templates"),
    ({"conv_template": {**CONV, "messages": 3}}, None, "messages"),
])
def test_chat_config_bad_fields_are_model_config_errors(base_change: dict, opts: Any, field: str) -> None:
    from webrt.engine.config import merge_chat_config

    with pytest.raises(WebrtError, match=field):
        merge_chat_config({**CHAT_CONFIG, **base_change}, opts)


@pytest.mark.parametrize("data, field", [
    ({"model_list": None}, "model_list"), ({"model_list": 3}, "model_list"), ([], "AppConfig"),
    ({"model_list": [{**APP_CONFIG["model_list"][0], "required_features": 7}]}, "required_features"),
])
def test_app_config_bad_fields_are_model_config_errors(data: Any, field: str) -> None:
    from webrt.engine.config import AppConfig
    from webrt.errors import ModelConfigError

    with pytest.raises(ModelConfigError, match=field):
        AppConfig.from_dict(data)


# --- mlc-chat-config.json as `webrt compile` reads it --------------------------------------------
def _compile_chat_config() -> dict:
    from webrt.models.config import TransformerConfig

    model = TransformerConfig.from_hf(HF_CONFIG).override(context_window_size=256, prefill_chunk_size=64).to_dict()
    return {**CHAT_CONFIG_CONV_ONLY, "model_config": model}


@settings(max_examples=1000, **SETTINGS)
@given(st.just(None).flatmap(lambda _: mutated(_compile_chat_config(), 3)),
       st.sampled_from(["", "context_window_size=128", "prefill_chunk_size=0", "attention_sink_size=-5",
                        f"context_window_size={2**63}", "sliding_window_size=64", "nonsense", "prefill_chunk_size=x"]))
def test_compile_chat_config_mutations_give_a_model_config_or_a_typed_error(chat_config: Any, overrides: str) -> None:
    pytest.importorskip("tvm")
    from webrt.compiler.compile import model_config_for, parse_overrides
    from webrt.compiler.gen_config import REQUIRED_CHAT_CONFIG_FIELDS
    from webrt.chat_config import MAX_CONTEXT_WINDOW

    if not isinstance(chat_config, dict) or any(k not in chat_config for k in REQUIRED_CHAT_CONFIG_FIELDS):
        return  # load_chat_config refuses these before model_config_for
    config = only_typed(lambda: model_config_for(chat_config, parse_overrides(overrides)))
    if config is not None:
        window = max(config.context_window_size, config.sliding_window_size)
        assert 1 <= window <= MAX_CONTEXT_WINDOW and 1 <= config.prefill_chunk_size <= window
