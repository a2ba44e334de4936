"""The engine's backend on TVM's own runtime (CPython): a CPU model library plus its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tvm
from tvm import relax

from webrt.errors import ModelLibraryError, WeightFileError
from webrt.native.verify import check_library, read_index, verify_shards
from webrt.ndarray_cache.format import INDEX_NAME, LEGACY_INDEX_NAME


class NativeBackend:
    """Loads ``model_lib`` (.so) with TVM's runtime and the tensor cache in ``model_dir``."""

    def __init__(self, model_dir: str | Path, model_lib: str | Path):
        model_dir, model_lib = Path(model_dir), Path(model_lib)
        if not model_lib.is_file():
            raise ModelLibraryError(f"{model_lib} does not exist; build it with `webrt compile ... --device cpu`.")
        if not any((model_dir / n).is_file() for n in (INDEX_NAME, LEGACY_INDEX_NAME)):
            raise WeightFileError(f"{model_dir} has no {INDEX_NAME}; run `webrt convert_weight` into it.")
        check_library(model_lib)
        self.device = tvm.cpu()
        try:
            self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(model_lib)), self.device)
        except Exception as e:  # TVM raises its own error classes
            raise ModelLibraryError(f"cannot load {model_lib}: {e}") from None
        if not self.has_function("_metadata"):
            raise ModelLibraryError(f"{model_lib} has no _metadata function; it is not a webrt/MLC model library.")
        self.metadata: dict[str, Any] = json.loads(self._vm["_metadata"]())
        if self.metadata.get("webrt", {}).get("device", "cpu") != "cpu":
            raise ModelLibraryError(f"{model_lib} was compiled for {self.metadata['webrt']['device']}, not cpu.")
        self.params = self._load_params(model_dir)

    def _load_params(self, model_dir: Path) -> Any:
        names = [p["name"] for p in self.metadata["params"]]
        if not (model_dir / INDEX_NAME).is_file():  # only the legacy name: TVM reads tensor-cache.json
            raise WeightFileError(f"{model_dir} has only {LEGACY_INDEX_NAME}; copy it to {INDEX_NAME}.")
        index = read_index(model_dir)
        index.check_params(names, self.metadata["params"], str(model_dir))
        verify_shards(model_dir, list(index.shards))  # TVM reads every shard the index names
        tvm.get_global_func("vm.builtin.tensor_cache.clear")()
        tvm.get_global_func("vm.builtin.tensor_cache.load")(str(model_dir), self.device.dlpack_device_type(), 0)
        params = tvm.get_global_func("vm.builtin.param_array_from_cache_by_name")(names)
        tvm.get_global_func("vm.builtin.tensor_cache.clear")()
        return params

    def has_function(self, name: str) -> bool:
        try:
            self.function(name)
            return True
        except Exception:  # noqa: BLE001 - TVM raises AttributeError or its own error
            return False

    def function(self, name: str) -> Callable[..., Any]:
        # The VM's own (Relax) functions first, then the library's exported TIR kernels
        # (apply_*_inplace), as TVM's JS runtime finds them for WebLLM.
        return self._vm.module.get_function(name, query_imports=True)

    def global_function(self, name: str) -> Callable[..., Any]:
        return tvm.get_global_func(name)

    def shape_tuple(self, values: Sequence[int]) -> Any:
        return tvm.runtime.ShapeTuple(list(values))

    def upload(self, data: bytes, shape: Sequence[int], dtype: str) -> Any:
        return tvm.runtime.tensor(np.frombuffer(data, dtype=dtype).reshape(shape), self.device)

    def write(self, tensor: Any, data: bytes) -> None:
        tensor.copyfrom(np.frombuffer(data, dtype=str(tensor.dtype)).reshape(tuple(tensor.shape)))

    def download(self, tensor: Any, nbytes: int | None = None) -> bytes:
        raw = tensor.numpy().tobytes()
        return raw if nbytes is None else raw[:nbytes]

    def view(self, tensor: Any, shape: Sequence[int]) -> Any:
        return tvm.get_global_func("vm.builtin.reshape")(tensor, tvm.runtime.ShapeTuple(list(shape)))

    def close(self) -> None:
        """Drop the parameters and the VM (with its module); TVM frees them once the caller's runner,
        which holds the KV cache and function handles, is gone too."""
        self.params = None
        self._vm = None
