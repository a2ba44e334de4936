"""Pluggable model loading: where a model's files and library come from, per host.

The engine needs three things for a :class:`~webrt.engine.config.ModelRecord`: its small text
files (``mlc-chat-config.json``, ``tokenizer.json``, ...), and a :class:`Backend` with the
library and weights loaded. A :class:`ModelLoader` provides them. :class:`NativeModelLoader`
reads a local folder and a CPU ``.so`` through TVM's runtime; the browser loader (Pyodide +
WebGPU, fetch + Cache Storage) implements the same protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from webrt.engine.backend import Backend
from webrt.engine.config import ModelRecord
from webrt.engine.progress import InitProgressCallback, ProgressReporter
from webrt.errors import ModelLibraryError, WeightFileError


class ModelLoader(Protocol):
    """Where a host gets a model's files and runtime."""

    async def read_text(self, record: ModelRecord, filename: str) -> str | None:
        """A text file of the model (``mlc-chat-config.json``, ``tokenizer.json``); None if absent."""

    async def load(
        self, record: ModelRecord, chat_config: dict[str, Any], progress_callback: InitProgressCallback | None
    ) -> Backend:
        """The model library with its weights on the device, ready for a ModelRunner."""


class NativeModelLoader:
    """Local files on CPython: ``record.model`` is a folder, ``record.model_lib`` a CPU ``.so``."""

    async def read_text(self, record: ModelRecord, filename: str) -> str | None:
        folder = Path(record.model).expanduser()
        if not folder.is_dir():
            raise WeightFileError(
                f"model folder {folder} (model {record.model_id!r}) does not exist; run `webrt convert_weight` "
                "and `webrt gen_config` into it, or fix ModelRecord.model."
            )
        path = folder / filename
        return path.read_text(encoding="utf-8") if path.is_file() else None

    async def load(
        self, record: ModelRecord, chat_config: dict[str, Any], progress_callback: InitProgressCallback | None
    ) -> Backend:
        from webrt.native.backend import NativeBackend  # TVM: only on CPython

        report = ProgressReporter(progress_callback)
        lib = Path(record.model_lib).expanduser()
        if not lib.is_file():
            raise ModelLibraryError(
                f"model library {lib} (model {record.model_id!r}) does not exist; build it with "
                "`webrt compile <model>/mlc-chat-config.json --device cpu -o LIB.so`."
            )
        report(0.0, f"Loading {record.model_id} from {record.model} with {lib.name}")
        backend = NativeBackend(Path(record.model).expanduser(), lib)
        report(1.0, f"Finished loading {record.model_id}")
        return backend


def default_loader() -> ModelLoader:
    """The loader for this host: native on CPython; in Pyodide one must be passed to the Engine."""
    import sys

    if sys.platform == "emscripten":
        raise ModelLibraryError(
            "in the browser, create the Engine with loader=<the WebGPU model loader>; "
            "the native loader needs TVM's runtime."
        )
    return NativeModelLoader()
