"""Checks made before TVM's native runtime touches a model's files.

TVM's runtime trusts its inputs: a truncated shared library is mapped and crashes the process
(SIGBUS) when a page past its end is touched, and its tensor-cache loader reads whatever byte
ranges ``tensor-cache.json`` names (an offset past the end is a SIGSEGV, a ``dataPath`` with
``..`` opens any file) and never checks the md5 sums. So natively, as in the browser, every shard
is checked against the validated index (size and md5) first, and the library's ELF headers must
describe a file that is all there. Verified shards are remembered by (size, modification time)
in ``<cache root>/verified-shards.json``, so a warm start does not hash hundreds of megabytes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

from webrt.compiler.linking.web_runtime import cache_root
from webrt.errors import CacheIntegrityError, ModelLibraryError, WeightFileError
from webrt.ndarray_cache.format import INDEX_NAME, ShardRecord, TensorCacheIndex

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1


def check_library(path: Path) -> None:
    """Raise ModelLibraryError unless `path` is a whole 64-bit little-endian ELF shared library."""
    fix = f"rebuild it with `webrt compile <model>/mlc-chat-config.json --device cpu -o {path}`"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLibraryError(f"{path} cannot be read ({e.strerror}); {fix}.") from None
    if len(data) < 64 or data[:4] != ELF_MAGIC:
        raise ModelLibraryError(f"{path} is not a shared library (no ELF header); {fix}.")
    if data[4] != 2 or data[5] != 1:
        raise ModelLibraryError(f"{path} is not a 64-bit little-endian library; {fix} on this machine.")
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    ends = [phoff + phentsize * phnum, shoff + shentsize * shnum]
    if ends[0] <= len(data):
        for i in range(phnum):
            kind, = struct.unpack_from("<I", data, phoff + i * phentsize)
            offset, = struct.unpack_from("<Q", data, phoff + i * phentsize + 8)
            filesz, = struct.unpack_from("<Q", data, phoff + i * phentsize + 32)
            if kind == PT_LOAD:
                ends.append(offset + filesz)
    if max(ends) > len(data):
        raise ModelLibraryError(f"{path} is truncated ({len(data)} bytes, its headers need {max(ends)}); {fix}.")


def read_index(model_dir: Path) -> TensorCacheIndex:
    """The model folder's validated tensor-cache index."""
    path = model_dir / INDEX_NAME
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise WeightFileError(f"{path} cannot be read ({e}); run `webrt convert_weight` into {model_dir}.") from None
    return TensorCacheIndex.loads(text, str(path))


def _ledger_path() -> Path:
    return cache_root() / "verified-shards.json"


def _read_ledger() -> dict[str, list]:
    try:
        ledger = json.loads(_ledger_path().read_text())
        return ledger if isinstance(ledger, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_ledger(ledger: dict[str, list]) -> None:
    path = _ledger_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verified-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(ledger, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the next start a re-hash


def verify_shards(model_dir: Path, shards: list[ShardRecord]) -> None:
    """Raise unless every shard exists with its recorded size and md5sum (hashing only the shards
    whose size or modification time changed since they were last verified)."""
    fix = f"re-run `webrt convert_weight` into {model_dir} (or copy the folder again)"
    ledger, changed = _read_ledger(), False
    for shard in shards:
        path = (model_dir / shard.data_path).resolve()
        try:
            stat = path.stat()
        except OSError:
            raise WeightFileError(f"{path} is missing ({shard.data_path} of {INDEX_NAME}); {fix}.") from None
        if stat.st_size != shard.nbytes:
            raise CacheIntegrityError(f"{path} has {stat.st_size} bytes, {INDEX_NAME} records {shard.nbytes}; {fix}.")
        stamp = [stat.st_size, stat.st_mtime_ns, shard.md5sum]
        if ledger.get(str(path)) == stamp:
            continue
        digest = hashlib.md5()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        if digest.hexdigest() != shard.md5sum:
            raise CacheIntegrityError(f"{path} does not match its md5sum in {INDEX_NAME} (the file is damaged or "
                                      f"from another conversion); {fix}.")
        ledger[str(path)], changed = stamp, True
    if changed:
        _write_ledger(ledger)
