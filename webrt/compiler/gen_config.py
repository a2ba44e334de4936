"""``webrt gen_config``: write ``mlc-chat-config.json`` and the tokenizer files.

Fields and defaults follow MLC-LLM's gen_config, so WebLLM reads the result as it reads MLC's.

The model's own Jinja chat template, when the source has one (an HF folder's
``chat_template.jinja``, else ``tokenizer_config.json`` ``chat_template``; a GGUF's
``tokenizer.chat_template``), is kept as ``chat_template`` with the special-token strings it uses
(``chat_template_special_tokens``); the engine renders prompts with it. ``conv_template`` stays
for WebLLM, its system message and stop strings / ids derived from that template and the
tokenizer's EOS ids (see :mod:`webrt.conversation.model_template`). A template that does not
parse or render a one-message conversation is a ConversationTemplateError.

Sampling defaults: ``temperature``, ``top_p``, ``top_k`` and ``repetition_penalty`` come from an
HF folder's ``generation_config.json`` or a GGUF's ``general.sampling.*`` metadata (``temp``,
``top_p``, ``top_k``, ``penalty_repeat``) where present; otherwise temperature 0.7, top_p 0.95,
repetition_penalty 1.0. Temperature 1.0 with top_p 1.0 samples the whole tail of the
distribution, where small (and quantized) models put enough mass on off-topic tokens to derail
a reply; 0.7 sharpens the distribution and top_p 0.95 drops the last 5% of the mass, while the
replies still vary with the seed. Repetition penalties change what the model was trained to
predict, so none is applied unless the model asks for one. ``top_k`` is recorded when the source
gives one, but the engine samples with temperature and top-p only and does not apply it.

Window limits (checked here and again by ``webrt compile`` after ``--overrides``, typed
ModelConfigError naming the flag): exactly one of ``context_window_size`` and
``sliding_window_size`` is positive (the other -1), at most ``MAX_CONTEXT_WINDOW`` = 2**20
(1,048,576) tokens; a model whose ``max_position_embeddings`` is larger needs an explicit
``--context-window-size``. ``prefill_chunk_size`` is 1..2**20 (clipped to the window);
``attention_sink_size`` is -1 (none) or 0..window-1. The output folder is checked before any work
(:mod:`webrt.compiler.output`).

A Hugging Face folder needs only config.json, as with MLC-LLM: the weights are not read (a
library can be compiled for a model whose weights are elsewhere), and a folder without
tokenizer.json or tokenizer.model gets a TokenizerMissingWarning saying what the model then lacks.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from webrt import __version__
from webrt.chat_config import CHAT_CONFIG_FILE, MAX_CONTEXT_WINDOW
from webrt.compiler.output import check_output_dir, staged_output_dir
from webrt.compiler.quantization import get_quantization
from webrt.compiler.sources import GGUFSource, open_source
from webrt.conversation import Conversation, get_conv_template
from webrt.conversation.chat_template import special_tokens_from_config
from webrt.conversation.model_template import (
    CHAT_TEMPLATE_KEY,
    SPECIAL_TOKENS_KEY,
    checked_template,
    derive_defaults,
    template_text,
)
from webrt.errors import ModelConfigError
from webrt.models.config import TransformerConfig, check_int, check_windows
from webrt.models.registry import architecture_for_hf

class TokenizerMissingWarning(UserWarning):
    """gen_config found no tokenizer files: the config is enough to compile, not to chat."""


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
)
DEFAULT_PREFILL_CHUNK = 2048
SLIDING_WINDOW_SINK = 0  # HF's Mistral keeps no attention sink; pass --attention-sink-size to add one
GENERATION_DEFAULTS = {  # why these values: see the module docstring
    "temperature": 0.7,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "top_p": 0.95,
}
#: GGUF ``general.sampling.*`` metadata -> chat config field.
GGUF_SAMPLING_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.penalty_repeat": "repetition_penalty",
}


def _window_settings(
    config: TransformerConfig,
    context_window_size: int | None,
    sliding_window_size: int | None,
    attention_sink_size: int | None,
) -> tuple[int, int, int]:
    """(context_window_size, sliding_window_size, attention_sink_size); exactly one window is -1."""
    sliding = config.sliding_window_size if sliding_window_size is None else sliding_window_size
    if sliding is not None and sliding > 0:
        context = -1 if context_window_size is None else context_window_size
        if context not in (-1, None):
            raise ModelConfigError(
                "a sliding-window model takes --sliding-window-size, not --context-window-size; "
                "pass --sliding-window-size -1 to turn the window off."
            )
        sink = SLIDING_WINDOW_SINK if attention_sink_size is None else attention_sink_size
        return -1, sliding, sink
    context = config.context_window_size if context_window_size is None else context_window_size
    if context <= 0:
        raise ModelConfigError(f"context_window_size must be positive, got {context}")
    return context, -1, -1 if attention_sink_size is None else attention_sink_size


def _generation_defaults(folder: Path | None, gguf: GGUFSource | None = None) -> dict[str, float | int]:
    """Sampling defaults: the source's own where it has them, else GENERATION_DEFAULTS."""
    values: dict[str, float | int] = dict(GENERATION_DEFAULTS)
    found: dict[str, Any] = {}
    if gguf is not None:
        found = {name: gguf.field(key) for key, name in GGUF_SAMPLING_KEYS.items()}
    gen = folder / "generation_config.json" if folder else None
    if gen is not None and gen.is_file():
        data = json.loads(gen.read_text())
        found = {key: data.get(key) for key in (*values, "top_k")}
    for key, value in found.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key == "top_k":
            if value > 0:
                values["top_k"] = int(value)
        elif key != "top_p" or 0 < value <= 1:
            values[key] = float(value)
    return values


