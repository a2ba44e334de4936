"""Browser-test plumbing on the product's own server (`webrt.tools.serve.ArtifactServer`) and
Chromium launcher (`webrt.tools.chromium`), plus the one thing tests add: injected faults."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

from webrt.tools.chromium import chromium_available
from webrt.tools.chromium import chromium_page as chromium
from webrt.tools.paths import find_node_package
from webrt.tools.serve import ArtifactHandler, ArtifactServer

__all__ = ["FAULTS", "StaticServer", "TVMJS_DIR", "chromium", "chromium_available", "tvmjs_page"]

#: TVM's JS runtime ("tvmjs"): UMD bundle that defines `globalThis.tvmjs`.
TVMJS_DIR = find_node_package("@mlc-ai/web-runtime") / "lib"

#: Faults a test can inject per URL path (`StaticServer.faults`): "abort" sends the headers and
#: half the body, then drops the connection; "corrupt" flips one byte in the middle (same size);
#: "404" / "500" answer with that status.
FAULTS = ("abort", "corrupt", "404", "500")


class _FaultyHandler(ArtifactHandler):
    """The product's handler, with the server's `faults` applied before answering."""

    state: StaticServer

    def send_found(self, url_path: str, found: bytes | Path | None, send_body: bool) -> None:
        fault = self.state.faults.get(url_path)
        if fault is None:
            super().send_found(url_path, found, send_body)
            return
        if fault in ("404", "500"):
            self.send_error(int(fault))
            return
        body = found if isinstance(found, bytes) else (found.read_bytes() if found is not None else b"")
        if not body:
            self.send_error(404)
            return
        self.send_ok_headers(self.content_type(url_path), len(body))
        mid = len(body) // 2
        if fault == "corrupt":
            self.wfile.write(body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1:])
        elif fault == "abort":
            self.wfile.write(body[:mid])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
        else:
            raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")


class StaticServer(ArtifactServer):
    """`ArtifactServer` for test pages (inline scripts: no CSP) with per-path `faults`."""

    handler_class = _FaultyHandler

    def __init__(self, routes: Mapping[str, Path] | None = None, files: Mapping[str, bytes | str] | None = None):
        super().__init__(routes, files, csp=None)
        #: URL path -> fault (see FAULTS), applied to every request of that path until removed
        self.faults: dict[str, str] = {}


def tvmjs_page(title: str = "webrt test") -> str:
    """A minimal HTML page that loads tvmjs from the `/tvmjs/` route."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><script src='/tvmjs/index.js'></script></head><body></body></html>"
    )
