"""Model artifacts fetched once and then read from the browser's cache (Pyodide only).

`ArtifactCache` holds one store per scope (`webrt.ndarray_cache.urls`) on the AppConfig's
backend, and fetches through them:

- text files (mlc-chat-config.json, tokenizer files) and the library (.wasm) are fetched on a
  miss and stored whole; with an integrity hash (ModelRecord.integrity), a cached copy is checked
  too (they are small) and replaced when it no longer matches;
- the tensor cache: `fetch_index` reads ``tensor-cache.json`` (falling back to the older
  ``ndarray-cache.json``), `iter_shards` yields each weight shard as a JS ArrayBuffer, from the
  cache or downloaded by a few parallel fetches, each verified (size, md5) before it is stored.
  If a download fails, the shards that completed are stored, nothing partial is, and the first
  error is raised once the other downloads in flight have finished. A later load fetches only
  the missing shards.

Every download goes through `webrt.ndarray_cache.fetch.download` (bounded waits, retries of
transient faults, HTML pages refused, size / md5 / SRI hash checked before anything is stored).
When the browser refuses to store a file (its storage quota is used up), StorageQuotaError says
how much the model needs, how much of it is cached, and the ways out.

Progress reports are the engine's ``InitProgressReport`` (WebLLM's: progress, timeElapsed, text).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from webrt.engine.progress import InitProgressCallback, InitProgressReport
from webrt.errors import FetchError, IntegrityError, ModelConfigError, StorageQuotaError, WeightFileError
from webrt.ndarray_cache.fetch import DEFAULT_POLICY, Expected, FetchPolicy, download, download_text
from webrt.ndarray_cache.format import INDEX_NAME, INDEX_NAMES, LEGACY_INDEX_NAME, ShardRecord, TensorCacheIndex
from webrt.ndarray_cache.integrity import ModelIntegrity, check_sri_in_browser
from webrt.ndarray_cache.store import ArtifactStore, decode_text, get_text, open_store, storage_estimate
from webrt.ndarray_cache.urls import CONFIG_SCOPE, KERNELS_SCOPE, MODEL_SCOPE, WASM_SCOPE, join_url

DEFAULT_CONCURRENCY = 4
_REPORT_EVERY_S = 0.25


@dataclass
class FetchStats:
    """What one load took from the network and from the cache."""

    network: list[str] = field(default_factory=list)  # URLs downloaded
    cached: list[str] = field(default_factory=list)  # URLs read from the cache
    network_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"network": list(self.network), "cached": list(self.cached), "network_bytes": self.network_bytes}


class ArtifactCache:
    """Fetch-through caches of one cache backend ("cache" or "indexeddb")."""

    def __init__(self, backend: str = "cache", concurrency: int = DEFAULT_CONCURRENCY,
                 policy: FetchPolicy = DEFAULT_POLICY):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.backend = backend
        self.concurrency = concurrency
        #: retries, backoff and the stall timeout of every download
        self.policy = policy
        self.model: ArtifactStore = open_store(MODEL_SCOPE, backend)
        self.config: ArtifactStore = open_store(CONFIG_SCOPE, backend)
        self.wasm: ArtifactStore = open_store(WASM_SCOPE, backend)
        self.kernels: ArtifactStore = open_store(KERNELS_SCOPE, backend)
        self.stats = FetchStats()

    # --- small files ------------------------------------------------------------------------------
    async def fetch_text(self, store: ArtifactStore, url: str, content_type: str = "application/json",
                         integrity: ModelIntegrity | None = None, check: Callable[[str], Any] | None = None
                         ) -> str | None:
        """The text at ``url`` from ``store``, fetched and stored on a miss; None if the server has none.
        ``integrity`` gives the file's hash, if any (`ModelIntegrity.for_model_file`). A download is
        stored only after ``check(text)`` passed (default for ``.json`` names: it parses as JSON)."""
        name = url.rsplit("/", 1)[-1]
        expected = _expected(integrity, name)
        data = await store.get(url)
        if data is not None and await self._still_matches(store, url, data, expected):
            self.stats.cached.append(url)
            return decode_text(data)
        text = await download_text(url, name, expected, self.policy)
        if text is None:
            return None
        (check or _json_check(name, url))(text)
        self.stats.network.append(url)
        self.stats.network_bytes += len(text)
        await self._put(store, url, text, content_type)
        return text

    async def fetch_library(self, url: str, integrity: ModelIntegrity | None = None,
                            field: str = "model_lib") -> Any:
        """The model library (.wasm) the record names in ``field`` (``model_lib``, ``model_lib_cpu``
        or ``model_lib_fallback``) as a JS ArrayBuffer, from the wasm cache or the network; checked
        against the integrity hash of that field when given."""
        name = url.rsplit("/", 1)[-1]
        sri = None if integrity is None else getattr(integrity, field)
        expected = Expected(sri=sri, on_failure=integrity.on_failure) if integrity else Expected()
        data = await self.wasm.get(url)
        if data is not None and await self._still_matches(self.wasm, url, data, expected):
            self.stats.cached.append(url)
            return data
        data = await download(url, name, expected, self.policy)
        head = _first_bytes(data, 4)
        if head != b"\0asm":
            raise FetchError(f"{url} is not a WebAssembly module (it starts with {head!r}); check "
                             f"ModelRecord.{field}.")
        self.stats.network.append(url)
        self.stats.network_bytes += int(data.byteLength)
        await self._put(self.wasm, url, data, "application/wasm")
        return data

    async def _still_matches(self, store: ArtifactStore, url: str, data: Any, expected: Expected) -> bool:
        """Whether a cached file (an ArrayBuffer) matches its integrity hash (True without one); a
        stale copy is dropped."""
        if expected.sri is None:
            return True
        try:
            await check_sri_in_browser(data, expected.sri, url.rsplit("/", 1)[-1], url, expected.on_failure)
        except IntegrityError:
            await store.delete(url)
            return False
        return True

    async def _put(self, store: ArtifactStore, url: str, data: Any, content_type: str = "application/octet-stream",
                   shards: Sequence[ShardRecord] = (), base_url: str = "") -> None:
        """``store.put``; a full quota becomes StorageQuotaError naming what the model needs (the
        weights' total when ``shards`` are given) and the ways out."""
        try:
            await store.put(url, data, content_type)
        except StorageQuotaError as exc:
            size = len(data.encode()) if isinstance(data, str) else int(data.byteLength)
            need = f"{url.rsplit('/', 1)[-1]} needs {_mb(size)}"
            if shards:
                cached = 0
                for shard in shards:
                    if await self.model.has(join_url(base_url, shard.data_path)):
                        cached += shard.nbytes
                total = sum(s.nbytes for s in shards)
                need += (f"; the weights of this model need {_mb(total)}, of which {_mb(cached)} are cached "
                         f"({_mb(total - cached)} still to store)")
            usage, quota = await storage_estimate()
            site = (f"; this site uses {_mb(usage)} of the {_mb(quota)} the browser allows it"
                    if usage is not None and quota is not None else "")
            other = "indexeddb" if self.backend == "cache" else "cache"
            raise StorageQuotaError(
                f"the browser refused to store {url}: its storage quota for this site is used up ({exc}). {need}"
                f"{site}. Free space, then load the model again (the files already cached are kept): delete other "
                "cached models with webrt.ndarray_cache.cache_helpers.delete_model_all_info_in_cache(model_id, "
                "app_config), clear this site's data in the browser's settings, or try "
                f"AppConfig(cache_backend={other!r}).") from None

    # --- the tensor cache -------------------------------------------------------------------------
    async def cached_index(self, base_url: str) -> TensorCacheIndex | None:
        """The index under ``base_url`` if the cache holds it (under either name), else None."""
        for name in INDEX_NAMES:
            url = join_url(base_url, name)
            text = await get_text(self.model, url)
            if text is not None:
                self.stats.cached.append(url)
                return TensorCacheIndex.loads(text, name)
        return None

    async def fetch_index(self, base_url: str, integrity: ModelIntegrity | None = None) -> TensorCacheIndex:
        """``tensor-cache.json`` (else ``ndarray-cache.json``) under ``base_url``, cached; checked
        against ``integrity.tensor_cache`` when the record gives it."""
        if integrity is None or integrity.tensor_cache is None:
            index = await self.cached_index(base_url)
            if index is not None:
                return index
        for name in INDEX_NAMES:
            url = join_url(base_url, name)
            text = await self.fetch_text(self.model, url, "application/json", integrity,
                                         check=lambda t, n=name: TensorCacheIndex.loads(t, n))
            if text is None:
                continue
            return TensorCacheIndex.loads(text, name)
        raise WeightFileError(f"{base_url} has neither {INDEX_NAME} nor {LEGACY_INDEX_NAME}; check "
                              "ModelRecord.model (its files are looked up under <model>/resolve/main/).")

    async def has_shards(self, base_url: str, shards: Sequence[ShardRecord]) -> bool:
        for shard in shards:
            if not await self.model.has(join_url(base_url, shard.data_path)):
                return False
        return True

    async def iter_shards(self, base_url: str, shards: Sequence[ShardRecord],
                          progress: InitProgressCallback | None = None, integrity: ModelIntegrity | None = None
                          ) -> AsyncIterator[tuple[ShardRecord, Any]]:
        """Yield ``(shard, ArrayBuffer)`` for every shard, in completion order (see module docstring);
        a download is checked against ``integrity.shards`` too when the record gives a shard's hash."""
        shards = list(shards)
        if not shards:
            return
        reporter = _ShardProgress(shards, progress, await self.has_shards(base_url, shards))
        todo = list(shards)
        failures: list[BaseException] = []
        queue: asyncio.Queue[tuple[ShardRecord, Any] | None] = asyncio.Queue()
        # at most this many shards in memory: downloading, or waiting for the consumer
        slots = asyncio.Semaphore(2 * self.concurrency)

        async def worker() -> None:
            try:
                while todo and not failures:
                    shard = todo.pop(0)
                    await slots.acquire()
                    try:
                        data = await self._shard(base_url, shard, reporter, shards, integrity)
                    except BaseException:
                        slots.release()
                        raise
                    queue.put_nowait((shard, data))
            except BaseException as exc:  # noqa: BLE001 - re-raised by the consumer
                failures.append(exc)
            finally:
                queue.put_nowait(None)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(shards)))]
        running = len(workers)
        try:
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                    continue
                try:
                    if not failures:
                        yield item
                        reporter.loaded(item[0])
                finally:
                    slots.release()
            if failures:
                raise failures[0]
        finally:
            for w in workers:
                if not w.done():
                    w.cancel()

    async def _shard(self, base_url: str, shard: ShardRecord, reporter: _ShardProgress, shards: list[ShardRecord],
                     integrity: ModelIntegrity | None) -> Any:
        url = join_url(base_url, shard.data_path)
        data = await self.model.get(url)
        if data is not None and int(data.byteLength) == shard.nbytes:
            self.stats.cached.append(url)
            return data
        if data is not None:  # an entry of another size: the index changed; replace it
            await self.model.delete(url)
        expected = _expected(integrity, shard.data_path, shard.nbytes, shard.md5sum)
        data = await download(url, shard.data_path, expected, self.policy, reporter.received)
        await self._put(self.model, url, data, shards=shards, base_url=base_url)
        self.stats.network.append(url)
        self.stats.network_bytes += shard.nbytes
        return data

    # --- kernels a library launched ---------------------------------------------------------------
    async def launched_kernels(self, wasm_url: str) -> list[str] | None:
        """The kernel names saved for ``wasm_url`` by `save_launched_kernels`, or None."""
        text = await get_text(self.kernels, wasm_url)
        if text is None:
            return None
        try:
            data = json.loads(text)
            names = data["kernels"]
        except (ValueError, KeyError, TypeError):
            await self.kernels.delete(wasm_url)  # unreadable: forget it
            return None
        return [str(n) for n in names] if isinstance(names, list) else None

    async def save_launched_kernels(self, wasm_url: str, names: Sequence[str], wasm_bytes: int) -> None:
        await self.kernels.put(wasm_url, json.dumps({"kernels": sorted(names), "wasm_bytes": wasm_bytes}),
                               "application/json")


