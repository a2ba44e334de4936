"""ModelRecord.integrity (WebLLM's shape, SRI hashes) and the download policy: parsing and checks.

The browser side (hashes enforced on download, nothing stored on a mismatch) is tested in
tests/browser/test_browser_fetch_faults.py; here the pure-Python parts, against digests computed
independently (the well-known sha256 of b"", and ``openssl``-style base64 of hashlib digests).
"""

from __future__ import annotations

import base64
import hashlib
import warnings
from typing import Any

import pytest

from webrt.engine.config import AppConfig, ModelRecord
from webrt.errors import IntegrityError, ModelConfigError
from webrt.ndarray_cache.fetch import FetchPolicy
from webrt.ndarray_cache.integrity import ModelIntegrity, check_sri, sri_of

EMPTY_SHA256 = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # SRI of b"": the well-known sha256 of empty input


def _sri(algorithm: str, data: bytes) -> str:
    return f"{algorithm}-{base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def _record(integrity: Any) -> dict[str, Any]:
    return {"model": "https://example.com/m/", "model_id": "m", "model_lib": "m.wasm", "integrity": integrity}


def test_webllm_shaped_integrity_is_kept_and_round_trips() -> None:
    given = {"config": _sri("sha256", b"c"), "model_lib": _sri("sha384", b"l"),
             "tokenizer": {"tokenizer.json": _sri("sha512", b"t")}, "onFailure": "warn"}
    record = AppConfig.from_dict({"model_list": [_record(given)]}).find("m")
    assert isinstance(record.integrity, ModelIntegrity)
    assert record.integrity.to_json() == given
    assert record.integrity.for_model_file("mlc-chat-config.json") == given["config"]
    assert record.integrity.for_model_file("tokenizer.json") == given["tokenizer"]["tokenizer.json"]
    assert record.integrity.for_model_file("params_shard_0.bin") is None
    webrt_fields = {"tensor_cache": _sri("sha256", b"i"), "shards": {"params_shard_0.bin": _sri("sha256", b"s")},
                    "model_lib_cpu": _sri("sha256", b"w"), "model_lib_fallback": _sri("sha256", b"f")}
    more = ModelRecord(model="u", model_id="m", model_lib="l", integrity=webrt_fields).integrity
    assert more is not None and more.to_json() == {**webrt_fields, "onFailure": "error"}
    assert more.for_model_file("tensor-cache.json") == webrt_fields["tensor_cache"]
    assert more.for_model_file("params_shard_0.bin") == webrt_fields["shards"]["params_shard_0.bin"]
    assert ModelRecord.from_dict(_record(None)).integrity is None


@pytest.mark.parametrize("integrity, words", [
    ({"config": "md5-1B2M2Y8AsgTpgAmY7PhCfg=="}, "integrity.config"),
    ({"config": EMPTY_SHA256[:-4] + "="}, "integrity.config"),  # a digest of the wrong length
    ({"model_lib": "sha256-not base64!"}, "integrity.model_lib"),
    ({"model_lib": EMPTY_SHA256 + "\n"}, "integrity.model_lib"),
    ({"model_lib_fallback": "sha256-x"}, "integrity.model_lib_fallback"),
    ({"config": 5}, "integrity.config"),
    ({"tokenizer": EMPTY_SHA256}, "integrity.tokenizer"),
    ({"tokenizer": {"tokenizer.json": "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk="}}, "tokenizer.json"),
    ({"shards": {"params_shard_0.bin": None}}, "params_shard_0.bin"),
    ({"onFailure": "ignore"}, "onFailure"),
    ({"model": EMPTY_SHA256}, "unknown field"),
    ("sha256-abc", "must be an object"),
])
def test_malformed_integrity_is_a_typed_error_naming_the_field(integrity: Any, words: str) -> None:
    with pytest.raises(ModelConfigError, match="integrity") as info:
        AppConfig.from_dict({"model_list": [_record(integrity)]})
    assert words in str(info.value)


def test_check_sri_against_independent_digests() -> None:
    assert sri_of(b"") == EMPTY_SHA256
    data = bytes(range(256)) * 1000
    for algorithm in ("sha256", "sha384", "sha512"):
        check_sri(data, _sri(algorithm, data), "f.bin", "http://h/f.bin")
    with pytest.raises(IntegrityError, match=r"f\.bin \(http://h/f\.bin\).*expected sha256-.*got sha256-"):
        check_sri(data[:-1], _sri("sha256", data), "f.bin", "http://h/f.bin")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_sri(data[:-1], _sri("sha256", data), "f.bin", "http://h/f.bin", on_failure="warn")
    assert len(caught) == 1 and "onFailure is 'warn'" in str(caught[0].message)


def test_fetch_policy_bounds_every_wait() -> None:
    policy = FetchPolicy(attempts=5, backoff_s=0.5, max_backoff_s=3)
    assert [policy.backoff(i) for i in range(1, 5)] == [0.5, 1.0, 2.0, 3]
    assert FetchPolicy().stall_timeout_s == 30.0
    for bad in ({"attempts": 0}, {"attempts": 1.5}, {"stall_timeout_s": 0}, {"stall_timeout_s": float("inf")},
                {"backoff_s": -1}, {"max_backoff_s": float("nan")}):
        with pytest.raises(ModelConfigError, match="FetchPolicy"):
            FetchPolicy(**bad)