def _eos_ids(*values: Any) -> list[int]:
    """Token ids from ``eos_token_id`` values (an int or a list of ints each), in order."""
    out: list[int] = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and item not in out:
                out.append(item)
    return out


def _chat_template(
    source_path: Path, gguf: GGUFSource | None, staging: Path, conv: Conversation, eos_ids: list[int]
) -> dict[str, Any]:
    """The chat config fields of the model's own chat template (none without one); ``conv``
    gets the system message and stop strings / ids derived from it."""
    from webrt.tokenizer import Tokenizer

    if gguf is not None:
        source, where = gguf.field("tokenizer.chat_template"), f"{source_path.name} (tokenizer.chat_template)"
        # llama.cpp's end-of-turn / end-of-message tokens stop a reply too
        eos_ids = _eos_ids(eos_ids, gguf.field("tokenizer.ggml.eot_token_id"), gguf.field("tokenizer.ggml.eom_token_id"))
    elif (source_path / "chat_template.jinja").is_file():
        source, where = (source_path / "chat_template.jinja").read_text(encoding="utf-8"), "chat_template.jinja"
    else:
        config_file = source_path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        source, where = config.get("chat_template"), "chat_template of tokenizer_config.json"
    text = template_text(source)
    if text is None:
        return {}
    special: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the later file wins, as in transformers
        if (staging / name).is_file():
            special.update(json.loads((staging / name).read_text()))
    tokens = special_tokens_from_config(special)
    template = checked_template(text, tokens, f"the chat template of {source_path} ({where})")
    tokenizer = Tokenizer.from_file(staging / "tokenizer.json") if (staging / "tokenizer.json").is_file() else None
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        eos_ids = _eos_ids(eos_ids, tokenizer.eos_token_id)
    defaults = derive_defaults(
        template,
        (lambda s: tokenizer.encode(s, add_special_tokens=False)) if tokenizer else None,
        tokenizer.special_token_ids if tokenizer else (),
        tokenizer.id_to_token if tokenizer else (lambda i: None),
        eos_ids,
    )
    conv.system_message = defaults.system_message
    if defaults.stop_str:
        conv.stop_str = defaults.stop_str
    if defaults.stop_token_ids:
        conv.stop_token_ids = defaults.stop_token_ids
    return {CHAT_TEMPLATE_KEY: text, SPECIAL_TOKENS_KEY: tokens}


