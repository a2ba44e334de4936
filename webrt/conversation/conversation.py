"""The conversation template (MLC-LLM's ``conv_template`` object) and its prompt renderer.

A :class:`Conversation` holds a template (system prompt, role markers, separators, stop
criteria) and the message history, and renders them into the exact text MLC-LLM and WebLLM
feed to the model. The JSON form is the ``conv_template`` object of ``mlc-chat-config.json``.

Rendering, in pieces (one per turn, as WebLLM's ``getPromptArray`` returns them)::

    system_template.replace("{system_message}", system_message)     # left out when ""
    roles[role] + role_content_sep + role_templates[role](content) + sep  # a finished turn
    roles["assistant"] + role_empty_sep                              # a reply header (None)

``sep`` is ``seps[1]`` after an assistant turn and ``seps[0]`` after any other (a single
separator serves both). With ``add_role_after_system_message=False`` the first message gets no
role prefix when the system prompt is non-empty (``[INST] <<SYS>>...`` style). Token ids in
``system_prefix_token_ids`` (e.g. BOS) are *not* part of the text: an engine prepends them to the
tokens of the first prompt it prefills into an empty KV cache.

Pure Python (stdlib only): the browser runtime imports it under Pyodide.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from webrt.errors import ConversationTemplateError

SYSTEM_PLACEHOLDER = "{system_message}"
FUNCTION_PLACEHOLDER = "{function_string}"

#: Content of one message: text, MLC-style content parts (``[{"type": "text", "text": ...}]``),
#: or ``None`` for a reply header that the model is about to fill.
MessageContent: TypeAlias = str | list[dict[str, Any]] | None

_DEFAULT_ROLE_TEMPLATES: dict[str, str] = {
    "user": "{user_message}",
    "assistant": "{assistant_message}",
    "tool": "{tool_message}",
}
_REQUIRED_FIELDS = ("roles", "seps")
_REQUIRED_ROLES = ("user", "assistant")


def role_placeholder(role: str) -> str:
    """The placeholder a role template uses for the message text, e.g. ``{user_message}``."""
    return "{" + role + "_message}"


@dataclass(kw_only=True)
class Conversation:
    """A conversation template plus its message history (MLC-LLM's ``Conversation``).

    Field names, meanings and defaults follow MLC-LLM's ``conversation_protocol.py``; the JSON
    form (:meth:`to_json_dict`) is the ``conv_template`` object of ``mlc-chat-config.json``, which
    WebLLM reads as its ``ConvTemplateConfig``. ``roles`` and ``seps`` are required.
    """

    name: str | None = None
    system_template: str = SYSTEM_PLACEHOLDER
    system_message: str = ""
    system_prefix_token_ids: list[int] | None = None
    add_role_after_system_message: bool = True
    roles: dict[str, str]
    role_templates: dict[str, str] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)
    seps: list[str]
    role_content_sep: str = ""
    role_empty_sep: str = ""
    stop_str: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    strip_reasoning_in_history: bool = False
    function_string: str = ""
    use_function_calling: bool = False

    def __post_init__(self) -> None:
        # MLC merges the given role templates over the identity defaults.
        if self.role_templates is not None and not isinstance(self.role_templates, Mapping):
            raise ConversationTemplateError(
                f"conversation template: field 'role_templates' must be an object of strings, got {self.role_templates!r}")
        self.role_templates = {**_DEFAULT_ROLE_TEMPLATES, **(self.role_templates or {})}
        if isinstance(self.messages, (list, tuple)):  # validate() names any other type
            self.messages = [list(m) if isinstance(m, (list, tuple)) else m for m in self.messages]
        self.validate()

    # --- validation / (de)serialisation -----------------------------------------------------
    def validate(self) -> None:
        """Check every field's type and value; raise ConversationTemplateError naming the field."""
        where = f"conversation template {self.name!r}" if self.name else "conversation template"

        def bad(fname: str, why: str) -> ConversationTemplateError:
            return ConversationTemplateError(f"{where}: field '{fname}' {why}")

        if self.name is not None and not isinstance(self.name, str):
            raise bad("name", f"must be a string or null, got {type(self.name).__name__}")
        for fname in (
            "system_template",
            "system_message",
            "role_content_sep",
            "role_empty_sep",
            "function_string",
        ):
            if not isinstance(getattr(self, fname), str):
                raise bad(fname, f"must be a string, got {type(getattr(self, fname)).__name__}")
        for fname in (
            "add_role_after_system_message",
            "use_function_calling",
            "strip_reasoning_in_history",
        ):
            if not isinstance(getattr(self, fname), bool):
                raise bad(fname, f"must be true or false, got {getattr(self, fname)!r}")
        for fname in ("roles", "role_templates"):
            value = getattr(self, fname)
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise bad(fname, f"must be an object of strings, got {value!r}")
        missing = [r for r in _REQUIRED_ROLES if r not in self.roles]
        if missing:
            raise bad("roles", f"lacks the role(s) {missing} (has {sorted(self.roles)})")
        for fname in ("seps", "stop_str"):
            value = getattr(self, fname)
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise bad(fname, f"must be a list of strings, got {value!r}")
        if not 1 <= len(self.seps) <= 2:
            raise bad("seps", f"must hold 1 or 2 separators, got {len(self.seps)}")
        for fname in ("stop_token_ids", "system_prefix_token_ids"):
            value = getattr(self, fname)
            if value is None and fname == "system_prefix_token_ids":
                continue
            if not isinstance(value, list) or not all(_is_int(t) for t in value):
                raise bad(fname, f"must be a list of integers, got {value!r}")
        if not isinstance(self.messages, list):
            raise bad("messages", f"must be a list, got {type(self.messages).__name__}")
        for i, message in enumerate(self.messages):
            if not (
                isinstance(message, list) and len(message) == 2 and isinstance(message[0], str)
            ):
                raise bad("messages", f"item {i} must be [role, content], got {message!r}")
            _check_content(message[1], f"{where}: field 'messages' item {i}")

    def to_json_dict(self) -> dict[str, Any]:
        """The ``conv_template`` JSON object (MLC's field order; ``None`` fields left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = copy.deepcopy(value)
        return out

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Conversation:
        """Build a template from a ``conv_template`` JSON object.

        Missing or ``null`` optional fields take MLC's defaults; a missing ``roles`` or ``seps``
        raises ConversationTemplateError naming it. Unknown keys are ignored (as MLC and WebLLM
        do), so configs written by newer MLC versions still load.
        """
        if not isinstance(data, Mapping):
            raise ConversationTemplateError(
                f"a conv_template must be a JSON object, got {type(data).__name__}"
            )
        label = f"conv_template {data.get('name')!r}" if data.get("name") else "conv_template"
        for fname in _REQUIRED_FIELDS:
            if data.get(fname) is None:
                raise ConversationTemplateError(f"{label} lacks the required field '{fname}'")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {
            k: copy.deepcopy(v)
            for k, v in data.items()
            if k in known and (v is not None or k in ("name", "system_prefix_token_ids"))
        }
        return cls(**kwargs)

    def copy(self) -> Conversation:
        """A deep copy (template and history)."""
        return copy.deepcopy(self)

    # --- history -----------------------------------------------------------------------------
    def append_message(self, role: str, content: MessageContent) -> None:
        """Append a finished message (``content=None`` appends a reply header instead)."""
        self._check_role(role)
        _check_content(content, f"message for role {role!r}")
        self.messages.append([role, copy.deepcopy(content)])

    def append_reply_header(self, role: str = "assistant") -> None:
        """Append the header of the reply the model is about to generate."""
        self.append_message(role, None)

    def finish_reply(self, content: str) -> None:
        """Fill the last reply header with the generated text."""
        if not self.messages or self.messages[-1][1] is not None:
            raise ConversationTemplateError("finish_reply() needs a pending reply header")
        self.messages[-1][1] = content

    def reset(self) -> None:
        """Drop the message history (the template stays)."""
        self.messages = []

    # --- rendering ---------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        """The system template with the system message filled in ("" means no system piece)."""
        return self.system_template.replace(SYSTEM_PLACEHOLDER, self.system_message)

    def get_prompt_array(self, *, reply_prefix: str = "") -> list[str]:
        """The whole prompt as pieces: the system prompt (if any), then one piece per message.

        ``reply_prefix`` is text appended right after a final reply header, e.g. Qwen3's empty
        thinking block ``"<think>\\n\\n</think>\\n\\n"`` when thinking is disabled.
        """
        return self._render(0, add_system=True, reply_prefix=reply_prefix)

    def get_prompt_array_last_round(self, *, reply_prefix: str = "") -> list[str]:
        """Only the pieces of the last two messages (new input + reply header), no system prompt.

        This is what a new turn appends when the KV cache already holds the earlier turns
        (WebLLM's ``getPromptArrayLastRound``); it needs at least three messages. Note that
        the separator after the previous reply (e.g. ``<|im_end|>\\n``) belongs to the earlier
        rounds: an engine whose cache lacks it (generation stopped before the stop token was fed
        back) must feed it itself or accept WebLLM's approximation.
        """
        if len(self.messages) < 3:
            raise ConversationTemplateError(
                "get_prompt_array_last_round() needs at least 3 messages (an earlier round, the "
                f"new input and a reply header); have {len(self.messages)}: render the whole "
                "prompt with get_prompt_array() for a first round"
            )
        return self._render(len(self.messages) - 2, add_system=False, reply_prefix=reply_prefix)

    def as_prompt(self, *, reply_prefix: str = "") -> str:
        """The whole prompt as one string (what MLC-LLM's ``as_prompt`` yields for text)."""
        return "".join(self.get_prompt_array(reply_prefix=reply_prefix))

    def _render(self, start: int, *, add_system: bool, reply_prefix: str) -> list[str]:
        self.validate()
        system = self.system_prompt
        sep_user, sep_assistant = self.seps[0], self.seps[-1]
        messages = (
            _strip_reasoning(self.messages) if self.strip_reasoning_in_history else self.messages
        )
        pieces: list[str] = [system] if add_system and system else []
        last = len(messages) - 1
        for i in range(start, len(messages)):
            role, content = messages[i]
            self._check_role(role)
            role_marker = self.roles[role]
            if content is None:
                pieces.append(
                    role_marker + self.role_empty_sep + (reply_prefix if i == last else "")
                )
                continue
            skip_role = not self.add_role_after_system_message and system != "" and i == 0
            prefix = "" if skip_role else role_marker + self.role_content_sep
            template = self.role_templates.get(role, role_placeholder(role))
            texts = [content] if isinstance(content, str) else [p["text"] for p in content]
            body = "".join(template.replace(role_placeholder(role), t) for t in texts)
            pieces.append(prefix + body + (sep_assistant if role == "assistant" else sep_user))
        return self._fill_function_string(pieces)

    def _fill_function_string(self, pieces: list[str]) -> list[str]:
        # MLC: the last {function_string} gets the function string, every other one "".
        out = list(pieces)
        for i in range(len(out) - 1, -1, -1):
            if FUNCTION_PLACEHOLDER in out[i]:
                head, tail = out[i].rsplit(FUNCTION_PLACEHOLDER, 1)
                out[i] = head.replace(FUNCTION_PLACEHOLDER, "") + self.function_string + tail
                out[:i] = [p.replace(FUNCTION_PLACEHOLDER, "") for p in out[:i]]
                break
        return out

    def _check_role(self, role: str) -> None:
        if role not in self.roles:
            raise ConversationTemplateError(
                f"role {role!r} is not supported by conversation template {self.name!r} "
                f"(roles: {sorted(self.roles)})"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_content(content: object, where: str) -> None:
    if content is None or isinstance(content, str):
        return
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict) or "type" not in part:
                raise ConversationTemplateError(
                    f"{where}: content parts must be objects with a 'type'"
                )
            if part["type"] != "text":
                raise ConversationTemplateError(
                    f"{where}: content part type {part['type']!r} is not supported (text only)"
                )
            if not isinstance(part.get("text"), str):
                raise ConversationTemplateError(
                    f"{where}: a text content part needs a string 'text'"
                )
        return
    raise ConversationTemplateError(
        f"{where}: content must be a string, a list of content parts or null, "
        f"got {type(content).__name__}"
    )


def _strip_reasoning(messages: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Drop ``...</think>`` from assistant turns before the last user turn (Qwen3's template)."""
    items = [list(m) for m in messages]
    last_user = max((i for i, (role, _) in enumerate(items) if role == "user"), default=-1)
    for i, item in enumerate(items):
        role, content = item
        if (
            role == "assistant"
            and i < last_user
            and isinstance(content, str)
            and "</think>" in content
        ):
            item[1] = content.split("</think>")[-1].lstrip("\n")
    return items
