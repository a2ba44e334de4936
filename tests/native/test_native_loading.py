"""Tampered or broken artifacts on TVM's native runtime: every case is a typed error naming the
file and the fix, before TVM can crash (SIGSEGV, SIGBUS), read outside the model folder or load
garbage. The tensor-cache index itself is validated once, for every host."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

import model_factory
from webrt.errors import CacheIntegrityError, ModelLibraryError, WeightFileError
from webrt.native.backend import NativeBackend
from webrt.ndarray_cache.format import TensorCacheIndex


@pytest.fixture()
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A private copy of the tiny model's folder and CPU library; a private verification ledger."""
    monkeypatch.setenv("WEBRT_CACHE_DIR", str(tmp_path / "cache"))
    art = model_factory.tiny_artifacts("llama2")
    shutil.copytree(art.model_dir, tmp_path / "model")
    shutil.copy2(art.libs["cpu"], tmp_path / "lib-cpu.so")
    return tmp_path / "model", tmp_path / "lib-cpu.so"


def edit_index(model_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = model_dir / "tensor-cache.json"
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))


def first_tensor(index: dict[str, Any]) -> dict[str, Any]:
    return index["records"][0]["records"][0]


def test_an_untouched_copy_loads_and_is_verified_once(model: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, lib = model
    NativeBackend(model_dir, lib).close()
    ledger = json.loads((tmp_path / "cache" / "verified-shards.json").read_text())
    assert sorted(Path(p).name for p in ledger) == sorted(p.name for p in model_dir.glob("params_shard_*.bin"))
    NativeBackend(model_dir, lib).close()  # warm: from the ledger


def test_flipped_bytes_in_a_shard_are_caught(model: tuple[Path, Path]) -> None:
    model_dir, lib = model
    NativeBackend(model_dir, lib).close()  # verified once; the change below must still be seen
    shard = model_dir / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    for i in range(0, min(len(data), 2000 * 97), 97):
        data[i] ^= 0x5A
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheIntegrityError, match=r"params_shard_0\.bin does not match its md5sum.*convert_weight"):
        NativeBackend(model_dir, lib)


def test_missing_and_truncated_shards(model: tuple[Path, Path]) -> None:
    model_dir, lib = model
    shard = model_dir / "params_shard_0.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheIntegrityError, match=r"params_shard_0\.bin has \d+ bytes"):
        NativeBackend(model_dir, lib)
    shard.unlink()
    with pytest.raises(WeightFileError, match=r"params_shard_0\.bin is missing"):
        NativeBackend(model_dir, lib)


def test_truncated_and_foreign_libraries(model: tuple[Path, Path]) -> None:
    model_dir, lib = model
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLibraryError, match="truncated.*webrt compile"):
        NativeBackend(model_dir, lib)
    lib.write_bytes(b"\0asm" + data[4:])
    with pytest.raises(ModelLibraryError, match="not a shared library"):
        NativeBackend(model_dir, lib)


def test_index_offsets_paths_and_shapes(model: tuple[Path, Path]) -> None:
    model_dir, lib = model
    original = (model_dir / "tensor-cache.json").read_text()
    cases: list[tuple[Callable[[dict[str, Any]], None], str]] = [
        (lambda ix: first_tensor(ix).update(byteOffset=10**12), "runs past the end"),
        (lambda ix: ix["records"][0].update(dataPath="../../../../etc/passwd"), "not a file name inside"),
        (lambda ix: ix["records"][0].update(dataPath="/etc/passwd"), "not a file name inside"),
    ]
    for change, message in cases:
        (model_dir / "tensor-cache.json").write_text(original)
        edit_index(model_dir, change)
        with pytest.raises(WeightFileError, match=message):
            NativeBackend(model_dir, lib)

    def reshape(ix: dict[str, Any]) -> None:  # a consistent record, but not the shape the library wants
        t = first_tensor(ix)
        t["shape"] = [t["nbytes"] // 4]
        t["dtype"] = "float32"

    (model_dir / "tensor-cache.json").write_text(original)
    edit_index(model_dir, reshape)
    with pytest.raises(WeightFileError, match="the library expects"):
        NativeBackend(model_dir, lib)


def _valid_index() -> dict[str, Any]:
    return {"metadata": {}, "records": [{"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes": 64,
                                         "md5sum": "0" * 32, "records": [
                                             {"name": "a", "shape": [4, 2], "dtype": "float32", "format": "raw",
                                              "nbytes": 32, "byteOffset": 0},
                                             {"name": "b", "shape": [8], "dtype": "float32", "format": "raw",
                                              "nbytes": 32, "byteOffset": 32}]}]}


INVALID: dict[str, Callable[[dict[str, Any]], None]] = {
    "negative offset": lambda ix: ix["records"][0]["records"][0].update(byteOffset=-4),
    "negative dimension": lambda ix: ix["records"][0]["records"][0].update(shape=[-4, -2]),
    "shape x dtype != nbytes": lambda ix: ix["records"][0]["records"][0].update(shape=[4, 3]),
    "unknown dtype": lambda ix: ix["records"][0]["records"][0].update(dtype="float7"),
    "dotdot dataPath": lambda ix: ix["records"][0].update(dataPath="../secret.bin"),
    "absolute dataPath": lambda ix: ix["records"][0].update(dataPath="/etc/passwd"),
    "md5 not a string": lambda ix: ix["records"][0].update(md5sum=12345),
    "md5 missing": lambda ix: ix["records"][0].pop("md5sum"),
    "overlapping records": lambda ix: ix["records"][0]["records"][1].update(byteOffset=16),
    "float size": lambda ix: ix["records"][0].update(nbytes=64.7),
    "duplicate name": lambda ix: ix["records"][0]["records"][1].update(name="a"),
    "string offset": lambda ix: ix["records"][0]["records"][0].update(byteOffset="0"),
    "unknown record format": lambda ix: ix["records"][0]["records"][0].update(format="q9"),
    "past the shard": lambda ix: ix["records"][0].update(nbytes=48),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_semantically_invalid_indexes_are_refused(case: str) -> None:
    TensorCacheIndex.from_json(_valid_index())  # the base case is valid
    index = copy.deepcopy(_valid_index())
    INVALID[case](index)
    with pytest.raises(WeightFileError, match="re-run `webrt convert_weight`"):
        TensorCacheIndex.from_json(index)

