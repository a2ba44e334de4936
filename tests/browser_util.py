"""Browser-test plumbing: a static file server and headless Chromium with WebGPU.

Chromium is started by us (so the flags are exactly the ones that give WebGPU on SwiftShader
here, with a fresh profile) and driven by Playwright over CDP. `BrowserSession.evaluate` bounds
every call: inside the page with a JS timeout, and from Python with a watchdog that kills the
browser if the page is stuck in synchronous code.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import webrt.tools.chromium as bench_browser

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
#: TVM's JS runtime ("tvmjs"): UMD bundle that defines `globalThis.tvmjs`.
TVMJS_DIR = REPO_ROOT / "node_modules" / "@mlc-ai" / "web-runtime" / "lib"
#: The flags that give WebGPU on SwiftShader here (shared with `webrt bench`).
CHROMIUM_FLAGS: tuple[str, ...] = bench_browser.CHROMIUM_FLAGS
_MIME = {
    ".wasm": "application/wasm",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
}


def chromium_available() -> bool:
    """Whether the Chromium binary and Python Playwright are installed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


#: Faults a test can inject per URL path (`StaticServer.faults`): "abort" sends the headers and
#: half the body, then drops the connection; "corrupt" flips one byte in the middle (same size);
#: "404" / "500" answer with that status.
FAULTS = ("abort", "corrupt", "404", "500")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves in-memory files first, then the longest matching directory route."""

    def __init__(self, *args: Any, routes: Mapping[str, Path], files: Mapping[str, bytes],
                 log: list[str] | None = None, faults: dict[str, str] | None = None, **kwargs: Any):
        self.routes, self.files = routes, files
        self.request_log = log if log is not None else []
        self.faults = faults if faults is not None else {}
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        url_path = path.split("?", 1)[0].split("#", 1)[0]
        for prefix in sorted(self.routes, key=len, reverse=True):
            if url_path.startswith(prefix):
                rel = url_path[len(prefix):].lstrip("/")
                root = self.routes[prefix].resolve()
                target = (root / rel).resolve()
                if target == root or root in target.parents:
                    return str(target)
        return str(Path(os.devnull) / "missing")

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        url_path = self.path.split("?", 1)[0]
        self.request_log.append(url_path)
        fault = self.faults.get(url_path)
        if fault is not None:
            self._serve_fault(url_path, fault)
            return
        if url_path in self.files:
            body = self.files[url_path]
            self.send_response(200)
            ctype = _MIME[".html"] if url_path.endswith("/") else self.guess_type(url_path)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def _serve_fault(self, url_path: str, fault: str) -> None:
        if fault in ("404", "500"):
            self.send_error(int(fault))
            return
        path = Path(self.translate_path(url_path))
        body = self.files.get(url_path) or (path.read_bytes() if path.is_file() else b"")
        if not body:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", self.guess_type(url_path))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "corrupt":
            mid = len(body) // 2
            self.wfile.write(body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1:])
        elif fault == "abort":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
        else:
            raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")

    def guess_type(self, path: str | os.PathLike[str]) -> str:
        return _MIME.get(Path(str(path)).suffix, None) or super().guess_type(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class StaticServer:
    """A threaded HTTP server on 127.0.0.1 (a secure context: WebGPU, Cache Storage work).

    `routes` maps URL prefixes to directories; `files` maps exact URL paths to contents.
    """

    def __init__(self, routes: Mapping[str, Path] | None = None,
                 files: Mapping[str, bytes | str] | None = None):
        self.routes = {k: Path(v) for k, v in (routes or {}).items()}
        self.files = {"/favicon.ico": b""}
        for path, body in (files or {}).items():
            self.files[path] = body.encode() if isinstance(body, str) else body
        #: every GET's URL path, in order (tests count network fetches with it)
        self.requests: list[str] = []
        #: URL path -> fault (see FAULTS), applied to every GET of that path until removed
        self.faults: dict[str, str] = {}
        handler = functools.partial(_Handler, routes=self.routes, files=self.files, log=self.requests,
                                    faults=self.faults)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def count(self, prefix: str) -> int:
        """How many GETs so far were for paths starting with `prefix`."""
        return sum(1 for p in list(self.requests) if p.startswith(prefix))

    def __enter__(self) -> StaticServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class BrowserSession:
    """A Chromium process, its Playwright connection and one page."""

    def __init__(self, proc: subprocess.Popen[bytes], playwright: Any, browser: Any, page: Any):
        self.proc, self.playwright, self.browser, self.page = proc, playwright, browser, page
        self.console: list[str] = []
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda err: self.console.append(f"pageerror: {err}"))

    def goto(self, url: str, timeout_s: float = 60) -> None:
        self.page.goto(url, timeout=timeout_s * 1000, wait_until="load")

    def evaluate(self, script: str, arg: Any = None, timeout_s: float = 120) -> Any:
        """Run `script` (a JS function expression, may be async) on `arg`, bounded in time.

        Raises TimeoutError when it takes longer than `timeout_s`.
        """
        ms = int(timeout_s * 1000)
        wrapper = (
            "async ([arg, ms]) => {"
            f"  const fn = ({script});"
            "  let timer;"
            "  const limit = new Promise((_, reject) => { timer = setTimeout("
            "    () => reject(new Error(`webrt-timeout after ${ms} ms`)), ms); });"
            "  try { return await Promise.race([Promise.resolve().then(() => fn(arg)), limit]); }"
            "  finally { clearTimeout(timer); }"
            "}"
        )
        fired = threading.Event()

        def kill() -> None:  # the page is stuck in synchronous JS: end the browser
            fired.set()
            self._kill()

        watchdog = threading.Timer(timeout_s + 15, kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            return self.page.evaluate(wrapper, [arg, ms])
        except Exception as exc:
            if fired.is_set() or "webrt-timeout" in str(exc):
                raise TimeoutError(f"page.evaluate exceeded {timeout_s} s: {exc}") from exc
            raise
        finally:
            watchdog.cancel()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.close()
        with contextlib.suppress(Exception):
            self.playwright.stop()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
                self.proc.wait(timeout=10)


def _wait_for_devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    return bench_browser.devtools_port(profile, proc, timeout_s)


@contextlib.contextmanager
def chromium(extra_args: tuple[str, ...] = (), startup_timeout_s: float = 60) -> Iterator[
        BrowserSession]:
    """Start headless Chromium with WebGPU and a fresh profile; yield a session with one page."""
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(prefix="webrt-chromium-"))
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, *extra_args, f"--user-data-dir={profile}",
           "--remote-debugging-port=0", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    pw = None
    session: BrowserSession | None = None
    try:
        port = _wait_for_devtools_port(profile, proc, startup_timeout_s)
        pw = sync_playwright().start()
        browser = pw.chromium.connect_over_cdp(f"http://127.0.0.1:{port}",
                                               timeout=startup_timeout_s * 1000)
        context = browser.contexts[0] if browser.contexts else browser.new_context()
        page = context.pages[0] if context.pages else context.new_page()
        session = BrowserSession(proc, pw, browser, page)
        yield session
    finally:
        if session is not None:
            session.close()
        else:
            if pw is not None:
                with contextlib.suppress(Exception):
                    pw.stop()
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def tvmjs_page(title: str = "webrt test") -> str:
    """A minimal HTML page that loads tvmjs from the `/tvmjs/` route."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><script src='/tvmjs/index.js'></script></head><body></body></html>"
    )
