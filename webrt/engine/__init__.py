"""The engine: WebLLM's MLCEngine API (chat / text completions, streaming, JSON mode and JSON
schemas) in pure Python.

The same code runs natively (TVM's runtime, :class:`NativeModelLoader`) and in the browser
(Pyodide + WebGPU, with the browser's loader).
"""

from webrt.engine.config import AppConfig, ChatConfig, ChatOptions, ModelRecord, merge_chat_config
from webrt.engine.engine import Engine, create_engine
from webrt.engine.json_grammar import JsonMatcher, JsonTokenIndex
from webrt.engine.json_schema import SchemaGrammar
from webrt.engine.loader import ModelLoader, NativeModelLoader
from webrt.engine.progress import InitProgressReport
from webrt.engine.stop import StopStringMatcher

__all__ = [
    "AppConfig",
    "ChatConfig",
    "ChatOptions",
    "Engine",
    "InitProgressReport",
    "JsonMatcher",
    "JsonTokenIndex",
    "ModelLoader",
    "ModelRecord",
    "NativeModelLoader",
    "SchemaGrammar",
    "StopStringMatcher",
    "create_engine",
    "merge_chat_config",
]
