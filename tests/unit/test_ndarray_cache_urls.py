"""The pure-Python parts of the browser cache: WebLLM's URL rules, the shard verifier, the index checks."""

from __future__ import annotations

import hashlib

import pytest

from webrt.engine.config import ModelRecord
from webrt.errors import CacheIntegrityError, WeightFileError
from webrt.ndarray_cache.cache_helpers import library_url, model_base_url
from webrt.ndarray_cache.format import ShardRecord, TensorCacheIndex, TensorRecord
from webrt.ndarray_cache.urls import absolute_url, clean_model_url, join_url
from webrt.ndarray_cache.verify import ShardVerifier


@pytest.mark.parametrize(("model", "cleaned"), [
    ("https://huggingface.co/mlc-ai/SmolLM2-135M-Instruct-q4f32_1-MLC",
     "https://huggingface.co/mlc-ai/SmolLM2-135M-Instruct-q4f32_1-MLC/resolve/main/"),
    ("https://huggingface.co/mlc-ai/x/", "https://huggingface.co/mlc-ai/x/resolve/main/"),
    ("https://huggingface.co/mlc-ai/x/resolve/v2/", "https://huggingface.co/mlc-ai/x/resolve/v2/"),
    ("https://huggingface.co/mlc-ai/x/resolve/main", "https://huggingface.co/mlc-ai/x/resolve/main/"),
    ("/models/tiny", "/models/tiny/resolve/main/"),
    ("/models/resolve/", "/models/resolve/resolve/main/"),  # "resolve" without a revision after it
])
def test_clean_model_url_follows_webllm(model: str, cleaned: str) -> None:
    assert clean_model_url(model) == cleaned


def test_urls_are_absolute_cache_keys() -> None:
    page = "http://127.0.0.1:8000/chat/index.html"
    record = ModelRecord(model="/models/tiny", model_id="tiny", model_lib="../libs/tiny.wasm")
    assert model_base_url(record, page) == "http://127.0.0.1:8000/models/tiny/resolve/main/"
    assert library_url(record, page) == "http://127.0.0.1:8000/libs/tiny.wasm"
    assert absolute_url("https://cdn.example/x.wasm", page) == "https://cdn.example/x.wasm"
    assert join_url("http://h/a/", "b.json") == join_url("http://h/a", "b.json") == "http://h/a/b.json"


def _feed(verifier: ShardVerifier, data: bytes, chunk: int = 7) -> None:
    for i in range(0, len(data), chunk):
        verifier.update(data[i:i + chunk])


def test_verifier_accepts_the_recorded_file() -> None:
    data = bytes(range(256)) * 5
    verifier = ShardVerifier("params_shard_0.bin", "http://h/params_shard_0.bin", len(data),
                             hashlib.md5(data).hexdigest().upper())
    _feed(verifier, data)
    verifier.finish()
    no_md5 = ShardVerifier("s", "u", len(data), None)
    assert not no_md5.wants_bytes
    no_md5.update_length(len(data))
    no_md5.finish()


@pytest.mark.parametrize("damage", ["flip", "short", "long"])
def test_verifier_rejects_damage_naming_the_file_and_the_fix(damage: str) -> None:
    data = bytes(range(200)) * 3
    verifier = ShardVerifier("params_shard_3.bin", "http://h/m/params_shard_3.bin", len(data),
                             hashlib.md5(data).hexdigest())
    bad = {"flip": data[:10] + b"\xff" + data[11:], "short": data[:-1], "long": data + b"x"}[damage]
    with pytest.raises(CacheIntegrityError) as info:
        _feed(verifier, bad)
        verifier.finish()
    message = str(info.value)
    assert "params_shard_3.bin" in message and "not stored" in message
    assert "convert_weight" in message and "delete_model_in_cache" in message
    assert {"flip": "md5", "short": "bytes", "long": "longer"}[damage] in message


def test_verifier_without_md5_checks_the_size() -> None:
    verifier = ShardVerifier("s", "u", 10, None)
    verifier.update_length(9)
    with pytest.raises(CacheIntegrityError, match="9 bytes"):
        verifier.finish()
    with pytest.raises(ValueError):
        ShardVerifier("s", "u", 10, "00").update_length(1)


def test_tensor_records_are_checked_against_shape_and_dtype() -> None:
    TensorRecord("w", (2, 3), "float32", "raw", 24, 0).check()
    TensorRecord("b", (4,), "float32", "f32-to-bf16", 8, 0).check()
    for bad, needle in [
        (TensorRecord("w", (2, 3), "float32", "raw", 20, 0), "24 expected"),
        (TensorRecord("w", (2,), "e4m3", "raw", 2, 0), "unsupported dtype"),
        (TensorRecord("w", (-1,), "int8", "raw", 0, 0), "negative dimension"),
        (TensorRecord("w", (4,), "float32", "f32-to-bf16", 16, 0), "f32-to-bf16"),
    ]:
        with pytest.raises(WeightFileError, match=needle):
            bad.check()


def test_index_checks_a_librarys_params_and_picks_its_shards() -> None:
    a = TensorRecord("a", (2,), "float32", "raw", 8, 0)
    b = TensorRecord("b", (1,), "int32", "raw", 4, 0)
    index = TensorCacheIndex({}, (ShardRecord("s0.bin", 8, None, (a,)), ShardRecord("s1.bin", 4, None, (b,))))
    assert [s.data_path for s in index.shards_holding(["b"])] == ["s1.bin"]
    assert [s.data_path for s in index.shards_holding(["a", "b"])] == ["s0.bin", "s1.bin"]
    index.check_params(["a"], [{"name": "a", "shape": [2], "dtype": "float32"}], "here")
    with pytest.raises(WeightFileError, match="here lacks 1 parameter"):
        index.check_params(["a", "c"], [], "here")
    with pytest.raises(WeightFileError, match="re-run convert_weight"):
        index.check_params(["a"], [{"name": "a", "shape": [3], "dtype": "float32"}], "here")
