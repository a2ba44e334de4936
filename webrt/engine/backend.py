"""What the engine needs from a TVM runtime, whichever one hosts the model library.

Two implementations: :mod:`webrt.native.backend` (CPython, TVM's own runtime, a CPU ``.so``)
and :mod:`webrt.wasm` (Pyodide, the ``.wasm`` library on WebGPU). The engine and
:class:`webrt.engine.model_runner.ModelRunner` are written against this protocol only, so the
browser and the terminal run the same code. Pure Python.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence


class Tensor(Protocol):
    """A runtime tensor handle (device or host)."""

    @property
    def shape(self) -> tuple[int, ...]: ...


class Backend(Protocol):
    """A loaded model library plus its parameters on one device."""

    #: ``_metadata()`` of the library, parsed.
    metadata: dict[str, Any]
    #: The packed parameter array passed as last argument to model functions.
    params: Any

    def has_function(self, name: str) -> bool:
        """Whether the library exports ``name``."""

    def function(self, name: str) -> Callable[..., Any]:
        """A library function (``embed``, ``decode``, ``argmax_logits``, ...)."""

    def global_function(self, name: str) -> Callable[..., Any]:
        """A runtime global (``vm.builtin.kv_state_begin_forward``, ...)."""

    def shape_tuple(self, values: Sequence[int]) -> Any:
        """A runtime ShapeTuple."""

    def upload(self, data: bytes, shape: Sequence[int], dtype: str) -> Tensor:
        """Copy host bytes into a new tensor on the model's device."""

    def write(self, tensor: Tensor, data: bytes) -> None:
        """Overwrite a tensor's contents with host bytes (same size)."""

    def download(self, tensor: Tensor, nbytes: int | None = None) -> bytes:
        """Copy (the first ``nbytes`` of) a device tensor back to host bytes; waits for the GPU."""

    def view(self, tensor: Tensor, shape: Sequence[int]) -> Tensor:
        """The same storage under another shape (same element count)."""

    def close(self) -> None:
        """Release what the backend holds on its device: GPU buffers and the KV cache's pages
        (browser), the VM and parameters (native). Unusable afterwards; a second call does nothing."""
