"""Conversation templates: MLC-LLM / WebLLM ``conv_template`` objects and prompt rendering.

>>> from webrt.conversation import get_conv_template
>>> conv = get_conv_template("chatml", config={"system_message": "Hi."})
>>> conv.append_message("user", "Hi")
>>> conv.append_reply_header()
>>> conv.as_prompt()
'<|im_start|>system\\nHi.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from webrt.conversation.chat import conversation_from_messages, render_chat
from webrt.conversation.conversation import Conversation, MessageContent
from webrt.conversation.registry import (
    CUSTOM,
    conv_template_from_config,
    get_conv_template,
    list_conv_templates,
    register_conv_template,
)

#: MLC-LLM's other name for the same object (``ConvTemplateConfig`` in WebLLM).
ConvTemplateConfig = Conversation

__all__ = [
    "CUSTOM",
    "ConvTemplateConfig",
    "Conversation",
    "MessageContent",
    "conv_template_from_config",
    "conversation_from_messages",
    "get_conv_template",
    "list_conv_templates",
    "register_conv_template",
    "render_chat",
]
