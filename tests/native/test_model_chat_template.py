"""The model's own chat template, end to end: ``webrt gen_config`` keeps it (HF
``tokenizer_config.json``, its list-of-templates form, ``chat_template.jinja``, GGUF metadata) with
the special tokens and the conv_template defaults it implies, and the engine prefills exactly the
token ids transformers' ``apply_chat_template(..., tokenize=True)`` gives (the reference), for
system / no-system / multi-turn conversations, tools and template keywords. Sampling defaults come
from the source (``generation_config.json``, GGUF ``general.sampling.*``) or documented values.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from model_factory import build_artifacts, cache_root, make_tiny_hf, smollm2_gguf, smollm2_tokenizer_dir
from engine_util import engine_for, record_for, run, two_turns
from webrt.compiler.gen_config import GENERATION_DEFAULTS, gen_config
from webrt.engine import AppConfig, Engine
from webrt.errors import ConversationTemplateError, InvalidRequestError
from webrt.tokenizer import Tokenizer

#: A Qwen2.5-style template for the tiny model: a default system message, tools, and a keyword.
TINY_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\nTools: ' + (tools | tojson) + '<|im_end|>\\n' }}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
TINY_SYSTEM = "You are a tiny test model."
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]  # fits 256 tokens
CONVERSATIONS: dict[str, list[dict[str, str]]] = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello world"}],
    "turns": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": " the quick brown fox "},
              {"role": "user", "content": "and the lazy dog?"}],
}


def _hf_with_template(name: str, write: Any) -> Path:
    """The tiny smollm2-shaped HF model (cached) with ``write(folder)`` adding a chat template."""
    folder = cache_root() / f"hf-{name}-v1"
    if not (folder / "config.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix=f"hf-{name}.", dir=cache_root()))
        make_tiny_hf("smollm2", staging)
        write(staging)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    return folder


def _write_tiny_template(folder: Path) -> None:
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = TINY_TEMPLATE
    config_file.write_text(json.dumps(config))


def tiny_template_hf() -> Path:
    """The tiny HF model whose tokenizer_config.json carries TINY_TEMPLATE (cached)."""
    return _hf_with_template("smollm2-chat-template", _write_tiny_template)


def tiny_template_artifacts():
    """That model converted, gen_config'd and compiled for the CPU (cached)."""
    return build_artifacts("tiny-chat-template", tiny_template_hf(), "q0f32")


@pytest.fixture(scope="module")
def tiny_hf() -> Path:
    return tiny_template_hf()


@pytest.fixture(scope="module")
def tiny(tiny_hf: Path):
    return tiny_template_artifacts()


def _hf_ids(tokenizer_dir: Path, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False,
                                        **kwargs))


