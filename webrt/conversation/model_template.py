"""The model's own chat template in ``mlc-chat-config.json``: what ``webrt gen_config`` stores
and derives from it, and how the engine reads it back.

``gen_config`` keeps the model's Jinja template text under :data:`CHAT_TEMPLATE_KEY` and the
special-token strings it is rendered with under :data:`SPECIAL_TOKENS_KEY`. The MLC
``conv_template`` object (which WebLLM reads) stays, with defaults taken from the template:

- ``system_message``: what the template writes when the conversation has no system message
  (found by rendering with and without one; ``""`` when it writes none or refuses system
  messages);
- ``stop_str`` / ``stop_token_ids``: the special token that ends an assistant turn in the
  template (e.g. ``<|im_end|>``, ``<|eot_id|>``), plus the tokenizer's EOS ids.

Pure Python (jinja2 is imported only by :mod:`webrt.conversation.chat_template`), so the engine
reads configs the same way under Pyodide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webrt.conversation.chat_template import ChatTemplate
from webrt.errors import ConversationTemplateError

#: mlc-chat-config.json keys (webrt's own; WebLLM ignores them and uses ``conv_template``).
CHAT_TEMPLATE_KEY = "chat_template"
SPECIAL_TOKENS_KEY = "chat_template_special_tokens"
#: The conversation a template must render at gen_config and at reload.
PROBE_MESSAGES = ({"role": "user", "content": "Hello!"},)
_SYSTEM_MARK = "WEBRTSYSTEMMARK"
_REPLY_MARK = "WEBRTREPLYMARK"


def template_text(value: Any) -> str | None:
    """The template of a ``chat_template`` entry: a string, or HF's list of named templates
    (``[{"name": "default", "template": ...}, ...]``, taking ``default``); None when absent."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        chosen = named.get("default")
        if not isinstance(chosen, str):
            raise ConversationTemplateError(
                f"the model's chat_template lists templates {sorted(map(str, named))} but none named 'default'; "
                "name one 'default' in tokenizer_config.json.")
        return chosen
    if value is None:
        return None
    raise ConversationTemplateError(f"chat_template must be a string or a list of named templates, got {value!r}")


def checked_template(source: str, special_tokens: Mapping[str, str] | None, where: str) -> ChatTemplate:
    """``source`` compiled and rendered once on a one-message conversation, or a
    ConversationTemplateError naming ``where`` and the template's error."""
    try:
        template = ChatTemplate(source, special_tokens)
        template.render(list(PROBE_MESSAGES), add_generation_prompt=True)
    except ConversationTemplateError as e:
        raise ConversationTemplateError(f"{where}: {e}") from None
    return template


def _render_or_none(template: ChatTemplate, messages: list[dict[str, str]], add_generation_prompt: bool) -> str | None:
    try:
        return template.render(messages, add_generation_prompt=add_generation_prompt)
    except ConversationTemplateError:
        return None


def default_system_message(template: ChatTemplate) -> str:
    """The system message the template writes when the conversation has none ("" if none)."""
    user = dict(PROBE_MESSAGES[0])
    plain = template.render([user])
    marked = _render_or_none(template, [{"role": "system", "content": _SYSTEM_MARK}, user], True)
    if marked is None or marked.count(_SYSTEM_MARK) != 1:
        return ""  # no system messages in this template
    before, after = marked.split(_SYSTEM_MARK)
    if plain.startswith(before) and plain.endswith(after) and len(plain) >= len(before) + len(after):
        return plain[len(before): len(plain) - len(after)]
    return ""


def turn_end_text(template: ChatTemplate) -> str | None:
    """The text the template writes right after an assistant message (e.g. ``<|im_end|>\\n``)."""
    messages = [dict(PROBE_MESSAGES[0]), {"role": "assistant", "content": _REPLY_MARK}]
    text = _render_or_none(template, messages, False)
    if text is None or text.count(_REPLY_MARK) != 1:
        return None
    return text.split(_REPLY_MARK)[1]


@dataclass
class TemplateDefaults:
    """What gen_config derives from a template for the ``conv_template`` object."""

    system_message: str
    stop_str: list[str]
    stop_token_ids: list[int]


def derive_defaults(
    template: ChatTemplate,
    encode: Callable[[str], list[int]] | None,
    special_ids: Iterable[int],
    id_to_token: Callable[[int], str | None],
    eos_ids: Iterable[int],
) -> TemplateDefaults:
    """The default system message, and the stop strings / ids: the special token that ends an
    assistant turn (``encode`` tokenizes without special tokens) plus ``eos_ids``."""
    stop_ids = [i for i in dict.fromkeys(eos_ids) if isinstance(i, int)]
    stop_str: list[str] = []
    end = turn_end_text(template)
    if end and encode is not None:
        ids = encode(end)
        if ids and ids[0] in set(special_ids):
            spelled = id_to_token(ids[0])
            if spelled and end.startswith(spelled):
                stop_str.append(spelled)
            if ids[0] not in stop_ids:
                stop_ids.append(ids[0])
    return TemplateDefaults(default_system_message(template), stop_str, stop_ids)
