"""Integrity of downloaded files: byte count and md5, checked incrementally. Pure Python.

A shard is accepted into the cache only after `ShardVerifier.finish` passed: the size the
index records, and its md5sum when the index has one. Pyodide's `hashlib` (C, compiled to
wasm) hashes ~450 MB/s in Chromium here, well above what a download delivers, so chunks are
hashed as they arrive.
"""

from __future__ import annotations

import hashlib

from webrt.errors import CacheIntegrityError


def integrity_message(name: str, url: str, problem: str) -> str:
    """The error text for a rejected download: what is wrong, that nothing was stored, the fix."""
    return (f"{name} ({url}) {problem}. It was not stored in the cache. The download was cut or corrupted, "
            "or the server's files changed after its tensor-cache.json was written: load the model again "
            "to retry (the shards already cached are kept); if it fails the same way, the index is stale: "
            "re-run `webrt convert_weight` on the server, then call delete_model_in_cache(model_id).")


class ShardVerifier:
    """Counts and hashes a download chunk by chunk; `finish` raises CacheIntegrityError on a mismatch."""

    def __init__(self, name: str, url: str, nbytes: int | None, md5sum: str | None):
        self.name, self.url = name, url
        self.expected_bytes = nbytes
        self.expected_md5 = md5sum.lower() if md5sum else None
        self._md5 = hashlib.md5() if self.expected_md5 else None
        self.received = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Account for the next chunk; raises as soon as the download is longer than recorded."""
        self.received += len(chunk)
        if self.expected_bytes is not None and self.received > self.expected_bytes:
            raise CacheIntegrityError(integrity_message(
                self.name, self.url, f"is longer than the {self.expected_bytes} bytes its index records"))
        if self._md5 is not None:
            self._md5.update(chunk)

    @property
    def wants_bytes(self) -> bool:
        """Whether `update` needs the chunk's bytes (else only its length matters)."""
        return self._md5 is not None

    def update_length(self, n: int) -> None:
        """Account for `n` bytes without hashing (no md5 recorded)."""
        if self._md5 is not None:
            raise ValueError("this shard has an md5sum: pass the bytes to update()")
        self.received += n
        if self.expected_bytes is not None and self.received > self.expected_bytes:
            raise CacheIntegrityError(integrity_message(
                self.name, self.url, f"is longer than the {self.expected_bytes} bytes its index records"))

    def finish(self) -> None:
        """Raise CacheIntegrityError unless the size (and md5) match the index."""
        if self.expected_bytes is not None and self.received != self.expected_bytes:
            raise CacheIntegrityError(integrity_message(
                self.name, self.url, f"has {self.received} bytes but its index records {self.expected_bytes}"))
        if self._md5 is not None:
            got = self._md5.hexdigest()
            if got != self.expected_md5:
                raise CacheIntegrityError(integrity_message(
                    self.name, self.url, f"has md5 {got} but its index records {self.expected_md5}"))
