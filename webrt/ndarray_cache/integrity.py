"""A ModelRecord's optional ``integrity``: SRI hashes of the files a model is made of. Pure Python.

WebLLM's ``ModelRecord.integrity`` (same field names), plus two of webrt's for the weights::

    "integrity": {
        "config": "sha256-<base64>",                  # mlc-chat-config.json
        "model_lib": "sha256-<base64>",               # the library (.wasm)
        "model_lib_cpu": "sha256-...",                # webrt: the CPU library, if the record has one
        "model_lib_fallback": "sha256-...",           # webrt: the fallback-adapter WebGPU library, likewise
        "tokenizer": {"tokenizer.json": "sha256-..."}, # per tokenizer file
        "tensor_cache": "sha256-...",                 # webrt: tensor-cache.json (it holds each shard's md5)
        "shards": {"params_shard_0.bin": "sha256-..."},  # webrt: per shard (its dataPath)
        "onFailure": "error"                          # or "warn": report and use the file anyway
    }

Hashes are Subresource Integrity strings (``sha256-``, ``sha384-`` or ``sha512-`` and the
base64 digest). In the browser a download is hashed once it is complete, by the browser's
``crypto.subtle.digest`` (`check_sri_in_browser`): measured in a Chromium worker it hashes 3 to
4x faster than Pyodide's hashlib (sha256 compiled to wasm, 50-65 MB/s here), and the file never
passes through Python. `check_sri` is the same check with hashlib, for CPython. A file that fails
its hash is never stored. Only the files named are checked. The small files (config, tokenizer
files, index, library) are checked again when read from the cache, so a record whose hash
changed gets a fresh copy; a shard is checked when it is downloaded (hashing every cached shard
on each load would cost much of what the cache saves).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webrt.chat_config import CHAT_CONFIG_FILE
from webrt.errors import IntegrityError, ModelConfigError
from webrt.ndarray_cache.format import INDEX_NAMES

#: SRI algorithms WebLLM accepts, with their digest sizes in bytes.
SRI_DIGEST_BYTES = {"sha256": 32, "sha384": 48, "sha512": 64}
ON_FAILURE = ("error", "warn")
_SRI = re.compile(r"(sha256|sha384|sha512)-([A-Za-z0-9+/]+={0,2})")


def parse_sri(value: Any, where: str) -> tuple[str, bytes]:
    """(algorithm, digest) of an SRI string; ModelConfigError naming ``where`` if malformed."""
    match = _SRI.fullmatch(value) if isinstance(value, str) else None
    digest = b""
    if match:
        try:
            digest = base64.b64decode(match.group(2), validate=True)
        except binascii.Error:
            digest = b""
    if not match or len(digest) != SRI_DIGEST_BYTES[match.group(1)]:
        raise ModelConfigError(
            f"{where} must be a Subresource Integrity hash such as 'sha256-<base64 of the 32-byte digest>' "
            f"(sha256, sha384 or sha512), got {value!r}; compute one with "
            "`openssl dgst -sha256 -binary FILE | openssl base64 -A`.")
    return match.group(1), digest


def sri_of(data: bytes, algorithm: str = "sha256") -> str:
    """The SRI string of ``data``."""
    return f"{algorithm}-{base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def _file_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ModelConfigError(f"{where} must map file names to SRI hashes, got {value!r}")
    for name, sri in value.items():
        if not isinstance(name, str) or not name:
            raise ModelConfigError(f"{where} has a key {name!r} that is not a file name")
        parse_sri(sri, f"{where}[{name!r}]")
    return dict(value)


@dataclass(frozen=True)
class ModelIntegrity:
    """The SRI hashes a record gives (see the module docstring); None / empty: not checked."""

    config: str | None = None
    model_lib: str | None = None
    model_lib_cpu: str | None = None
    model_lib_fallback: str | None = None
    tokenizer: dict[str, str] = field(default_factory=dict)
    tensor_cache: str | None = None
    shards: dict[str, str] = field(default_factory=dict)
    on_failure: str = "error"

    _FIELDS = ("config", "model_lib", "model_lib_cpu", "model_lib_fallback", "tokenizer", "tensor_cache", "shards", "onFailure")

    @classmethod
    def from_value(cls, value: Any, model_id: str = "") -> ModelIntegrity | None:
        """From a record's ``integrity`` (a dict, a ModelIntegrity or None); malformed -> ModelConfigError."""
        if value is None or isinstance(value, ModelIntegrity):
            return value
        where = f"model record {model_id!r}: integrity"
        if not isinstance(value, Mapping):
            raise ModelConfigError(f"{where} must be an object, got {type(value).__name__}")
        unknown = sorted(set(value) - set(cls._FIELDS) - {"on_failure"})
        if unknown:
            raise ModelConfigError(f"{where} has unknown field(s) {unknown}; accepted: {list(cls._FIELDS)}")
        for key in ("config", "model_lib", "model_lib_cpu", "model_lib_fallback", "tensor_cache"):
            if value.get(key) is not None:
                parse_sri(value[key], f"{where}.{key}")
        on_failure = value.get("onFailure", value.get("on_failure", "error"))
        if on_failure not in ON_FAILURE:
            raise ModelConfigError(f"{where}.onFailure must be one of {ON_FAILURE}, got {on_failure!r}")
        return cls(config=value.get("config"), model_lib=value.get("model_lib"),
                   model_lib_cpu=value.get("model_lib_cpu"), model_lib_fallback=value.get("model_lib_fallback"),
                   tokenizer=_file_map(value.get("tokenizer"), f"{where}.tokenizer"),
                   tensor_cache=value.get("tensor_cache"), shards=_file_map(value.get("shards"), f"{where}.shards"),
                   on_failure=on_failure)

    def to_json(self) -> dict[str, Any]:
        """WebLLM's JSON shape (the fields that are set)."""
        out: dict[str, Any] = {"config": self.config, "model_lib": self.model_lib, "model_lib_cpu": self.model_lib_cpu,
                               "model_lib_fallback": self.model_lib_fallback,
                               "tokenizer": self.tokenizer or None,
                               "tensor_cache": self.tensor_cache, "shards": self.shards or None,
                               "onFailure": self.on_failure}
        return {k: v for k, v in out.items() if v is not None}

    def for_model_file(self, name: str) -> str | None:
        """The hash of a file of the model folder (the chat config, a tokenizer file, the index, a shard)."""
        if name == CHAT_CONFIG_FILE:
            return self.config
        if name in INDEX_NAMES:
            return self.tensor_cache
        return self.tokenizer.get(name) or self.shards.get(name)


