"""Built-in conversation templates, matching MLC-LLM's ``python/mlc_llm/conversation_template``.

The templates live in ``templates.json`` beside this file, one ``conv_template`` JSON object each,
in the same form ``mlc-chat-config.json`` carries (fields left out take MLC's defaults). Values
(system prompts, role markers, separators, stop strings and token ids) are MLC-LLM's, so a model
compiled by MLC and a model packaged by webrt prompt the same way. Where MLC's choice differs
from a model's Hugging Face chat template (e.g. MLC always emits a Llama-3 system block, and ends
Llama-2 prompts with ``"[/INST] "``), webrt keeps MLC's choice: it is what the published
``mlc-chat-config.json`` files and WebLLM use.
"""

from __future__ import annotations

import json
from pathlib import Path

from webrt.conversation.conversation import Conversation

TEMPLATES_FILE = Path(__file__).with_name("templates.json")


def builtin_templates() -> list[Conversation]:
    """Fresh instances of every built-in template, in the order of ``templates.json``."""
    with TEMPLATES_FILE.open(encoding="utf-8") as f:
        return [Conversation.from_json_dict(entry) for entry in json.load(f)]
