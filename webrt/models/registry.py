"""The one table of the architectures webrt compiles, and every name each goes by.

Hugging Face configs name an architecture by class (``architectures[0]``), MLC's chat config and
library metadata by ``model_type``, GGUF files by ``general.architecture``. Every lookup in the
compiler goes through this table. The ``nn.Module`` classes are imported lazily, so ``webrt``
imports without TVM.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from webrt.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Architecture:
    """One architecture: its names in HF, MLC and GGUF files, and the class implementing it."""

    hf_names: tuple[str, ...]  # config.json ``architectures[0]``; the first is the canonical one
    model_type: str  # MLC's ``model_type`` (mlc-chat-config.json, library metadata, file names)
    gguf_name: str  # GGUF ``general.architecture``
    module: str
    class_name: str

    def model_class(self) -> type:
        """The ``nn.Module`` class (imports TVM)."""
        return getattr(importlib.import_module(self.module), self.class_name)


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(("LlamaForCausalLM",), "llama", "llama", "webrt.models.llama", "LlamaForCausalLM"),
    Architecture(("MistralForCausalLM",), "mistral", "mistral", "webrt.models.mistral", "MistralForCausalLM"),
    Architecture(("Qwen2ForCausalLM",), "qwen2", "qwen2", "webrt.models.qwen2", "Qwen2ForCausalLM"),
)


def architecture_for_hf(name: str) -> Architecture:
    """The entry for HF architecture ``name``; a clear error for one webrt does not implement."""
    for arch in ARCHITECTURES:
        if name in arch.hf_names:
            return arch
    known = ", ".join(n for arch in ARCHITECTURES for n in arch.hf_names)
    raise UnsupportedArchitectureError(f"architecture {name!r} is not supported; webrt implements: {known}")


def architecture_for_gguf(name: str | None) -> Architecture:
    """The entry for GGUF ``general.architecture`` ``name``; a clear error for one webrt does not read."""
    for arch in ARCHITECTURES:
        if name == arch.gguf_name:
            return arch
    known = ", ".join(arch.gguf_name for arch in ARCHITECTURES)
    raise UnsupportedArchitectureError(f"GGUF architecture {name!r} is not supported; webrt reads: {known}")


def model_class(hf_name: str) -> type:
    """The ``nn.Module`` class implementing HF architecture ``hf_name``."""
    return architecture_for_hf(hf_name).model_class()
