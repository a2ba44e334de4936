"""Built-in conversation templates, matching MLC-LLM's ``python/mlc_llm/conversation_template``.

Values (system prompts, role markers, separators, stop strings and token ids) are MLC-LLM's, so
a model compiled by MLC and a model packaged by webrt prompt the same way. Where MLC's choice
differs from a model's Hugging Face chat template (e.g. MLC always emits a Llama-3 system block,
and ends Llama-2 prompts with ``"[/INST] "``), webrt keeps MLC's choice: it is what the
published ``mlc-chat-config.json`` files and WebLLM use.
"""

from __future__ import annotations

from typing import Any

from webrt.conversation.conversation import Conversation

_S = "{system_message}"

_LLAMA3_SYSTEM = f"<|start_header_id|>system<|end_header_id|>\n\n{_S}<|eot_id|>"
_HERMES_SYSTEM_MESSAGE = (
    "a conscious sentient superintelligent artificial intelligence developed by a man named "
    "Teknium, and your purpose and drive is to assist the user with any request they have. "
    "You experience emotions and have deep, profound thoughts and qualia."
)


def _chatml(**overrides: Any) -> dict[str, Any]:
    """ChatML's markers (fresh objects each call), with ``overrides`` applied."""
    base: dict[str, Any] = dict(
        system_template=f"<|im_start|>system\n{_S}<|im_end|>\n",
        roles={"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
        seps=["<|im_end|>\n"],
        role_content_sep="\n",
        role_empty_sep="\n",
    )
    return {**base, **overrides}


def _plain_lm(name: str, **fields: Any) -> Conversation:
    """A plain language model: no roles, no separators, text in and text out."""
    return Conversation(
        name=name,
        system_template=_S,
        system_message="",
        roles={"user": "", "assistant": ""},
        seps=[""],
        role_content_sep="",
        role_empty_sep="",
        **fields,
    )


_DEEPSEEK_R1_SYSTEM_MESSAGE = (
    "You are Deepseek-R1, an AI assistant created exclusively by the Chinese Company DeepSeek. "
    "You'll provide helpful, harmless, and detailed responses to all user inquiries."
)
_BOS_DEEPSEEK = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"  # <｜begin▁of▁sentence｜>
_EOS_DEEPSEEK = "<\uff5cend\u2581of\u2581sentence\uff5c>"  # <｜end▁of▁sentence｜>


def builtin_templates() -> list[Conversation]:
    """Fresh instances of every built-in template."""
    return [
        # --- ChatML family ------------------------------------------------------------------
        Conversation(
            name="chatml",
            **_chatml(),
            system_message=(
                "A conversation between a user and an LLM-based AI assistant. The assistant "
                "gives helpful and honest answers."
            ),
            stop_str=["<|im_end|>"],
            stop_token_ids=[2],
        ),
        Conversation(
            name="chatml_nosystem",
            **_chatml(system_template=_S),
            system_message="",
            stop_str=["<|im_end|>"],
            stop_token_ids=[2],
        ),
        Conversation(
            name="qwen2",
            **_chatml(),
            system_message="You are a helpful assistant.",
            stop_str=["<|endoftext|>", "<|im_end|>"],
            stop_token_ids=[151643, 151645],
        ),
        Conversation(
            name="qwen3",
            **_chatml(),
            system_message="You are a helpful assistant.",
            stop_str=["<|endoftext|>", "<|im_end|>"],
            stop_token_ids=[151643, 151645],
            strip_reasoning_in_history=True,
        ),
        Conversation(
            name="open_hermes_mistral",
            **_chatml(),
            system_message='You are "Hermes 2", ' + _HERMES_SYSTEM_MESSAGE,
            stop_str=["<|im_end|>"],
            stop_token_ids=[2, 32000],
        ),
        Conversation(
            name="neural_hermes_mistral",
            **_chatml(),
            system_message="You are a helpful assistant chatbot.",
            stop_str=["<|im_end|>"],
            stop_token_ids=[2, 32000],
        ),
        Conversation(
            name="hermes2_pro_llama3",
            **_chatml(
                roles={
                    "user": "<|im_start|>user",
                    "assistant": "<|im_start|>assistant",
                    "tool": "<|im_start|>tool",
                }
            ),
            system_message='You are "Hermes 2", ' + _HERMES_SYSTEM_MESSAGE,
            stop_str=["<|im_end|>"],
            stop_token_ids=[128001, 128009, 128003],
        ),
        Conversation(
            name="hermes3_llama-3_1",
            **_chatml(
                roles={
                    "user": "<|im_start|>user",
                    "assistant": "<|im_start|>assistant",
                    "tool": "<|im_start|>tool",
                }
            ),
            system_message="You are Hermes 3, " + _HERMES_SYSTEM_MESSAGE,
            stop_str=["<|im_end|>"],
            stop_token_ids=[128001, 128008, 128009, 128040],
        ),
        # --- Llama family -------------------------------------------------------------------
        Conversation(
            name="llama-2",
            system_template=f"[INST] <<SYS>>\n{_S}\n<</SYS>>\n\n",
            system_message="You are a helpful, respectful and honest assistant.",
            roles={"user": "<s>[INST]", "assistant": "[/INST]", "tool": "[INST]"},
            seps=[" ", " </s>"],
            role_content_sep=" ",
            role_empty_sep=" ",
            stop_str=["[INST]"],
            stop_token_ids=[2],
            system_prefix_token_ids=[1],
            add_role_after_system_message=False,
        ),
        Conversation(
            name="llama-3",
            system_template=_LLAMA3_SYSTEM,
            system_message="You are a helpful, respectful and honest assistant.",
            roles={"user": "<|start_header_id|>user", "assistant": "<|start_header_id|>assistant"},
            seps=["<|eot_id|>"],
            role_content_sep="<|end_header_id|>\n\n",
            role_empty_sep="<|end_header_id|>\n\n",
            stop_str=["<|end_of_text|>", "<|eot_id|>"],
            stop_token_ids=[128001, 128009],  # <|end_of_text|>, <|eot_id|>
            system_prefix_token_ids=[128000],  # <|begin_of_text|>
            add_role_after_system_message=True,
        ),
        Conversation(
            name="llama-3_1",
            system_template=_LLAMA3_SYSTEM,
            system_message="You are a helpful, respectful and honest assistant.",
            roles={
                "user": "<|start_header_id|>user",
                "assistant": "<|start_header_id|>assistant",
                "tool": "<|start_header_id|>ipython",
            },
            seps=["<|eot_id|>"],
            role_content_sep="<|end_header_id|>\n\n",
            role_empty_sep="<|end_header_id|>\n\n",
            stop_str=[],
            stop_token_ids=[128001, 128008, 128009],  # <|end_of_text|>, <|eom_id|>, <|eot_id|>
            system_prefix_token_ids=[128000],  # <|begin_of_text|>
            add_role_after_system_message=True,
        ),
        Conversation(
            name="llama-4",
            system_template="",
            system_message="",
            roles={
                "user": "<|header_start|>user",
                "assistant": "<|header_start|>assistant",
                "tool": "<|header_start|>ipython",
            },
            seps=["<|eot|>"],
            role_content_sep="<|header_end|>\n\n",
            role_empty_sep="<|header_end|>\n\n",
            stop_str=[],
            stop_token_ids=[200001, 200007, 200008],  # <|end_of_text|>, <|eom|>, <|eot|>
            system_prefix_token_ids=[200000],  # <|begin_of_text|>
            add_role_after_system_message=False,
        ),
        Conversation(
            name="codellama_completion",
            system_template=_S,
            system_message="",
            roles={"user": "", "assistant": ""},
            seps=[""],
            role_content_sep="",
            role_empty_sep="",
            stop_str=["</s>"],
            stop_token_ids=[2],
            system_prefix_token_ids=[1],
        ),
        Conversation(
            name="codellama_instruct",
            system_template=_S,
            system_message="",
            roles={"user": "[INST]", "assistant": "[/INST]"},
            seps=[" "],
            role_content_sep=" ",
            role_empty_sep=" ",
            stop_str=["</s>"],
            stop_token_ids=[2],
            system_prefix_token_ids=[1],
        ),
        Conversation(
            name="tinyllama_v1_0",
            system_template=f"<|system|>\n{_S}</s>",
            system_message="You are a helpful chatbot.",
            roles={"user": "<|user|>", "assistant": "<|assistant|>"},
            seps=["</s>"],
            role_content_sep="\n",
            role_empty_sep="\n",
            stop_str=["</s>"],
            stop_token_ids=[2],
        ),
        Conversation(
            name="deepseek_r1_qwen",
            system_template=_BOS_DEEPSEEK + _S,
            system_message=_DEEPSEEK_R1_SYSTEM_MESSAGE,
            roles={"user": "<\uff5cUser\uff5c>", "assistant": "<\uff5cAssistant\uff5c>"},
            seps=["", _EOS_DEEPSEEK],
            role_content_sep="",
            role_empty_sep="",
            stop_token_ids=[151643],
        ),
        Conversation(
            name="deepseek_r1_llama",
            system_template=_BOS_DEEPSEEK + _S,
            system_message=_DEEPSEEK_R1_SYSTEM_MESSAGE,
            roles={"user": "<\uff5cUser\uff5c>", "assistant": "<\uff5cAssistant\uff5c>"},
            seps=["", _EOS_DEEPSEEK],
            role_content_sep="",
            role_empty_sep="",
            stop_token_ids=[128001],
        ),
        # --- Mistral ------------------------------------------------------------------------
        Conversation(
            name="mistral_default",
            system_template=f"[INST] {_S}",
            system_message=(
                "Always assist with care, respect, and truth. Respond with utmost utility yet "
                "securely. Avoid harmful, unethical, prejudiced, or negative content. Ensure "
                "replies promote fairness and positivity."
            ),
            roles={"user": "[INST]", "assistant": "[/INST]", "tool": "[INST]"},
            seps=[" "],
            role_content_sep=" ",
            role_empty_sep="",
            stop_str=["</s>"],
            stop_token_ids=[2],
            system_prefix_token_ids=[1],
            add_role_after_system_message=False,
        ),
        # --- Phi ----------------------------------------------------------------------------
        Conversation(
            name="phi-2",
            system_template=_S,
            system_message="",
            roles={"user": "Instruct", "assistant": "Output"},
            seps=["\n"],
            role_content_sep=": ",
            role_empty_sep=":",
            stop_str=["<|endoftext|>"],
            stop_token_ids=[50256],
        ),
        Conversation(
            name="phi-3",
            system_template=f"<|system|>\n{_S}",
            system_message=(
                "You are a helpful digital assistant. Please provide safe, ethical and accurate "
                "information to the user."
            ),
            roles={"user": "<|user|>", "assistant": "<|assistant|>"},
            seps=["<|end|>\n"],
            role_content_sep="\n",
            role_empty_sep="\n",
            system_prefix_token_ids=[1],
            stop_str=["<|endoftext|>"],
            stop_token_ids=[2, 32000, 32001, 32007],
        ),
        Conversation(
            name="phi-4",
            system_template=f"<|system|>\n{_S}",
            system_message=(
                "You are a helpful digital assistant. Please provide safe, ethical and accurate "
                "information to the user."
            ),
            roles={"user": "<|user|>", "assistant": "<|assistant|>"},
            seps=["<|end|>\n"],
            role_content_sep="\n",
            role_empty_sep="\n",
            system_prefix_token_ids=[200022],  # <|system|>
            stop_str=["<|endoftext|>", "<|end|>"],
            stop_token_ids=[199999, 200020],  # <|endoftext|>, <|end|>
        ),
        # --- Gemma --------------------------------------------------------------------------
        Conversation(
            name="gemma_instruction",
            system_template=_S,
            system_message="",
            roles={"user": "<start_of_turn>user", "assistant": "<start_of_turn>model"},
            seps=["<end_of_turn>\n"],
            role_content_sep="\n",
            role_empty_sep="\n",
            stop_str=["<end_of_turn>"],
            stop_token_ids=[1, 107],
            system_prefix_token_ids=[2],  # <bos>
        ),
        Conversation(
            name="gemma3_instruction",
            system_template=_S,
            system_message="",
            roles={"user": "<start_of_turn>user", "assistant": "<start_of_turn>model"},
            seps=["<end_of_turn>\n"],
            role_content_sep="\n",
            role_empty_sep="\n",
            stop_str=["<end_of_turn>"],
            stop_token_ids=[1, 106],
            system_prefix_token_ids=[2],  # <bos>
        ),
        # --- Older instruction formats ------------------------------------------------------
        Conversation(
            name="redpajama_chat",
            system_template=_S,
            system_message="",
            roles={"user": "<human>", "assistant": "<bot>"},
            seps=["\n"],
            role_content_sep=": ",
            role_empty_sep=":",
            stop_str=["<human>"],
            stop_token_ids=[0],
        ),
        Conversation(
            name="wizardlm_7b",
            system_template=_S,
            system_message="",
            roles={"user": "User", "assistant": "Response"},
            seps=["###"],
            role_content_sep=": ",
            role_empty_sep=":",
            stop_str=["###"],
            stop_token_ids=[2],
            system_prefix_token_ids=[1],
        ),
        Conversation(
            name="wizard_coder_or_math",
            system_template=_S,
            system_message=(
                "Below is an instruction that describes a task. Write a response that "
                "appropriately completes the request."
            ),
            roles={"user": "Instruction", "assistant": "Response"},
            seps=["\n\n### ", "\n\n### "],
            role_content_sep=":\n",
            role_empty_sep=":\n",
            stop_str=["</s>"],
            stop_token_ids=[2],
            system_prefix_token_ids=[1],
        ),
        Conversation(
            name="stablelm-2",
            system_template=_S,
            system_message="",
            roles={"user": "<|user|>", "assistant": "<|assistant|>"},
            seps=["<|endoftext|>", "<|endoftext|>"],
            role_content_sep="\n",
            role_empty_sep="\n",
            stop_str=["<|endoftext|>"],
            stop_token_ids=[100257],
        ),
        Conversation(
            name="olmo2",
            system_template=f"<|system|>\n{_S}\n",
            system_message="",
            roles={"user": "<|user|>", "assistant": "<|assistant|>"},
            seps=["<|endoftext|>\n"],
            role_content_sep="\n",
            role_empty_sep="\n",
            stop_str=["<|endoftext|>"],
            stop_token_ids=[100257],
            system_prefix_token_ids=[100257],
        ),
        # --- Plain language models ----------------------------------------------------------
        _plain_lm("gpt2", stop_str=["</s>"], stop_token_ids=[50256]),
        _plain_lm("gpt_bigcode", stop_str=["<|endoftext|>"], stop_token_ids=[0]),
        _plain_lm("LM", stop_str=[], stop_token_ids=[2], system_prefix_token_ids=[1]),
    ]
