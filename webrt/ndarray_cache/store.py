"""Persistent browser stores for model artifacts: Cache Storage (default) or IndexedDB.

Both keep whole files under their absolute URL in one named scope (a Cache Storage cache, an
IndexedDB database with one ``urls`` object store of ``{url, data}`` records, the layout TVM's
JS runtime uses). Values are JS ArrayBuffers and never pass through Python objects. A file is
written in one operation after it was verified, so a store never holds a partial file.

A put the browser refuses for lack of space (a ``QuotaExceededError`` DOMException, from either
backend) raises StorageQuotaError; `webrt.ndarray_cache.artifact_cache` adds what the model needs.

Runs on Pyodide only (``js``); `open_store` picks the backend from ``AppConfig.cache_backend``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from webrt.chat_config import CACHE_BACKENDS
from webrt.errors import FetchError, StorageQuotaError

#: The DOMException name both stores reject a write with when the site's quota is used up.
QUOTA_ERROR = "QuotaExceededError"


class ArtifactStore(Protocol):
    """Files keyed by absolute URL in one scope."""

    scope: str

    async def get(self, url: str) -> Any | None:
        """The file as a JS ArrayBuffer, or None when absent."""

    async def put(self, url: str, data: Any, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` (a JS ArrayBuffer or a str) under ``url``, replacing any older copy."""

    async def has(self, url: str) -> bool:
        """Whether ``url`` is stored."""

    async def delete(self, url: str) -> bool:
        """Remove ``url``; whether it was there."""

    async def keys(self) -> list[str]:
        """Every stored URL."""


def _js_obj(value: dict[str, Any]) -> Any:
    import js
    from pyodide.ffi import to_js

    return to_js(value, dict_converter=js.Object.fromEntries)


class CacheStorageStore:
    """A Cache Storage cache (``caches.open(scope)``)."""

    def __init__(self, scope: str):
        self.scope = scope
        self._cache: Any = None

    async def _open(self) -> Any:
        if self._cache is None:
            import js

            if getattr(js, "caches", None) is None:
                raise FetchError("Cache Storage is unavailable here (it needs a secure context: https or "
                                 "localhost); use AppConfig(cache_backend='indexeddb').")
            self._cache = await js.caches.open(self.scope)
        return self._cache

    async def get(self, url: str) -> Any | None:
        response = await (await self._open()).match(url)
        if response is None:
            return None
        return await response.arrayBuffer()

    async def put(self, url: str, data: Any, content_type: str = "application/octet-stream") -> None:
        import js

        size = len(data.encode()) if isinstance(data, str) else int(data.byteLength)
        init = _js_obj({"headers": {"Content-Type": content_type, "Content-Length": str(size)}})
        cache = await self._open()
        try:
            await cache.put(url, js.Response.new(data, init))
        except Exception as exc:  # noqa: BLE001 - a JS DOMException
            if _is_quota_error(exc):
                raise StorageQuotaError(f"Cache Storage: {exc}") from None
            raise

    async def has(self, url: str) -> bool:
        return (await (await self._open()).match(url)) is not None

    async def delete(self, url: str) -> bool:
        return bool(await (await self._open()).delete(url))

    async def keys(self) -> list[str]:
        return [str(r.url) for r in await (await self._open()).keys()]


def _request_done(request: Any) -> asyncio.Future[Any]:
    """A future for an IDBRequest's (or IDBTransaction's, with ``complete``) outcome."""
    from pyodide.ffi import create_proxy

    fut: asyncio.Future[Any] = asyncio.get_event_loop().create_future()

    def ok(_event: Any) -> None:
        if not fut.done():
            fut.set_result(getattr(request, "result", None))

    def fail(_event: Any) -> None:
        if not fut.done():
            error = getattr(request, "error", None)
            kind = StorageQuotaError if _is_quota_error(error) else FetchError
            fut.set_exception(kind(f"IndexedDB: {error}"))

    proxies = [create_proxy(ok), create_proxy(fail)]
    if hasattr(request, "oncomplete"):  # a transaction
        request.oncomplete, request.onerror, request.onabort = proxies[0], proxies[1], proxies[1]
    else:
        request.onsuccess, request.onerror = proxies
    fut.add_done_callback(lambda _: [p.destroy() for p in proxies])
    return fut