def tokenizer_info(tokenizer_json: dict[str, Any]) -> dict[str, Any]:
    """MLC's ``tokenizer_info``: how token strings map back to text."""
    decoder = tokenizer_json.get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", []) or []}
    model = tokenizer_json.get("model") or {}
    if "ByteLevel" in kinds:
        method = "byte_level"
    elif model.get("byte_fallback") or "ByteFallback" in kinds:
        method = "byte_fallback"
    else:
        method = "raw"
    normalizer = json.dumps(tokenizer_json.get("normalizer") or {})
    pre = json.dumps(tokenizer_json.get("pre_tokenizer") or {})
    prepend = '"Prepend"' in normalizer or '"prepend_scheme": "always"' in pre or '"prepend_scheme": "first"' in pre
    return {
        "token_postproc_method": method,
        "prepend_space_in_encode": prepend,
        "strip_space_in_decode": "Strip" in kinds,
    }


def _write_tokenizer(source_path: Path, is_gguf: bool, staging: Path) -> list[str]:
    """Copy the tokenizer files (or build them from GGUF metadata); return their names."""
    if is_gguf:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ModelConfigError(
                "building tokenizer.json from GGUF metadata needs transformers (`pip install transformers`)"
            ) from None
        tok = AutoTokenizer.from_pretrained(str(source_path.parent), gguf_file=source_path.name, local_files_only=True)
        tok.save_pretrained(str(staging))
        (staging / "chat_template.jinja").unlink(missing_ok=True)
        return [n for n in ("tokenizer.json", "tokenizer_config.json") if (staging / n).exists()]
    copied = []
    for name in TOKENIZER_FILES:
        src = source_path / name
        if src.is_file():
            shutil.copyfile(src, staging / name)
            copied.append(name)
    if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
        listed = ", ".join(copied) or "no tokenizer files"
        warnings.warn(TokenizerMissingWarning(
            f"{source_path} has neither tokenizer.json nor tokenizer.model, so {CHAT_CONFIG_FILE} lists {listed} and "
            "its stop tokens come without the tokenizer's own. A model library can be compiled from it, but webrt's "
            f"engine (or WebLLM) cannot load the model until the model's tokenizer.json is beside {CHAT_CONFIG_FILE}: "
            f"add the tokenizer files to {source_path} and run gen_config again."), stacklevel=3)
    return copied


