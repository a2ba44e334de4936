"""The MLC tensor cache format: ``tensor-cache.json`` plus ``params_shard_N.bin`` files.

Pure Python (runs on Pyodide). Layout::

    {"metadata": {"ParamSize": int, "ParamBytes": int, "BitsPerParam": float},
     "records": [{"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes": int,
                  "md5sum": str, "records": [{"name": str, "shape": [int], "dtype": str,
                  "format": "raw" | "f32-to-bf16", "nbytes": int, "byteOffset": int}]}]}

The older name of the index is ``ndarray-cache.json``; both are read, both are written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from webrt.errors import WeightFileError

INDEX_NAME = "tensor-cache.json"
LEGACY_INDEX_NAME = "ndarray-cache.json"
INDEX_NAMES = (INDEX_NAME, LEGACY_INDEX_NAME)

DTYPE_BYTES = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8,
    "int32": 4, "uint32": 4, "int64": 8, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "bool": 1,
}


@dataclass(frozen=True)
class TensorRecord:
    """One tensor inside a shard."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    format: str  # "raw" or "f32-to-bf16" (stored as bfloat16, widened on load)
    nbytes: int
    byte_offset: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "shape": list(self.shape), "dtype": self.dtype, "format": self.format,
            "nbytes": self.nbytes, "byteOffset": self.byte_offset,
        }

    def check(self) -> None:
        """Raise WeightFileError unless the dtype is known and ``nbytes`` fits shape and format."""
        if self.dtype not in DTYPE_BYTES:
            raise WeightFileError(f"{self.name}: unsupported dtype {self.dtype}")
        count = 1
        for d in self.shape:
            if d < 0:
                raise WeightFileError(f"{self.name}: negative dimension in {self.shape}")
            count *= d
        want = count * DTYPE_BYTES[self.dtype]
        if self.format == "f32-to-bf16":
            if self.dtype != "float32" or self.nbytes != count * 2:
                raise WeightFileError(f"{self.name}: f32-to-bf16 record of {self.nbytes} bytes for {self.shape}")
        elif self.nbytes != want:
            raise WeightFileError(f"{self.name}: {self.nbytes} bytes recorded for {self.shape} {self.dtype} "
                                  f"({want} expected)")


@dataclass(frozen=True)
class ShardRecord:
    """One ``params_shard_N.bin`` file and the tensors packed in it."""

    data_path: str
    nbytes: int
    md5sum: str | None
    records: tuple[TensorRecord, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataPath": self.data_path, "format": "raw-shard", "nbytes": self.nbytes}
        if self.md5sum is not None:
            out["md5sum"] = self.md5sum
        out["records"] = [r.to_json() for r in self.records]
        return out


@dataclass(frozen=True)
class TensorCacheIndex:
    """The parsed index file."""

    metadata: dict[str, Any]
    shards: tuple[ShardRecord, ...]

    def tensors(self) -> dict[str, tuple[ShardRecord, TensorRecord]]:
        """Every tensor by name, with the shard holding it."""
        return {t.name: (s, t) for s in self.shards for t in s.records}

    def shards_holding(self, names: Sequence[str]) -> list[ShardRecord]:
        """The shards that hold at least one of the tensors ``names``, in index order."""
        wanted = set(names)
        return [s for s in self.shards if any(t.name in wanted for t in s.records)]

    def check_params(self, names: Sequence[str], expected: Sequence[dict[str, Any]], where: str) -> None:
        """Raise WeightFileError unless every parameter ``names`` is here, with the ``expected``
        ``{name, shape, dtype}`` (a library's ``params`` metadata)."""
        located = self.tensors()
        missing = [n for n in names if n not in located]
        if missing:
            raise WeightFileError(f"{where} lacks {len(missing)} parameter(s) the library needs (e.g. {missing[0]}); "
                                  "the weights and the library come from different models or quantizations.")
        for p in expected:
            rec = located[p["name"]][1]
            if list(rec.shape) != list(p["shape"]) or rec.dtype != p["dtype"]:
                raise WeightFileError(f"{p['name']} is {list(rec.shape)} {rec.dtype} in the weights but the library "
                                      f"expects {p['shape']} {p['dtype']}; re-run convert_weight with the library's "
                                      "quantization.")

    def to_json(self) -> dict[str, Any]:
        return {"metadata": self.metadata, "records": [s.to_json() for s in self.shards]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def loads(cls, text: str, source: str = INDEX_NAME) -> "TensorCacheIndex":
        """Parse and validate an index; errors name the bad field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise WeightFileError(f"{source} is not valid JSON ({e}); re-run `webrt convert_weight`.") from None
        return cls.from_json(data, source)

    @classmethod
    def from_json(cls, data: Any, source: str = INDEX_NAME) -> "TensorCacheIndex":
        def bad(what: str) -> WeightFileError:
            return WeightFileError(f"{source}: {what}; the file is corrupt, re-run `webrt convert_weight`.")

        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise bad("no 'records' list")
        shards = []
        for i, s in enumerate(data["records"]):
            try:
                tensors = tuple(
                    TensorRecord(
                        name=str(t["name"]),
                        shape=tuple(int(d) for d in t["shape"]),
                        dtype=str(t["dtype"]),
                        format=str(t.get("format", "raw")),
                        nbytes=int(t["nbytes"]),
                        byte_offset=int(t["byteOffset"]),
                    )
                    for t in s["records"]
                )
                shard = ShardRecord(str(s["dataPath"]), int(s["nbytes"]), s.get("md5sum"), tensors)
            except (KeyError, TypeError, ValueError) as e:
                raise bad(f"shard record {i} lacks or mangles {e}") from None
            for t in tensors:
                if t.format not in ("raw", "f32-to-bf16"):
                    raise bad(f"tensor {t.name} has unknown format {t.format!r}")
                if t.byte_offset + t.nbytes > shard.nbytes:
                    raise bad(f"tensor {t.name} runs past the end of {shard.data_path}")
            shards.append(shard)
        return cls(dict(data.get("metadata") or {}), tuple(shards))
