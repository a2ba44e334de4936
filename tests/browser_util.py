"""Browser-test plumbing on the product's own server (`webrt.tools.serve.ArtifactServer`) and
Chromium launcher (`webrt.tools.chromium`), plus the one thing tests add: injected faults."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from pathlib import Path

from webrt.tools.chromium import chromium_available
from webrt.tools.chromium import chromium_page as chromium
from webrt.tools.paths import find_node_package
from webrt.tools.serve import ArtifactHandler, ArtifactServer

__all__ = ["FAULTS", "StaticServer", "TVMJS_DIR", "chromium", "chromium_available", "tvmjs_page"]

#: TVM's JS runtime ("tvmjs"): UMD bundle that defines `globalThis.tvmjs`.
TVMJS_DIR = find_node_package("@mlc-ai/web-runtime") / "lib"

#: Faults a test can inject per URL path (`StaticServer.inject` / `StaticServer.faults`):
#: "abort" sends the headers and half the body, then drops the connection; "corrupt" flips one
#: byte in the middle (same size); "truncate" sends the first half as if it were the whole file
#: (a Content-Length to match); "stall_body" sends the headers and half the body, then nothing;
#: "stall" reads the request and answers nothing; "html" answers 200 with an HTML page (what a
#: captive portal or a misconfigured host sends); "404" / "500" / "503" answer with that status.
#: A stall lasts until the client gives up or the server stops.
FAULTS = ("abort", "corrupt", "truncate", "stall_body", "stall", "html", "404", "500", "503")
HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Sign in to the network</title></head>"
             b"<body><form action='/login'>Accept the terms to continue</form></body></html>")


class _FaultyHandler(ArtifactHandler):
    """The product's handler, with the server's `faults` applied before answering."""

    state: StaticServer

    def send_found(self, url_path: str, found: bytes | Path | None, send_body: bool) -> None:
        fault = self.state.take_fault(url_path)
        if fault is None:
            super().send_found(url_path, found, send_body)
            return
        if fault in ("404", "500", "503"):
            self.send_error(int(fault))
            return
        if fault == "stall":
            self._stall()
            return
        if fault == "html":
            self.send_ok_headers("text/html; charset=utf-8", len(HTML_PAGE))
            self.wfile.write(HTML_PAGE)
            return
        body = found if isinstance(found, bytes) else (found.read_bytes() if found is not None else b"")
        if not body:
            self.send_error(404)
            return
        mid = len(body) // 2
        if fault == "truncate":
            self.send_ok_headers(self.content_type(url_path), mid)
            self.wfile.write(body[:mid])
            return
        self.send_ok_headers(self.content_type(url_path), len(body))
        if fault == "corrupt":
            self.wfile.write(body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1:])
        elif fault in ("abort", "stall_body"):
            self.wfile.write(body[:mid])
            self.wfile.flush()
            if fault == "stall_body":
                self._stall()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
        else:
            raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")

    def _stall(self) -> None:
        """Send nothing more until the server stops (the client aborts long before)."""
        self.wfile.flush()
        self.state.stopping.wait()
        self.close_connection = True


class StaticServer(ArtifactServer):
    """`ArtifactServer` for test pages (inline scripts: no CSP) with per-path `faults`."""

    handler_class = _FaultyHandler

    def __init__(self, routes: Mapping[str, Path] | None = None, files: Mapping[str, bytes | str] | None = None,
                 isolation: bool = True):
        super().__init__(routes, files, csp=None, isolation=isolation)
        #: URL path -> fault (see FAULTS), applied to every request of that path until removed
        self.faults: dict[str, str] = {}
        #: URL path -> how many more requests get its fault (absent: every request)
        self.fault_times: dict[str, int] = {}
        #: set when the server stops: ends the stalls
        self.stopping = threading.Event()

    def inject(self, url_path: str, fault: str, times: int | None = None) -> None:
        """Answer the next ``times`` requests of ``url_path`` (every one if None) with ``fault``."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")
        with self.lock:
            self.faults[url_path] = fault
            if times is None:
                self.fault_times.pop(url_path, None)
            else:
                self.fault_times[url_path] = times

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self.fault_times.clear()

    def take_fault(self, url_path: str) -> str | None:
        """The fault for this request of ``url_path`` (counting it down), or None."""
        with self.lock:
            fault = self.faults.get(url_path)
            if fault is not None and url_path in self.fault_times:
                self.fault_times[url_path] -= 1
                if self.fault_times[url_path] <= 0:
                    del self.faults[url_path], self.fault_times[url_path]
            return fault

    def stop(self) -> None:
        self.stopping.set()
        super().stop()


def tvmjs_page(title: str = "webrt test") -> str:
    """A minimal HTML page that loads tvmjs from the `/tvmjs/` route."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><script src='/tvmjs/index.js'></script></head><body></body></html>"
    )