class IndexedDBStore:
    """An IndexedDB database named ``scope`` with one ``urls`` object store (key path ``url``)."""

    STORE = "urls"

    def __init__(self, scope: str):
        self.scope = scope
        self._db: Any = None

    async def _open(self) -> Any:
        if self._db is None:
            import js
            from pyodide.ffi import create_once_callable

            if getattr(js, "indexedDB", None) is None:
                raise FetchError("IndexedDB is unavailable here; use AppConfig(cache_backend='cache').")
            request = js.indexedDB.open(self.scope, 1)

            def upgrade(_event: Any) -> None:
                db = request.result
                if not db.objectStoreNames.contains(self.STORE):
                    db.createObjectStore(self.STORE, _js_obj({"keyPath": "url"}))

            request.onupgradeneeded = create_once_callable(upgrade)
            self._db = await _request_done(request)
        return self._db

    async def _store(self, mode: str) -> tuple[Any, Any]:
        tx = (await self._open()).transaction(self.STORE, mode)
        return tx, tx.objectStore(self.STORE)

    async def get(self, url: str) -> Any | None:
        _, store = await self._store("readonly")
        record = await _request_done(store.get(url))
        if record is None:
            return None
        data = record.data
        if isinstance(data, str):  # text files are stored as strings
            import js

            return js.TextEncoder.new().encode(data).buffer
        return data

    async def put(self, url: str, data: Any, content_type: str = "application/octet-stream") -> None:
        tx, store = await self._store("readwrite")
        store.put(_js_obj({"url": url, "data": data, "type": content_type}))
        await _request_done(tx)

    async def has(self, url: str) -> bool:
        _, store = await self._store("readonly")
        return int(await _request_done(store.count(url))) > 0

    async def delete(self, url: str) -> bool:
        had = await self.has(url)
        tx, store = await self._store("readwrite")
        store.delete(url)
        await _request_done(tx)
        return had

    async def keys(self) -> list[str]:
        _, store = await self._store("readonly")
        return [str(k) for k in await _request_done(store.getAllKeys())]


def _is_quota_error(error: Any) -> bool:
    """Whether a JS error (a Pyodide JsException or a DOMException proxy) is a full quota."""
    return error is not None and getattr(error, "name", None) == QUOTA_ERROR


async def storage_estimate() -> tuple[int | None, int | None]:
    """(bytes this site stores, bytes it may store) from ``navigator.storage.estimate()``; Nones if unknown."""
    import js

    storage = getattr(getattr(js, "navigator", None), "storage", None)
    if storage is None:
        return None, None
    try:
        estimate = await storage.estimate()
        return int(estimate.usage), int(estimate.quota)
    except Exception:  # noqa: BLE001 - not available in this context
        return None, None


def open_store(scope: str, backend: str = "cache") -> ArtifactStore:
    """The store for ``scope`` on ``backend`` ("cache" or "indexeddb", as ``AppConfig.cache_backend``)."""
    if backend == "cache":
        return CacheStorageStore(scope)
    if backend == "indexeddb":
        return IndexedDBStore(scope)
    raise ValueError(f"cache backend must be one of {CACHE_BACKENDS}, got {backend!r}")


async def get_text(store: ArtifactStore, url: str) -> str | None:
    """A stored file decoded as UTF-8 (None when absent)."""
    data = await store.get(url)
    return None if data is None else decode_text(data)


def decode_text(data: Any) -> str:
    """A JS ArrayBuffer decoded as UTF-8."""
    import js

    return str(js.TextDecoder.new().decode(data))
