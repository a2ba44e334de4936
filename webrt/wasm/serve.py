"""Serve the chat demo and model artifacts on 127.0.0.1 (CPython side of ``webrt serve``).

URL layout (what `site/` and `examples/get-started/` expect)::

    /                              the page folder (site/ by default)
    /runtime/                      site/runtime: boot.js + worker.js (Pyodide + webrt in a worker)
    /pyodide/                      the npm pyodide package
    /webrt-bundle.zip              webrt's pure-Python packages, zipped on start-up
    /app-config.json               an AppConfig with one record per served model
    /models/<id>/resolve/main/     a model folder (WebLLM appends resolve/main/ to record.model)
    /libs/<id>/<lib>.wasm          its WebGPU library

Headers: MIME types a browser insists on (``application/wasm`` for instantiateStreaming,
``text/javascript`` for module workers), ``Cache-Control: no-cache`` (the browser keeps model
files in Cache Storage itself), and cross-origin isolation (COOP/COEP) so the page may use
SharedArrayBuffer. Paths are confined to their folders; only 127.0.0.1 is bound.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webrt.errors import ModelConfigError, ToolchainError, WeightFileError

MIME = {
    ".wasm": "application/wasm",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css",
    ".py": "text/x-python; charset=utf-8",
    ".zip": "application/zip",
    ".bin": "application/octet-stream",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def repo_root() -> Path:
    """The folder holding the ``webrt`` package (a checkout, or site-packages)."""
    return Path(__file__).resolve().parents[2]


@dataclass
class ServedModel:
    """One model folder + its WebGPU library, served under ``/models/<model_id>/``."""

    model_dir: Path
    model_lib: Path
    model_id: str = ""
    required_features: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir).expanduser().resolve()
        self.model_lib = Path(self.model_lib).expanduser().resolve()
        config = self.model_dir / "mlc-chat-config.json"
        if not config.is_file():
            raise WeightFileError(f"{self.model_dir} has no mlc-chat-config.json; run `webrt convert_weight` and "
                                  "`webrt gen_config` into it.")
        if self.model_lib.suffix != ".wasm" or not self.model_lib.is_file():
            raise ModelConfigError(f"{self.model_lib} is not a .wasm file; build one with "
                                   "`webrt compile <model>/mlc-chat-config.json --device webgpu -o LIB.wasm`.")
        if not self.model_id:
            self.model_id = self.model_dir.name
        if not self.required_features:
            quant = str(json.loads(config.read_text()).get("quantization", ""))
            self.required_features = ["shader-f16"] if "f16" in quant else []

    def record(self) -> dict[str, Any]:
        """This model's ModelRecord (JSON), with URLs relative to the server root."""
        return {"model": f"/models/{self.model_id}/", "model_id": self.model_id,
                "model_lib": f"/libs/{self.model_id}/{self.model_lib.name}",
                "required_features": self.required_features}

    def routes(self) -> dict[str, Path]:
        return {f"/models/{self.model_id}/resolve/main/": self.model_dir,
                f"/libs/{self.model_id}/": self.model_lib.parent}


def app_config(models: list[ServedModel], cache_backend: str = "cache") -> dict[str, Any]:
    return {"model_list": [m.record() for m in models], "cache_backend": cache_backend}


def site_routes(models: list[ServedModel], page_dir: Path | None = None, pyodide_dir: Path | None = None
                ) -> dict[str, Path]:
    """The demo's URL prefix -> folder map (see the module docstring)."""
    root = repo_root()
    page_dir = Path(page_dir or root / "site").resolve()
    pyodide_dir = Path(pyodide_dir or root / "node_modules" / "pyodide").resolve()
    runtime_dir = root / "site" / "runtime"
    for what, path, fix in (("page", page_dir / "index.html", "pass --site DIR"),
                            ("pyodide", pyodide_dir / "pyodide.mjs", "run `npm ci` in the checkout or pass --pyodide"),
                            ("runtime", runtime_dir / "boot.js", "serve from a webrt checkout")):
        if not path.is_file():
            raise ToolchainError(f"{path} is missing ({what}); {fix}.")
    routes: dict[str, Path] = {"/": page_dir, "/runtime/": runtime_dir, "/pyodide/": pyodide_dir}
    for m in models:
        routes.update(m.routes())
    return routes


class _Handler(http.server.SimpleHTTPRequestHandler):
    """In-memory files first, then the longest matching route; nothing outside the folders."""

    def __init__(self, *args: Any, server_state: ArtifactServer, **kwargs: Any):
        self.state = server_state
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        url_path = urllib.parse.unquote(path.split("?", 1)[0].split("#", 1)[0])
        for prefix in sorted(self.state.routes, key=len, reverse=True):
            if url_path.startswith(prefix):
                root = self.state.routes[prefix]
                target = (root / url_path[len(prefix):].lstrip("/")).resolve()
                if target == root or root in target.parents:
                    return str(target)
        return str(Path("/nonexistent-webrt-path"))

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        url_path = self.path.split("?", 1)[0]
        with self.state.lock:
            self.state.requests.append(url_path)
        body = self.state.files.get(url_path)
        if body is None:
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Type", self.guess_type(url_path))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def guess_type(self, path: Any) -> str:
        return MIME.get(Path(str(path)).suffix.lower()) or super().guess_type(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        if self.state.isolation:
            for key, value in ISOLATION_HEADERS.items():
                self.send_header(key, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.state.verbose:
            super().log_message(format, *args)


class ArtifactServer:
    """A threaded static server on 127.0.0.1 over `routes` (URL prefix -> folder) and `files`
    (exact URL path -> bytes). `requests` lists every GET's path, in order."""

    def __init__(self, routes: Mapping[str, Path], files: Mapping[str, bytes | str] | None = None,
                 port: int = 0, isolation: bool = True, verbose: bool = False):
        self.routes = {k: Path(v).resolve() for k, v in routes.items()}
        self.files = {k: (v.encode() if isinstance(v, str) else v) for k, v in (files or {}).items()}
        self.files.setdefault("/favicon.ico", b"")
        self.isolation, self.verbose = isolation, verbose
        self.requests: list[str] = []
        self.lock = threading.Lock()
        handler = functools.partial(_Handler, server_state=self)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def count(self, prefix: str, since: int = 0) -> int:
        """GETs of paths starting with `prefix` (from request number `since` on)."""
        with self.lock:
            return sum(1 for p in self.requests[since:] if p.startswith(prefix))

    def start(self) -> ArtifactServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ArtifactServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def demo_server(models: list[ServedModel], port: int = 0, page_dir: Path | None = None,
                pyodide_dir: Path | None = None, cache_backend: str = "cache", verbose: bool = False) -> ArtifactServer:
    """The server of ``webrt serve``: the page, the runtime, the webrt bundle and the models."""
    from webrt.wasm.bundle import build_bundle

    ids = [m.model_id for m in models]
    if len(set(ids)) != len(ids):
        raise ModelConfigError(f"model ids {ids} repeat; give each --model its own --model-id.")
    files = {"/webrt-bundle.zip": build_bundle(repo_root()),
             "/app-config.json": json.dumps(app_config(models, cache_backend), indent=2)}
    return ArtifactServer(site_routes(models, page_dir, pyodide_dir), files, port=port, verbose=verbose)
