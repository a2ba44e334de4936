"""Registry of named conversation templates.

``get_conv_template(name)`` returns a fresh copy of a registered template; an optional ``config``
dict overrides fields (WebLLM's ``conv_config``). The name ``"custom"`` takes a whole template
from ``config`` at run time, so a model with its own prompt format needs no rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webrt.conversation.conversation import Conversation
from webrt.conversation.templates import builtin_templates
from webrt.errors import ConversationTemplateError

#: The pseudo-name whose template is supplied in full as ``config``.
CUSTOM = "custom"

_REGISTRY: dict[str, Conversation] = {}


def register_conv_template(conv: Conversation, override: bool = False) -> None:
    """Register ``conv`` under ``conv.name`` (a copy is stored).

    Raises ConversationTemplateError when the name is missing, is ``"custom"``, or is already
    registered and ``override`` is false.
    """
    if not isinstance(conv, Conversation):
        raise ConversationTemplateError(
            f"can only register a Conversation, got {type(conv).__name__}"
        )
    if not conv.name:
        raise ConversationTemplateError("a template to register needs a non-empty name")
    if conv.name == CUSTOM:
        raise ConversationTemplateError(f"the name {CUSTOM!r} is reserved for run-time templates")
    if conv.name in _REGISTRY and not override:
        raise ConversationTemplateError(
            f"a conversation template named {conv.name!r} is already registered "
            "(pass override=True to replace it)"
        )
    conv.validate()
    _REGISTRY[conv.name] = conv.copy()


def list_conv_templates() -> list[str]:
    """Sorted names accepted by :func:`get_conv_template` (``"custom"`` included)."""
    return sorted([*_REGISTRY, CUSTOM], key=str.lower)


def get_conv_template(name: str, config: Mapping[str, Any] | None = None) -> Conversation:
    """A fresh copy of the template ``name``, with ``config``'s fields overriding it.

    For ``name="custom"`` ``config`` is the whole ``conv_template`` JSON object (``roles`` and
    ``seps`` required). Unknown names raise ConversationTemplateError listing the known ones.
    """
    if name == CUSTOM:
        if config is None:
            raise ConversationTemplateError(
                "conversation template 'custom' needs config=<conv_template JSON object>"
            )
        return Conversation.from_json_dict(config)
    base = _REGISTRY.get(name)
    if base is None:
        raise ConversationTemplateError(
            f"unknown conversation template {name!r}; known templates: "
            + ", ".join(list_conv_templates())
        )
    if not config:
        return base.copy()
    return Conversation.from_json_dict({**base.to_json_dict(), **dict(config)})


def conv_template_from_config(
    conv_template: str | Mapping[str, Any],
    conv_config: Mapping[str, Any] | None = None,
) -> Conversation:
    """The template an ``mlc-chat-config.json`` describes.

    ``conv_template`` is the config's field: a JSON object (current MLC) or a registered name
    (older artifacts). ``conv_config`` holds field overrides (WebLLM's ``conv_config``).
    """
    if isinstance(conv_template, str):
        return get_conv_template(conv_template, conv_config)
    if isinstance(conv_template, Mapping):
        return Conversation.from_json_dict({**dict(conv_template), **dict(conv_config or {})})
    raise ConversationTemplateError(
        f"conv_template must be a name or a JSON object, got {type(conv_template).__name__}"
    )


for _conv in builtin_templates():
    register_conv_template(_conv)
del _conv
