"""Downloads in the browser: whole files as JS ArrayBuffers, verified while they stream in, retried.

`download` fetches one file under a `FetchPolicy`:

- every wait on the network is bounded: the response headers, then each chunk of the body, must
  come within ``stall_timeout_s``, else the request is aborted (``AbortController``);
- the body is read chunk by chunk (``ReadableStream`` reader); each chunk is counted and, when the
  index records an md5sum, hashed (`ShardVerifier`; a transient copy of the chunk is hashed, the
  data stays in JS), then the chunks are joined into one ArrayBuffer in JS, which is checked
  against the ModelRecord's integrity hash if it gives one (`check_sri_in_browser`). A cut
  connection, a short or long body or a bad hash raises before anything could be stored;
- an HTML page where a file was expected (a captive portal, a login page, a host that answers
  every path with its index page) is refused by its Content-Type or its first bytes;
- transient faults are retried, up to ``attempts`` tries with exponential backoff: a network
  error, a stalled or cut transfer, HTTP 5xx / 408 / 429, and a size or hash mismatch (once: the
  same mismatch twice is the server's file, not the transfer). A 404, another 4xx or an HTML page
  is not retried. The last error names the file, its URL and the tries.

Pyodide only (``js``), except `FetchPolicy`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from webrt.errors import CacheIntegrityError, FetchError, ModelConfigError
from webrt.ndarray_cache.integrity import check_sri_in_browser
from webrt.ndarray_cache.store import decode_text
from webrt.ndarray_cache.verify import ShardVerifier

OnBytes = Callable[[int], None]

#: HTTP statuses worth another try (server trouble, rate limits), besides network errors.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<!--")


@dataclass(frozen=True)
class FetchPolicy:
    """How hard a download tries: ``attempts`` tries in all, waiting ``backoff_s`` before the
    second and twice as long before each next (at most ``max_backoff_s``); a request that gets no
    bytes for ``stall_timeout_s`` is aborted (and retried)."""

    attempts: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 8.0
    stall_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool) or self.attempts < 1:
            raise ModelConfigError(f"FetchPolicy.attempts must be an integer >= 1, got {self.attempts!r}")
        for name in ("backoff_s", "max_backoff_s", "stall_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ModelConfigError(f"FetchPolicy.{name} must be a finite number of seconds >= 0, got {value!r}")
        if self.stall_timeout_s == 0:
            raise ModelConfigError("FetchPolicy.stall_timeout_s must be > 0 (every wait on the network is bounded)")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


DEFAULT_POLICY = FetchPolicy()


@dataclass(frozen=True)
class Expected:
    """What a download must be: its size and md5 (from the tensor-cache index), its SRI hash (from
    ModelRecord.integrity), and how a mismatch of the SRI hash is handled ("error" / "warn")."""

    nbytes: int | None = None
    md5sum: str | None = None
    sri: str | None = None
    on_failure: str = "error"


class _Transient(FetchError):
    """A fault worth another try (see the module docstring)."""


class _NotFound(FetchError):
    """HTTP 404."""


async def download(url: str, name: str, expected: Expected = Expected(), policy: FetchPolicy = DEFAULT_POLICY,
                   on_bytes: OnBytes | None = None, optional: bool = False) -> Any:
    """The body of ``url`` as a JS ArrayBuffer, checked against ``expected``, with retries.

    ``name`` is the file's name in messages. ``on_bytes(n)`` is called as chunks arrive (progress;
    a failed try reports its bytes back as a negative count). With ``optional``, a 404 gives None.
    Raises FetchError when the transfer fails, CacheIntegrityError (IntegrityError for the SRI hash)
    when the body does not match.
    """
    last_mismatch: str | None = None
    for attempt in range(1, policy.attempts + 1):
        got = 0

        def count(n: int) -> None:
            nonlocal got
            got += n
            if on_bytes is not None:
                on_bytes(n)

        try:
            return await _download_once(url, name, expected, policy, count)
        except _NotFound:
            if optional:
                return None
            raise FetchError(f"{name} was not found at {url} (HTTP 404); check that the ModelRecord's URLs "
                             "(model, model_lib) point at the served files.") from None
        except CacheIntegrityError as exc:
            if str(exc) == last_mismatch or attempt == policy.attempts:
                raise
            last_mismatch = str(exc)
        except _Transient as exc:
            if attempt == policy.attempts:
                raise FetchError(f"could not download {name} from {url}: {exc} ({policy.attempts} tries). Nothing of "
                                 "it was stored; check the network or the server, then load the model again "
                                 "(the files already cached are kept).") from None
        if got and on_bytes is not None:
            on_bytes(-got)  # this try's bytes are thrown away
        await asyncio.sleep(policy.backoff(attempt))
    raise AssertionError("unreachable")


async def _bounded(awaitable: Any, seconds: float, controller: Any, what: str) -> Any:
    """``await awaitable`` for at most ``seconds``; on time-out abort the request and raise _Transient."""
    try:
        return await asyncio.wait_for(_as_future(awaitable), seconds)
    except asyncio.TimeoutError:
        controller.abort()
        raise _Transient(f"the server stalled: {what} within {seconds:g} s, the request was aborted") from None


async def _as_future(awaitable: Any) -> Any:
    return await awaitable


async def _download_once(url: str, name: str, expected: Expected, policy: FetchPolicy, on_bytes: OnBytes) -> Any:
    import js
    from pyodide.ffi import to_js

    controller = js.AbortController.new()
    options = to_js({"signal": controller.signal}, dict_converter=js.Object.fromEntries)
    try:
        response = await _bounded(js.fetch(url, options), policy.stall_timeout_s, controller, "no response")
    except _Transient:
        raise
    except Exception as exc:  # noqa: BLE001 - a JS TypeError (network error)
        raise _Transient(f"the request failed ({exc})") from None
    status = int(response.status)
    if status == 404:
        raise _NotFound(url)
    if not response.ok:
        if status in RETRY_STATUSES:
            raise _Transient(f"HTTP {status}")
        raise FetchError(f"could not download {name} from {url}: HTTP {status}; check that the ModelRecord's "
                         "URLs point at the served files and that the server lets this page read them.")
    content_type = str(response.headers.get("Content-Type") or "")
    if _is_html_type(content_type) and not name.endswith((".html", ".htm")):
        controller.abort()
        raise FetchError(_html_message(name, url, f"Content-Type {content_type}"))
    checks = _Checks(name, url, expected)
    parts: list[Any] = []
    reader = response.body.getReader() if response.body is not None else None  # no body: 0 bytes
    try:
        while reader is not None:
            try:
                step = await _bounded(reader.read(), policy.stall_timeout_s, controller,
                                      f"no more bytes after the first {checks.received}")
            except _Transient:
                raise
            except Exception as exc:  # noqa: BLE001 - the connection dropped mid-body
                raise _Transient(f"the transfer was cut after {checks.received} bytes ({exc})") from None
            if step.done:
                break
            chunk = step.value
            checks.update(chunk, first=not parts)
            parts.append(chunk)
            on_bytes(int(chunk.byteLength))
        checks.finish()
    except BaseException:
        controller.abort()  # frees the connection; a no-op once the body was read
        raise
    data = _join(js, parts, checks.received)
    await check_sri_in_browser(data, expected.sri, name, url, expected.on_failure)
    return data


class _Checks:
    """Size and md5 (`ShardVerifier`) and the HTML sniff of one body, chunk by chunk."""

    def __init__(self, name: str, url: str, expected: Expected):
        self.name, self.url = name, url
        self.verifier = ShardVerifier(name, url, expected.nbytes, expected.md5sum)

    @property
    def received(self) -> int:
        return self.verifier.received

    def update(self, chunk: Any, first: bool) -> None:
        if first and not self.name.endswith((".html", ".htm")):
            if _looks_like_html(chunk.subarray(0, 64).to_bytes()):
                raise FetchError(_html_message(self.name, self.url, "its first bytes"))
        if self.verifier.wants_bytes:
            self.verifier.update(chunk.to_bytes())
        else:
            self.verifier.update_length(int(chunk.byteLength))

    def finish(self) -> None:
        self.verifier.finish()


def _is_html_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in ("text/html", "application/xhtml+xml")


def _looks_like_html(head: bytes) -> bool:
    return head[:64].lstrip().lower().startswith(_HTML_STARTS)


def _html_message(name: str, url: str, how: str) -> str:
    return (f"{url} answered with an HTML page instead of {name} (seen from {how}): a captive portal or login page, "
            "a host that answers unknown paths with its index page, or a wrong URL in the ModelRecord. Nothing was "
            "stored; sign in to the network or fix the URL, then load the model again.")


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


async def download_text(url: str, name: str, expected: Expected = Expected(), policy: FetchPolicy = DEFAULT_POLICY
                        ) -> str | None:
    """The UTF-8 text at ``url`` (see `download`); None on HTTP 404 (a file the model does not have)."""
    data = await download(url, name, expected, policy, optional=True)
    return None if data is None else decode_text(data)
