"""A model's own Jinja chat template, rendered byte for byte as transformers' apply_chat_template.

Chat templates come with the model (``tokenizer_config.json`` ``chat_template``, or GGUF
``tokenizer.chat_template``) and are untrusted code: they render in Jinja's immutable sandbox,
with the environment transformers gives them: ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension, a ``{% generation %}`` block tag (rendered as its body), a ``tojson``
filter that does not HTML-escape, and the globals ``raise_exception``, ``strftime_now``, ``dict``
and a ``namespace`` that refuses underscore attributes. Inputs are rebuilt from plain JSON types
first. The special tokens (``bos_token``, ``eos_token``, ...) and any template keyword (such as
``enable_thinking``) are passed as variables.

Pure Python (jinja2 and markupsafe are pure Python too), so it runs in Pyodide unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

from webrt.errors import ConversationTemplateError


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training masks): its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """Jinja's ``namespace()``, refusing attribute names that start with an underscore."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's own signature trick
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace.check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace.check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    return dict(*args, **kwargs)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_dict,
                       namespace=_Namespace)
    return env


def plain_data(value: Any) -> Any:
    """`value` rebuilt from JSON types only (str, int, float, bool, None, dict, list)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return repr(value)


#: tokenizer_config.json keys that name special tokens; templates see them by these names.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def special_tokens_from_config(config: Mapping[str, Any]) -> dict[str, str]:
    """The special-token strings of a ``tokenizer_config.json`` (entries may be strings or
    ``{"content": ...}`` objects), by the names templates use."""
    out: dict[str, str] = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


class ChatTemplate:
    """A compiled chat template and the special tokens it is rendered with."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None):
        if not isinstance(source, str) or not source.strip():
            raise ConversationTemplateError("the chat template is empty; give the model's Jinja template text.")
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _environment().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise ConversationTemplateError(f"the model's chat template does not parse (line {e.lineno}: {e.message}); "
                                            "fix chat_template in the model's config.") from None

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None, documents: Sequence[Mapping[str, Any]] | None = None,
               **template_kwargs: Any) -> str:
        """The prompt text for `messages`, as ``apply_chat_template(..., tokenize=False)`` gives it."""
        variables = {**self.special_tokens, **plain_data(template_kwargs)}
        try:
            return self._template.render(messages=plain_data(list(messages)), tools=plain_data(tools),
                                         documents=plain_data(documents),
                                         add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.exceptions.TemplateError as e:
            raise ConversationTemplateError(f"the model's chat template refused the conversation: {e}") from None
        except RecursionError:
            raise ConversationTemplateError("the model's chat template recursed too deeply") from None
