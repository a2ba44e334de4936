"""webrt: large language models in the browser on WebGPU, driven from Python."""

__version__ = "0.1.0"

_ENGINE_EXPORTS = ("AppConfig", "ChatOptions", "Engine", "ModelRecord", "create_engine")
__all__ = ["ChatModule", *_ENGINE_EXPORTS, "__version__"]


def __getattr__(name: str):
    """Import the engine lazily: ``import webrt`` stays light for the compiler CLI."""
    if name == "ChatModule":
        from webrt.chat_module import ChatModule

        return ChatModule
    if name in _ENGINE_EXPORTS:
        import webrt.engine

        return getattr(webrt.engine, name)
    raise AttributeError(f"module 'webrt' has no attribute {name!r}")