# --- gen_config ---------------------------------------------------------------------------------
def test_gen_config_keeps_the_hf_template_and_derives_conv_defaults(tiny_hf: Path, tmp_path: Path) -> None:
    config = gen_config(tiny_hf, "q0f32", "chatml", tmp_path / "out")
    assert config["chat_template"] == TINY_TEMPLATE
    assert config["chat_template_special_tokens"] == {
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    conv = config["conv_template"]
    assert conv["system_message"] == TINY_SYSTEM  # what the template writes when there is none
    assert conv["stop_str"] == ["<|im_end|>"] and conv["stop_token_ids"] == [2]
    saved = json.loads((tmp_path / "out" / "mlc-chat-config.json").read_text())
    assert saved["chat_template"] == TINY_TEMPLATE


def test_gen_config_reads_the_list_form_and_the_jinja_file(tiny_hf: Path, tmp_path: Path) -> None:
    listed = tmp_path / "listed"
    shutil.copytree(tiny_hf, listed)
    config = json.loads((listed / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "{{ 'tools' }}"},
                               {"name": "default", "template": TINY_TEMPLATE}]
    (listed / "tokenizer_config.json").write_text(json.dumps(config))
    assert gen_config(listed, "q0f32", "chatml", tmp_path / "a")["chat_template"] == TINY_TEMPLATE
    jinja_file = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    (listed / "chat_template.jinja").write_text(jinja_file)  # the separate file wins, as in transformers
    result = gen_config(listed, "q0f32", "chatml", tmp_path / "b")
    assert result["chat_template"] == jinja_file and result["conv_template"]["system_message"] == ""


def test_gen_config_without_a_template_keeps_the_named_conv_template(tmp_path: Path) -> None:
    plain = _hf_with_template("smollm2-no-template", lambda folder: None)
    config = gen_config(plain, "q0f32", "chatml", tmp_path / "out")
    assert "chat_template" not in config
    assert config["conv_template"]["system_message"].startswith("A conversation between")


@pytest.mark.parametrize("template,needle", [
    ("{% for m in messages %}{{ m.content }", "does not parse"),
    ("{{ raise_exception('no users here') }}", "no users here"),
])
def test_a_bad_template_is_a_typed_error_at_gen_config(tiny_hf: Path, tmp_path: Path, template: str,
                                                       needle: str) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_hf, bad)
    config = json.loads((bad / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (bad / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConversationTemplateError, match=needle) as info:
        gen_config(bad, "q0f32", "chatml", tmp_path / "out")
    assert "tokenizer_config.json" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_gen_config_keeps_the_gguf_template(tmp_path: Path) -> None:
    import gguf

    try:
        path = smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    config = gen_config(path, "q0f32", "chatml", tmp_path / "out")
    assert config["chat_template"] == gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"].contents()
    conv = config["conv_template"]
    assert conv["system_message"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert conv["stop_str"] == ["<|im_end|>"] and conv["stop_token_ids"] == [2]
    assert config["chat_template_special_tokens"]["bos_token"] == "<|im_start|>"
    # SmolLM2's GGUF has no general.sampling.* metadata: the documented defaults
    assert (config["temperature"], config["top_p"], config["repetition_penalty"]) == (0.7, 0.95, 1.0)
    assert "top_k" not in config


# --- sampling defaults ------------------------------------------------------------------------------
def test_sampling_defaults_from_generation_config(tiny_hf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(tiny_hf, folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05}))
    config = gen_config(folder, "q0f32", "chatml", tmp_path / "a")
    assert (config["temperature"], config["top_p"], config["top_k"], config["repetition_penalty"]) == (
        0.6, 0.9, 20, 1.05)
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    config = gen_config(folder, "q0f32", "chatml", tmp_path / "b")
    assert {k: config[k] for k in GENERATION_DEFAULTS} == GENERATION_DEFAULTS
    assert GENERATION_DEFAULTS["temperature"] == 0.7 and GENERATION_DEFAULTS["top_p"] == 0.95


def test_sampling_defaults_from_gguf_metadata(tmp_path: Path) -> None:
    """A GGUF carrying ``general.sampling.*`` (named by the gguf package's constants)."""
    import gguf

    from webrt.compiler.gen_config import _generation_defaults
    from webrt.compiler.sources import GGUFSource

    path = tmp_path / "sampling.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((writer.add_block_count, 1), (writer.add_context_length, 64), (writer.add_embedding_length, 8),
                       (writer.add_feed_forward_length, 16), (writer.add_head_count, 2), (writer.add_vocab_size, 10)):
        add(value)
    writer.add_layer_norm_rms_eps(1e-5)
    keys = gguf.Keys.General
    writer.add_float32(keys.SAMPLING_TEMP, 0.5)
    writer.add_float32(keys.SAMPLING_TOP_P, 0.8)
    writer.add_int32(keys.SAMPLING_TOP_K, 40)
    writer.add_float32(keys.SAMPLING_PENALTY_REPEAT, 1.1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    source = GGUFSource(path)
    try:
        values = _generation_defaults(None, source)
    finally:
        source.close()
    assert values["top_k"] == 40
    assert (values["temperature"], values["top_p"], values["repetition_penalty"]) == pytest.approx((0.5, 0.8, 1.1))


# --- the engine's prompts ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_engine_prefills_transformers_ids_on_the_tiny_model(tiny, tiny_hf: Path, name: str) -> None:
    messages = CONVERSATIONS[name]
    expected = _hf_ids(tiny_hf, messages)

    async def main():
        engine = await engine_for(tiny)
        model = engine.get_model()
        assert model.chat_prompt_tokens(messages) == expected
        reply = await engine.chat.completions.create(messages=messages, temperature=0, max_tokens=3)
        assert model.cached_tokens[: len(expected)] == expected  # what the cache really holds
        assert reply.usage.prompt_tokens == len(expected)

    run(main())


def test_tools_and_template_kwargs_reach_the_template(tiny, tiny_hf: Path) -> None:
    messages = CONVERSATIONS["user"]

    async def main():
        engine = await engine_for(tiny)
        model = engine.get_model()
        await engine.chat.completions.create(messages=messages, temperature=0, max_tokens=2, tools=TOOLS,
                                             chat_template_kwargs={"enable_thinking": False})
        return model.cached_tokens

    cached = run(main())
    expected = _hf_ids(tiny_hf, messages, tools=TOOLS, enable_thinking=False)
    assert cached[: len(expected)] == expected
    with pytest.raises(InvalidRequestError, match="may not set"):
        run(Engine().chat.completions.create(messages=messages, chat_template_kwargs={"add_generation_prompt": 0}))


def test_second_turn_reuses_the_cache_with_the_template(tiny, tiny_hf: Path) -> None:
    first = CONVERSATIONS["user"]

    async def main():
        engine = await engine_for(tiny)
        return *await two_turns(engine, first, "And Germany?", 6), engine.get_model().cached_tokens

    history, one, two, cached = run(main())
    expected = _hf_ids(tiny_hf, history)
    assert cached[: len(expected)] == expected
    assert two.usage.prompt_tokens == len(expected)
    cached_tokens = two.usage.prompt_tokens_details["cached_tokens"]
    assert cached_tokens >= one.usage.prompt_tokens  # the first turn's prompt is not prefilled again
    assert two.usage.extra["prefill_tokens"] == len(expected) - cached_tokens


def test_chat_opts_system_message_and_conv_template_override(tiny, tiny_hf: Path) -> None:
    messages = CONVERSATIONS["user"]

    async def main():
        engine = await engine_for(tiny, {"conv_config": {"system_message": "Be brief."}})
        with_system = engine.get_model().chat_prompt_tokens(messages)
        await engine.reload("tiny", {"conv_template": "chatml_nosystem"})  # replaces the model's template
        conv = engine.get_model().chat_prompt_tokens(messages)
        return with_system, conv

    with_system, conv = run(main())
    assert with_system == _hf_ids(tiny_hf, [{"role": "system", "content": "Be brief."}, *messages])
    from webrt.conversation import conversation_from_messages, get_conv_template

    pieces = conversation_from_messages(get_conv_template("chatml_nosystem"), messages).get_prompt_array()
    tokenizer = Tokenizer.from_file(tiny.model_dir / "tokenizer.json")
    assert conv == [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False)]


def test_a_bad_template_is_a_typed_error_at_reload(tiny, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny.model_dir, folder)
    config = json.loads((folder / "mlc-chat-config.json").read_text())
    config["chat_template"] = "{% if messages %}unclosed"
    (folder / "mlc-chat-config.json").write_text(json.dumps(config))
    record = record_for(tiny)
    record.model = str(folder)

    async def main():
        await Engine(AppConfig([record])).reload("tiny")

    with pytest.raises(ConversationTemplateError, match="does not parse"):
        run(main())


def test_smollm2_template_tokenizes_as_transformers() -> None:
    """SmolLM2's own template and tokenizer (built from the real GGUF): webrt's render + tokenize
    without special tokens equals transformers' ids, for every conversation shape."""
    from webrt.conversation.chat_template import ChatTemplate, special_tokens_from_config

    try:
        folder = smollm2_tokenizer_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    template = ChatTemplate((folder / "chat_template.jinja").read_text(), special_tokens_from_config(config))
    tokenizer = Tokenizer.from_file(folder / "tokenizer.json")
    for messages in CONVERSATIONS.values():
        ids = tokenizer.encode(template.render(messages), add_special_tokens=False)
        assert ids == _hf_ids(folder, messages)


LENML = Path(__file__).resolve().parents[2] / "node_modules" / "@lenml"


@pytest.mark.parametrize("name,stop", [("tokenizer-llama3", "<|eot_id|>"), ("tokenizer-llama3_1", "<|eot_id|>"),
                                       ("tokenizer-qwen2_5", "<|im_end|>"), ("tokenizer-qwen3", "<|im_end|>"),
                                       ("smollm2", "<|im_end|>")])
def test_derived_conv_defaults_on_real_templates(name: str, stop: str) -> None:
    """The derived default system message reproduces the template's no-system prompt in
    transformers, and the derived stop token is what transformers writes after a reply."""
    from transformers import AutoTokenizer

    from webrt.conversation.chat_template import ChatTemplate, special_tokens_from_config
    from webrt.conversation.model_template import derive_defaults

    if name == "smollm2":
        folder = smollm2_tokenizer_dir()
    else:
        found = sorted((LENML / name).rglob("tokenizer_config.json"))
        if not found:
            pytest.skip(f"npm @lenml/{name} is missing")
        folder = found[0].parent
    reference = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer = Tokenizer.from_file(folder / "tokenizer.json")
    defaults = derive_defaults(ChatTemplate(reference.chat_template, special_tokens_from_config(config)),
                               lambda s: tokenizer.encode(s, add_special_tokens=False), tokenizer.special_token_ids,
                               tokenizer.id_to_token, [])
    user = CONVERSATIONS["user"]
    plain = reference.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    if defaults.system_message:
        assert reference.apply_chat_template([{"role": "system", "content": defaults.system_message}, *user],
                                             tokenize=False, add_generation_prompt=True) == plain
    else:
        assert "You are" not in plain
    assert defaults.stop_str == [stop] and defaults.stop_token_ids == [reference.convert_tokens_to_ids(stop)]
    reply = reference.apply_chat_template([*user, {"role": "assistant", "content": "Paris."}], tokenize=False)
    assert "Paris." + stop in reply