def _token_ids(source_config: dict[str, Any], gguf: GGUFSource | None) -> dict[str, Any]:
    if gguf is not None:
        def field(key: str) -> int | None:
            value = gguf.field(key)  # token ids are only in the raw GGUF fields
            return None if value is None else int(value)

        return {
            "pad_token_id": field("tokenizer.ggml.padding_token_id") or 0,
            "bos_token_id": field("tokenizer.ggml.bos_token_id"),
            "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        }
    return {
        "pad_token_id": source_config.get("pad_token_id") or 0,
        "bos_token_id": source_config.get("bos_token_id"),
        "eos_token_id": source_config.get("eos_token_id"),
    }


def gen_config(
    source_path: str | Path,
    quantization: str,
    conv_template: str,
    output: str | Path,
    context_window_size: int | None = None,
    sliding_window_size: int | None = None,
    prefill_chunk_size: int | None = None,
    attention_sink_size: int | None = None,
) -> dict[str, Any]:
    """Write mlc-chat-config.json plus tokenizer files into ``output``; return the config."""
    check_output_dir(output)  # a bad output path fails now, not after the work
    for name, value, low in (("context_window_size", context_window_size, 1),
                             ("sliding_window_size", sliding_window_size, 1),
                             ("prefill_chunk_size", prefill_chunk_size, 1), ("attention_sink_size", attention_sink_size, 0)):
        if value is not None:  # the flags alone, before any work (the window's own checks come later)
            check_int(value, name, f"--{name.replace('_', '-')}", low, MAX_CONTEXT_WINDOW, allowed=(-1,))
    quant = get_quantization(quantization)
    conv = get_conv_template(conv_template)
    source_path = Path(source_path)
    source = open_source(source_path)
    try:
        quant = quant.for_source(source)
        config = TransformerConfig.from_hf(source.config)
        model_type = architecture_for_hf(config.architecture).model_type
        context, sliding, sink = _window_settings(config, context_window_size, sliding_window_size, attention_sink_size)
        window = sliding if sliding > 0 else context
        chunk = min(window, DEFAULT_PREFILL_CHUNK) if prefill_chunk_size is None else prefill_chunk_size
        if context_window_size is None and context > MAX_CONTEXT_WINDOW:
            raise ModelConfigError(
                f"the model's max_position_embeddings is {context}, above webrt's largest context window "
                f"({MAX_CONTEXT_WINDOW}); pass --context-window-size N (N <= {MAX_CONTEXT_WINDOW}).")
        context, sliding, chunk, sink = check_windows(context, sliding, chunk, sink, "gen_config's window flags "
                                                      "(--context-window-size, --sliding-window-size, "
                                                      "--prefill-chunk-size, --attention-sink-size)")
        config = config.override(
            context_window_size=context, sliding_window_size=sliding, prefill_chunk_size=min(chunk, window)
        )
        is_gguf = isinstance(source, GGUFSource)
        folder = None if is_gguf else source_path
        chat_config: dict[str, Any] = {
            "version": __version__,
            "model_type": model_type,
            "quantization": quantization,
            "model_config": config.to_dict(),
            "vocab_size": config.vocab_size,
            "context_window_size": context,
            "sliding_window_size": sliding,
            "prefill_chunk_size": config.prefill_chunk_size,
            "attention_sink_size": sink,
            "tensor_parallel_shards": 1,
            "pipeline_parallel_stages": 1,
            **_generation_defaults(folder, source if is_gguf else None),
        }
        if quant.gguf_formats is not None:  # gguf_f32: each matrix's GGUF type, for compile
            chat_config["gguf_formats"] = dict(quant.gguf_formats)
        with staged_output_dir(output) as staging:
            files = _write_tokenizer(source_path, is_gguf, staging)
            tokenizer_json = staging / "tokenizer.json"
            info = tokenizer_info(json.loads(tokenizer_json.read_text())) if tokenizer_json.exists() else {}
            ids = _token_ids(source.config, source if is_gguf else None)
            gen_file = source_path / "generation_config.json" if folder else None
            gen_eos = json.loads(gen_file.read_text()).get("eos_token_id") if gen_file and gen_file.is_file() else None
            template_fields = _chat_template(source_path, source if is_gguf else None, staging, conv,
                                             _eos_ids(ids["eos_token_id"], gen_eos))
            chat_config.update(
                {
                    "tokenizer_files": files,
                    "tokenizer_info": info,
                    "conv_template": conv.to_json_dict(),
                    **template_fields,
                    **ids,
                }
            )
            (staging / CHAT_CONFIG_FILE).write_text(json.dumps(chat_config, indent=2))
        return chat_config
    finally:
        source.close()


REQUIRED_CHAT_CONFIG_FIELDS = (
    "model_type",
    "quantization",
    "model_config",
    "vocab_size",
    "context_window_size",
    "sliding_window_size",
    "prefill_chunk_size",
    "attention_sink_size",
    "tokenizer_files",
    "conv_template",
)


def load_chat_config(path: str | Path) -> dict[str, Any]:
    """Read and validate an mlc-chat-config.json (a folder holding one also works)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHAT_CONFIG_FILE
    if not p.is_file():
        raise ModelConfigError(f"{p} does not exist; run `webrt gen_config` first.")
    try:
        data = json.loads(p.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, an integer of > 4300 digits, deep nesting
        raise ModelConfigError(f"{p} is not valid JSON ({e}); regenerate it with `webrt gen_config`.") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{p} must hold a JSON object; regenerate it with `webrt gen_config`.")
    missing = [k for k in REQUIRED_CHAT_CONFIG_FIELDS if k not in data]
    if missing:
        raise ModelConfigError(f"{p} lacks required field(s) {', '.join(missing)}; regenerate it with `webrt gen_config`.")
    return data
