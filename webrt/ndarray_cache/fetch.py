"""Downloads in the browser: whole files as JS ArrayBuffers, verified while they stream in.

The body is read chunk by chunk (`ReadableStream` reader); each chunk is counted and, when the
index records an md5sum, hashed (`ShardVerifier`; a transient copy of the chunk is hashed, the
data stays in JS), then the chunks are joined into one ArrayBuffer in JS. A cut connection, a
short or long body or a bad md5 raises before anything could be stored. Pyodide only.
"""

from __future__ import annotations

from typing import Any, Callable

from webrt.errors import CacheIntegrityError, FetchError
from webrt.ndarray_cache.verify import ShardVerifier

OnBytes = Callable[[int], None]


async def fetch_response(url: str, signal: Any = None) -> Any:
    """``fetch(url)`` with a network failure or an HTTP error status as FetchError."""
    import js

    try:
        if signal is None:
            response = await js.fetch(url)
        else:
            from pyodide.ffi import to_js

            response = await js.fetch(url, to_js({"signal": signal}, dict_converter=js.Object.fromEntries))
    except Exception as exc:  # noqa: BLE001 - a JS TypeError / AbortError
        raise FetchError(f"could not fetch {url}: {exc}") from None
    if not response.ok:
        raise FetchError(f"could not fetch {url}: HTTP {response.status}")
    return response


async def fetch_optional_text(url: str) -> str | None:
    """The text at ``url``; None on HTTP 404 (a file the model does not have)."""
    import js

    try:
        response = await js.fetch(url)
    except Exception as exc:  # noqa: BLE001
        raise FetchError(f"could not fetch {url}: {exc}") from None
    if response.status == 404:
        return None
    if not response.ok:
        raise FetchError(f"could not fetch {url}: HTTP {response.status}")
    return str(await response.text())


async def fetch_verified(url: str, name: str, nbytes: int | None = None, md5sum: str | None = None,
                         on_bytes: OnBytes | None = None, signal: Any = None) -> Any:
    """The body of ``url`` as a JS ArrayBuffer, checked against ``nbytes`` / ``md5sum``.

    ``on_bytes(n)`` is called as chunks arrive (progress). Raises FetchError when the transfer
    fails and CacheIntegrityError when the body does not match the index.
    """
    import js

    response = await fetch_response(url, signal)
    verifier = ShardVerifier(name, url, nbytes, md5sum)
    body = response.body
    if body is None:  # no streaming body (should not happen for GET): take it whole
        data = await response.arrayBuffer()
        _verify_whole(verifier, data)
        return data
    reader = body.getReader()
    parts: list[Any] = []
    try:
        while True:
            try:
                step = await reader.read()
            except Exception as exc:  # noqa: BLE001 - the connection dropped mid-body
                raise FetchError(f"the download of {name} ({url}) was cut after {verifier.received} bytes: {exc}; "
                                 "nothing of it was stored, load the model again to retry.") from None
            if step.done:
                break
            chunk = step.value
            if verifier.wants_bytes:
                verifier.update(chunk.to_bytes())
            else:
                verifier.update_length(int(chunk.byteLength))
            parts.append(chunk)
            if on_bytes is not None:
                on_bytes(int(chunk.byteLength))
        verifier.finish()
    except (CacheIntegrityError, FetchError):
        try:
            await reader.cancel()
        except Exception:  # noqa: BLE001 - already errored
            pass
        raise
    return _join(js, parts, verifier.received)


def _verify_whole(verifier: ShardVerifier, data: Any) -> None:
    import js

    view = js.Uint8Array.new(data)
    step = 4 << 20
    for start in range(0, int(view.byteLength), step):
        piece = view.subarray(start, start + step)
        if verifier.wants_bytes:
            verifier.update(piece.to_bytes())
        else:
            verifier.update_length(int(piece.byteLength))
    verifier.finish()


def _join(js: Any, parts: list[Any], total: int) -> Any:
    """One ArrayBuffer holding ``parts`` (Uint8Arrays) back to back, copied in JS."""
    if len(parts) == 1 and int(parts[0].byteOffset) == 0 and int(parts[0].buffer.byteLength) == total:
        return parts[0].buffer
    out = js.Uint8Array.new(total)
    offset = 0
    for part in parts:
        out.set(part, offset)
        offset += int(part.byteLength)
    return out.buffer