def verify_digest(digest: bytes, sri: str, name: str, url: str, on_failure: str = "error") -> None:
    """Raise IntegrityError unless ``digest`` is the one ``sri`` gives (a warning with ``on_failure="warn"``)."""
    algorithm, expected = parse_sri(sri, f"the integrity hash of {name}")
    if digest == expected:
        return
    message = (f"{name} ({url}) does not match its ModelRecord's integrity hash: expected {sri}, "
               f"got {algorithm}-{base64.b64encode(digest).decode()}. It was not stored in the cache. The "
               "server's file was replaced or tampered with, or the record's hash is out of date: check the "
               "file on the server, or update ModelRecord.integrity.")
    if on_failure == "warn":
        import warnings

        warnings.warn(message + " (integrity.onFailure is 'warn': using it anyway)", stacklevel=3)
        return
    raise IntegrityError(message)


def check_sri(data: bytes, sri: str | None, name: str, url: str, on_failure: str = "error") -> None:
    """Raise IntegrityError unless ``data`` matches ``sri`` (nothing to check when None); hashlib."""
    if sri is not None:
        algorithm, _ = parse_sri(sri, f"the integrity hash of {name}")
        verify_digest(hashlib.new(algorithm, data).digest(), sri, name, url, on_failure)


async def check_sri_in_browser(data: Any, sri: str | None, name: str, url: str, on_failure: str = "error") -> None:
    """`check_sri` for a JS ArrayBuffer, hashed by ``crypto.subtle.digest`` (Pyodide only)."""
    if sri is None:
        return
    import js

    algorithm, _ = parse_sri(sri, f"the integrity hash of {name}")
    digest = await js.crypto.subtle.digest(f"SHA-{algorithm[3:]}", data)
    verify_digest(js.Uint8Array.new(digest).to_bytes(), sri, name, url, on_failure)
