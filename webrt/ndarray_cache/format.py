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

#: How a tensor's bytes are stored: as its dtype, or float32 stored as bfloat16 (widened on load).
RECORD_FORMATS = ("raw", "f32-to-bf16")
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
        """Validate a parsed index once, at the boundary, for every host: each shard a plain file
        name inside the model folder with an integer size and a hex md5sum; each tensor a unique
        name, a known dtype and format, non-negative integer shape, size matching shape x dtype,
        and bytes inside its shard that overlap no other tensor's."""
        def bad(what: str) -> WeightFileError:
            return WeightFileError(f"{source}: {what}; the file is corrupt, re-run `webrt convert_weight`.")

        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise bad("no 'records' list")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad("'metadata' is not an object")
        shards, names = [], set()
        for i, s in enumerate(data["records"]):
            if not isinstance(s, dict) or not isinstance(s.get("records"), list):
                raise bad(f"shard record {i} is not an object with a 'records' list")
            path = s.get("dataPath")
            if not is_plain_relative_path(path):
                raise bad(f"shard record {i} has dataPath {path!r}, not a file name inside the model folder")
            md5 = s.get("md5sum")
            if not (isinstance(md5, str) and len(md5) == 32 and all(c in "0123456789abcdefABCDEF" for c in md5)):
                raise bad(f"shard {path} has md5sum {md5!r}, not 32 hex digits")
            size = _whole(s.get("nbytes"))
            if size is None:
                raise bad(f"shard {path} has nbytes {s.get('nbytes')!r}, not a non-negative integer")
            tensors = tuple(_tensor_record(t, path, bad) for t in s["records"])
            spans = sorted((t.byte_offset, t.byte_offset + t.nbytes, t.name) for t in tensors)
            for (start, end, name), (next_start, _, next_name) in zip(spans, spans[1:]):
                if next_start < end:
                    raise bad(f"tensors {name} and {next_name} overlap in {path}")
            for start, end, name in spans:
                if end > size:
                    raise bad(f"tensor {name} runs past the end of {path} ({end} > {size} bytes)")
                if name in names:
                    raise bad(f"tensor {name} appears twice")
                names.add(name)
            shards.append(ShardRecord(path, size, md5.lower(), tensors))
        return cls(dict(metadata), tuple(shards))


def _whole(value: Any) -> int | None:
    """`value` if it is a non-negative integer (not a bool, float or string), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def is_plain_relative_path(path: Any) -> bool:
    """A '/'-separated relative path with no empty, '.' or '..' segment, backslash or control character."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        return False
    if any(ord(c) < 32 for c in path) or ":" in path.split("/", 1)[0]:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _tensor_record(t: Any, shard: str, bad: Any) -> TensorRecord:
    """One tensor entry of a shard, validated (see TensorCacheIndex.from_json)."""
    if not isinstance(t, dict):
        raise bad(f"a tensor entry of {shard} is not an object")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"a tensor of {shard} has name {name!r}")
    shape = t.get("shape")
    if not isinstance(shape, list) or any(_whole(d) is None for d in shape):
        raise bad(f"tensor {name} has shape {shape!r}, not a list of non-negative integers")
    nbytes, offset = _whole(t.get("nbytes")), _whole(t.get("byteOffset"))
    if nbytes is None or offset is None:
        raise bad(f"tensor {name} has nbytes {t.get('nbytes')!r} / byteOffset {t.get('byteOffset')!r}, "
                  "not non-negative integers")
    dtype, fmt = t.get("dtype"), t.get("format", "raw")
    if not isinstance(dtype, str) or not isinstance(fmt, str):
        raise bad(f"tensor {name} has dtype {dtype!r} / format {fmt!r}")
    if fmt not in RECORD_FORMATS:
        raise bad(f"tensor {name} has unknown format {fmt!r}")
    record = TensorRecord(name, tuple(shape), dtype, fmt, nbytes, offset)
    try:
        record.check()
    except WeightFileError as e:
        raise bad(str(e)) from None
    return record
