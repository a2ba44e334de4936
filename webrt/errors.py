"""Typed errors raised by webrt.

Every error names the problem and, where one exists, the fix. The module is pure Python so the
browser runtime (Pyodide, no numpy) can import it.
"""

from __future__ import annotations


class WebrtError(Exception):
    """Base class of every error webrt raises on purpose."""


# --- compiler side -------------------------------------------------------------------------------
class UnsupportedQuantizationError(WebrtError, ValueError):
    """The quantization name is not one webrt knows."""


class UnsupportedArchitectureError(WebrtError, ValueError):
    """The model architecture has no implementation in webrt.models."""


class WeightFileError(WebrtError, OSError):
    """A weight file is missing, truncated or not in a format webrt reads."""


class ModelConfigError(WebrtError, ValueError):
    """A config (config.json, GGUF metadata, mlc-chat-config.json) lacks a field or has a bad value."""


class ToolchainError(WebrtError, RuntimeError):
    """An external tool (emcc, a C++ compiler) is missing or failed."""


# --- runtime side --------------------------------------------------------------------------------
class ModelNotFoundError(WebrtError, KeyError):
    """A model id is not in the AppConfig's model list."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class FeatureNotSupportedError(WebrtError, RuntimeError):
    """The GPU adapter lacks a feature (e.g. shader-f16) the model library needs."""


class DeviceLostError(WebrtError, RuntimeError):
    """The WebGPU device was lost or could not be created."""


class GPUOutOfMemoryError(WebrtError, MemoryError):
    """A GPU buffer does not fit the device (past its buffer limits, or out of memory); the message
    names the model's planned memory and the smaller options."""


class GPUTimeoutError(WebrtError, TimeoutError):
    """A wait on the GPU (a readback, the queue, a compute pipeline, the adapter) did not end in time."""


class ContextWindowSizeExceededError(WebrtError, ValueError):
    """A prompt does not fit in the model's context window."""

    def __init__(self, prompt_tokens: int, context_window_size: int, model_id: str):
        self.prompt_tokens = prompt_tokens
        self.context_window_size = context_window_size
        self.model_id = model_id
        super().__init__(
            f"the prompt has {prompt_tokens} tokens but the context window of {model_id!r} is "
            f"{context_window_size}; shorten the messages, or reload with a larger chat_opts "
            "context_window_size (up to what the model was trained for)."
        )

    def __reduce__(self) -> tuple[type, tuple[int, int, str]]:
        return type(self), (self.prompt_tokens, self.context_window_size, self.model_id)


class TokenizerError(WebrtError, ValueError):
    """A tokenizer.json uses a feature webrt's tokenizer does not implement, or is malformed."""


class ConversationTemplateError(WebrtError, ValueError):
    """A conversation template is unknown or malformed."""


class CacheIntegrityError(WebrtError, RuntimeError):
    """A fetched shard does not match its recorded size or md5sum."""


class IntegrityError(CacheIntegrityError):
    """A download does not match the SRI hash (``sha256-...``) its ModelRecord's ``integrity`` gives."""


class FetchError(WebrtError, OSError):
    """A network fetch failed (HTTP status, network down, a stalled or cut transfer, an HTML page)."""


class StorageQuotaError(WebrtError, OSError):
    """The browser refused to store a file: the site's storage quota is used up."""


class ModelLibraryError(WebrtError, RuntimeError):
    """A model library (.wasm / .so) is missing a function, or does not fit the weights or adapter."""


class EngineNotLoadedError(WebrtError, RuntimeError):
    """A request was made before `reload()` loaded a model."""


class InvalidRequestError(WebrtError, ValueError):
    """A chat/completions request has a bad parameter."""


class ThreadsUnavailableError(WebrtError, RuntimeError):
    """More than one CPU thread was asked for where the page cannot have them (no cross-origin
    isolation, no SharedArrayBuffer, or a window's main thread, which may not block), or a
    worker thread of the pool failed to start or to finish its work."""
