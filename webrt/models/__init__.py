"""Model architectures webrt compiles, one file each, looked up by HF architecture name."""

from __future__ import annotations

from webrt.errors import UnsupportedArchitectureError

# HF `architectures[0]` -> (module, class); imported lazily so `webrt` imports without TVM.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("webrt.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("webrt.models.mistral", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("webrt.models.qwen2", "Qwen2ForCausalLM"),
}

# The `model_type` MLC writes for each architecture.
MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}


def check_architecture(name: str) -> None:
    """Raise a clear error for an architecture webrt has no implementation of."""
    if name not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"architecture {name!r} is not supported; webrt implements: {', '.join(ARCHITECTURES)}"
        )


def model_class(name: str) -> type:
    """The nn.Module class implementing HF architecture ``name``."""
    import importlib

    check_architecture(name)
    module_name, class_name = ARCHITECTURES[name]
    return getattr(importlib.import_module(module_name), class_name)
