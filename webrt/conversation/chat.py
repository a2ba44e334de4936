"""OpenAI-style chat messages -> a filled :class:`Conversation`, the way MLC-LLM / WebLLM do it.

A ``system`` message (only allowed first) replaces the template's ``system_message``; every
other message is appended in order; with ``add_generation_prompt`` an assistant reply header
ends the history so the prompt stops where the model starts writing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from webrt.conversation.conversation import Conversation
from webrt.errors import ConversationTemplateError, InvalidRequestError


def conversation_from_messages(
    template: Conversation,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
) -> Conversation:
    """A copy of ``template`` holding ``messages`` (``[{"role": ..., "content": ...}, ...]``)."""
    conv = template.copy()
    conv.reset()
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise InvalidRequestError(f"messages[{i}] must be an object with a 'role'")
        role, content = message["role"], message.get("content")
        if role == "system":
            if i != 0:
                raise InvalidRequestError(
                    f"a system message is only allowed first in the conversation (found at {i})"
                )
            if content is not None and not isinstance(content, str):
                raise InvalidRequestError("a system message's content must be a string")
            conv.system_message = content or ""
            continue
        if content is None and role != "assistant":
            raise InvalidRequestError(f"messages[{i}] ({role}) has no content")
        try:
            conv.append_message(role, content if content is not None else "")
        except ConversationTemplateError as err:
            raise ConversationTemplateError(f"messages[{i}]: {err}") from None
    if add_generation_prompt:
        conv.append_reply_header("assistant")
    return conv


def render_chat(
    template: Conversation,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    reply_prefix: str = "",
) -> str:
    """The prompt text for ``messages`` (the counterpart of HF ``apply_chat_template``).

    Token ids in ``template.system_prefix_token_ids`` (e.g. BOS) are not included: the engine
    prepends them to the tokens.
    """
    conv = conversation_from_messages(
        template, messages, add_generation_prompt=add_generation_prompt
    )
    return conv.as_prompt(reply_prefix=reply_prefix)
