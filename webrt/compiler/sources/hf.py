"""Hugging Face model folders: config.json plus safetensors or PyTorch ``.bin`` weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from webrt.compiler.sources.base import WeightSource
from webrt.errors import ModelConfigError, WeightFileError


class HFSource(WeightSource):
    """A folder with config.json and safetensors or PyTorch ``.bin`` weights, sharded or not.

    The weights are indexed on first use (:meth:`names`, :meth:`get`), so a folder holding only
    config.json opens (``gen_config`` needs no weights, as MLC-LLM's does not).
    """

    def __init__(self, folder: Path):
        self.path = folder
        cfg = folder / "config.json"
        if not cfg.is_file():
            raise ModelConfigError(f"{folder} has no config.json; pass a Hugging Face model folder.")
        try:
            self.config = json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise ModelConfigError(f"{cfg} is not valid JSON ({e}); re-download the model.") from None
        self._where: dict[str, Path] | None = None  # tensor name -> file, see _index
        self._handles: dict[Path, Any] = {}
        self._bin_cache: dict[Path, dict[str, Any]] = {}

    def _index(self) -> dict[str, Path]:
        if self._where is None:
            self._where = {name: f for f in self._weight_files() for name in self._tensor_names(f)}
        return self._where

    def _weight_files(self) -> list[Path]:
        for index_name, pattern in (
            ("model.safetensors.index.json", "*.safetensors"),
            ("pytorch_model.bin.index.json", "*.bin"),
        ):
            index = self.path / index_name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise WeightFileError(f"{index} is corrupt ({e}); re-download the model.") from None
                files = sorted({self.path / v for v in weight_map.values()})
                missing = [f.name for f in files if not f.is_file()]
                if missing:
                    raise WeightFileError(f"{index.name} lists missing shard(s) {', '.join(missing)}; re-download them.")
                return files
        files = sorted(self.path.glob("*.safetensors")) or sorted(self.path.glob("pytorch_model*.bin"))
        if not files:
            raise WeightFileError(
                f"{self.path} has no *.safetensors or pytorch_model*.bin weights; download the weights too."
            )
        return files

    def _tensor_names(self, f: Path) -> list[str]:
        if f.suffix == ".safetensors":
            return list(self._safetensors(f).keys())
        return list(self._torch_bin(f).keys())

    def _safetensors(self, f: Path):
        if f not in self._handles:
            from safetensors import safe_open

            try:
                self._handles[f] = safe_open(str(f), framework="numpy")
            except Exception as e:  # safetensors raises its own error types
                raise WeightFileError(f"cannot read {f.name}: {e}; the file is corrupt or truncated, re-download it.") from None
        return self._handles[f]

    def _torch_bin(self, f: Path) -> dict[str, Any]:
        if f not in self._bin_cache:
            try:
                import torch
            except ImportError:
                raise WeightFileError(
                    f"{f.name} is a PyTorch checkpoint; reading it needs torch (`pip install torch==2.13.0`), "
                    "or convert the model to safetensors."
                ) from None
            try:
                # Keep one shard in memory at a time: checkpoints are large, tensors are read in order.
                self._bin_cache = {f: torch.load(str(f), map_location="cpu", weights_only=True)}
            except Exception as e:
                raise WeightFileError(f"cannot read {f.name}: {e}; the file is corrupt, re-download it.") from None
        return self._bin_cache[f]

    def names(self) -> list[str]:
        return list(self._index())

    def get(self, name: str) -> np.ndarray:
        f = self._index().get(name)
        if f is None:
            raise WeightFileError(f"tensor {name!r} is not in {self.path}; the checkpoint is incomplete.")
        if f.suffix == ".safetensors":
            try:
                return np.asarray(self._safetensors(f).get_tensor(name))
            except Exception as e:
                raise WeightFileError(f"cannot read tensor {name!r} from {f.name}: {e}") from None
        t = self._torch_bin(f)[name]
        return t.float().numpy() if t.is_floating_point() else t.numpy()

    def close(self) -> None:
        self._handles.clear()
        self._bin_cache.clear()