def _expected(integrity: ModelIntegrity | None, name: str, nbytes: int | None = None, md5sum: str | None = None
              ) -> Expected:
    if integrity is None:
        return Expected(nbytes, md5sum)
    return Expected(nbytes, md5sum, integrity.for_model_file(name), integrity.on_failure)


def _json_check(name: str, url: str) -> Callable[[str], Any]:
    """For a ``.json`` file: parses, else ModelConfigError (and the file is not stored)."""
    def check(text: str) -> None:
        if not name.endswith(".json"):
            return
        try:
            json.loads(text)
        except ValueError as e:
            raise ModelConfigError(f"{name} ({url}) is not valid JSON ({e}); it was not stored in the cache. Fix "
                                   "the file on the server (regenerate it with `webrt gen_config`).") from None
    return check


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _first_bytes(data: Any, n: int) -> bytes:
    import js

    return js.Uint8Array.new(data, 0, min(n, int(data.byteLength))).to_bytes()


class _ShardProgress:
    """WebLLM's "Fetching param cache[i/n]" / "Loading model from cache[i/n]" reports."""

    def __init__(self, shards: list[ShardRecord], callback: InitProgressCallback | None, cache_only: bool):
        self.callback = callback
        self.cache_only = cache_only
        self.total = sum(s.nbytes for s in shards) or 1
        self.count = len(shards)
        self.done_bytes = 0
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def received(self, n: int) -> None:
        """Bytes of a download arrived (reported at most every 0.25 s)."""
        self.done_bytes += n
        now = time.perf_counter()
        if now - self._last >= _REPORT_EVERY_S:
            self._report(now)

    def loaded(self, shard: ShardRecord) -> None:
        """A shard is on the GPU."""
        self.done += 1
        if self.cache_only:
            self.done_bytes += shard.nbytes
        self._report(time.perf_counter(), force=True)

    def _report(self, now: float, force: bool = False) -> None:
        if self.callback is None:
            return
        self._last = now
        elapsed = now - self.start
        frac = min(self.done_bytes, self.total) / self.total
        if self.cache_only:
            text = (f"Loading model from cache[{self.done}/{self.count}]: {self.done_bytes / 2**20:.1f}MB loaded. "
                    f"{int(frac * 100)}% completed, {elapsed:.0f} secs elapsed.")
        else:
            text = (f"Fetching param cache[{self.done}/{self.count}]: {self.done_bytes / 2**20:.1f}MB fetched. "
                    f"{int(frac * 100)}% completed, {elapsed:.0f} secs elapsed. It can take a while when we first "
                    "visit this page to populate the cache. Later refreshes will become faster.")
        self.callback(InitProgressReport(frac, elapsed, text))
