"""Serve the chat demo and model artifacts on 127.0.0.1 (CPython side of ``webrt serve``).

URL layout (what `site/` and `examples/get-started/` expect)::

    /                              the page folder (site/ by default)
    /runtime/                      webrt/wasm/js: boot.js + worker.js (Pyodide + webrt in a worker), cpu_thread.js
    /pyodide/                      the npm pyodide package
    /webrt-bundle.zip              webrt's browser packages, zipped on start-up
    /app-config.json               an AppConfig with one record per served model
    /models/<id>/resolve/main/F    file F of a model folder (WebLLM appends resolve/main/ to record.model)
    /libs/<id>/<lib>.wasm          its WebGPU library

What is served, and nothing else:
- of a model folder, exactly the files a model needs: ``mlc-chat-config.json``, the tokenizer
  files it lists, ``tensor-cache.json`` / ``ndarray-cache.json`` and the shards they name; of the
  library's folder, the library file alone. The list is made once, at start-up.
- of the page, runtime and Pyodide folders, regular files inside the folder: no directory
  listings, no dotfiles or dot-folders, no symlink leading outside.

Headers: MIME types a browser insists on (``application/wasm`` for instantiateStreaming,
``text/javascript`` for module workers); ``Cache-Control: no-cache`` (the browser keeps model
files in Cache Storage itself); cross-origin isolation (COOP/COEP, so the page may use
SharedArrayBuffer); a strict Content-Security-Policy, ``X-Content-Type-Options: nosniff`` and
``Referrer-Policy: no-referrer``. Requests whose ``Host`` is not a name this server binds are
refused (DNS rebinding), idle connections are closed after `IDLE_TIMEOUT_S`, and HEAD answers
exactly as GET without the body. Only 127.0.0.1 is bound.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from typing import Any

from webrt.chat_config import CHAT_CONFIG_FILE
from webrt.errors import ModelConfigError, ToolchainError, WeightFileError
from webrt.ndarray_cache.format import INDEX_NAMES, TensorCacheIndex, is_plain_relative_path
from webrt.tools.paths import BOOT_DIR, default_site_dir, find_node_package

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
    ".txt": "text/plain; charset=utf-8",
    ".model": "application/octet-stream",
}
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
#: Each source the pages need, and why; everything else is refused (default-src 'none').
CSP_SOURCES: tuple[tuple[str, str], ...] = (
    ("default-src 'none'", "nothing unless listed below"),
    ("script-src 'self' 'wasm-unsafe-eval'",
     "the page's and the runtime's modules, Pyodide's loader; WebAssembly compilation of Pyodide's "
     "CPython and of the model library (no JS eval)"),
    ("worker-src 'self'", "the module worker that hosts Python (runtime/worker.js) and the CPU library's thread "
     "workers (runtime/cpu_thread.js)"),
    ("connect-src 'self'", "fetch of the bundle, Pyodide's files, the AppConfig, model files and libraries"),
    ("style-src 'self'", "the pages' style sheets"),
    ("img-src 'self' data:", "icons"),
    ("base-uri 'none'", "no <base> redirection of relative URLs"),
    ("form-action 'none'", "forms are handled in script, never submitted"),
    ("frame-ancestors 'none'", "no framing by other pages"),
)
CONTENT_SECURITY_POLICY = "; ".join(source for source, _why in CSP_SOURCES)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
#: Seconds a connection may stay silent before the server closes it.
IDLE_TIMEOUT_S = 30.0
#: The names this server answers to besides its address (``Host`` checking).
LOCAL_HOST_NAMES = ("127.0.0.1", "localhost")


#: How a model library's ``_metadata`` JSON starts (webrt writes ``model_type`` first, as MLC does).
_METADATA_START = b'{"model_type": '


#: A record's library fields: (the ``_metadata`` device, kernel variant if one is needed, the flags).
LIBRARY_BUILDS: dict[str, tuple[str, str | None, str]] = {
    "model_lib": ("webgpu", None, "--device webgpu"),
    "model_lib_cpu": ("wasm", None, "--device wasm"),
    "model_lib_fallback": ("webgpu", "fallback", "--device webgpu --kernels fallback"),
}


def _webrt_block(lib: Path) -> dict[str, Any]:
    """The ``webrt`` block of a library's ``_metadata`` ({} for another compiler's library)."""
    block = (library_metadata(lib) or {}).get("webrt")
    return block if isinstance(block, dict) else {}


def library_metadata(lib: Path) -> dict[str, Any] | None:
    """The ``_metadata`` JSON of a model library (.wasm), read from the bytes of its data section
    without running it (TVM stores the string as it is); None when the file holds none."""
    data = lib.read_bytes()
    decoder = json.JSONDecoder()
    at = data.find(_METADATA_START)
    while at >= 0:
        end = data.find(b"\0", at)
        try:
            found, _ = decoder.raw_decode(data[at:end if end > 0 else len(data)].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            found = None
        if isinstance(found, dict) and "params" in found:
            return found
        at = data.find(_METADATA_START, at + 1)
    return None


def _safe_relative(name: Any, where: Path, what: str) -> str:
    """`name` if it is a plain relative path inside the model folder and names no hidden file."""
    if not is_plain_relative_path(name) or any(part.startswith(".") for part in name.split("/")):
        raise WeightFileError(f"{where}: {what} {name!r} is not a file name inside the model folder (or names a "
                              f"hidden file); regenerate {where} with `webrt convert_weight` / `webrt gen_config`.")
    return name


def model_files(model_dir: Path) -> list[str]:
    """The files of `model_dir` a browser needs, relative to it: the chat config, the tokenizer
    files it lists, the tensor-cache index(es) and their shards. Raises if one is missing."""
    config_path = model_dir / CHAT_CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{config_path} cannot be read ({e}); run `webrt gen_config` into "
                              f"{model_dir}.") from None
    tokenizer_files = config.get("tokenizer_files", []) if isinstance(config, dict) else None
    if not isinstance(tokenizer_files, list):
        raise WeightFileError(f"{config_path}: tokenizer_files is not a list; run `webrt gen_config` again.")
    names = [CHAT_CONFIG_FILE, *(_safe_relative(n, config_path, "tokenizer file") for n in tokenizer_files)]
    indexes = [n for n in INDEX_NAMES if (model_dir / n).is_file()]
    if not indexes:
        raise WeightFileError(f"{model_dir} has no {INDEX_NAMES[0]}; run `webrt convert_weight` into it.")
    for index_name in indexes:
        index = TensorCacheIndex.loads((model_dir / index_name).read_text(), str(model_dir / index_name))
        names += [index_name, *(_safe_relative(s.data_path, model_dir / index_name, "dataPath")
                                for s in index.shards)]
    names = list(dict.fromkeys(names))
    for name in names:
        if not (model_dir / name).is_file():
            raise WeightFileError(f"{model_dir / name} is listed but missing; run `webrt convert_weight` "
                                  f"and `webrt gen_config` into {model_dir} again.")
    return names


@dataclass
class ServedModel:
    """One model folder + its WebGPU library, served under ``/models/<model_id>/``."""

    model_dir: Path
    model_lib: Path
    model_id: str = ""
    required_features: list[str] = field(default_factory=list)
    #: the browser's CPU library (``webrt compile --device wasm``), for pages without a usable GPU
    model_lib_cpu: Path | None = None
    #: the WebGPU library for fallback (software) adapters (``--kernels fallback``)
    model_lib_fallback: Path | None = None

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir).expanduser().resolve()
        self.model_lib = Path(self.model_lib).expanduser().resolve()
        names = {self.model_lib.name}
        for name, (*_, flags) in LIBRARY_BUILDS.items():
            lib = getattr(self, name)
            if name == "model_lib" or lib is None:
                continue
            lib = Path(lib).expanduser().resolve()
            setattr(self, name, lib)
            if lib.suffix != ".wasm" or not lib.is_file():
                raise ModelConfigError(f"{lib} is not a .wasm file; build the {name} library with "
                                       f"`webrt compile <model>/mlc-chat-config.json {flags} -o LIB.wasm`.")
            if lib.name in names:
                raise ModelConfigError(f"two libraries of {self.model_dir} are both named {lib.name}; "
                                       "give them different file names.")
            names.add(lib.name)
        config = self.model_dir / CHAT_CONFIG_FILE
        if not config.is_file():
            raise WeightFileError(f"{self.model_dir} has no {CHAT_CONFIG_FILE}; run `webrt convert_weight` and "
                                  "`webrt gen_config` into it.")
        if self.model_lib.suffix != ".wasm" or not self.model_lib.is_file():
            raise ModelConfigError(f"{self.model_lib} is not a .wasm file; build one with "
                                   "`webrt compile <model>/mlc-chat-config.json --device webgpu -o LIB.wasm`.")
        if not self.model_id:
            self.model_id = self.model_dir.name
        built = {name: _webrt_block(getattr(self, name)) for name in LIBRARY_BUILDS if getattr(self, name)}
        for name, block in built.items():
            device, kernels, flags = LIBRARY_BUILDS[name]
            if block and (block.get("device") != device or (kernels and block.get("kernels") != kernels)):
                made = f"--device {block.get('device')}" + (f" --kernels {block['kernels']}" if "kernels" in block else "")
                raise ModelConfigError(f"{getattr(self, name)} was compiled with `{made}`, but {name} needs a "
                                       f"`webrt compile ... {flags}` library; pass the file that was built so.")
        if not self.required_features:
            if built["model_lib"]:
                self.required_features = list(built["model_lib"].get("required_features") or [])
            else:  # another compiler's library: what its quantization implies
                quant = str(json.loads(config.read_text()).get("quantization", ""))
                self.required_features = ["shader-f16"] if "f16" in quant else []

    @property
    def model_url(self) -> str:
        return f"/models/{urllib.parse.quote(self.model_id)}/"

    def lib_url(self, lib: Path) -> str:
        return f"/libs/{urllib.parse.quote(self.model_id)}/{urllib.parse.quote(lib.name)}"

    def record(self) -> dict[str, Any]:
        """This model's ModelRecord (JSON), with URLs relative to the server root."""
        record: dict[str, Any] = {"model": self.model_url, "model_id": self.model_id,
                                  "model_lib": self.lib_url(self.model_lib), "required_features": self.required_features}
        for name in ("model_lib_cpu", "model_lib_fallback"):
            if getattr(self, name) is not None:
                record[name] = self.lib_url(getattr(self, name))
        return record

    def files(self) -> dict[str, Path]:
        """Exact URL path -> file, for every file this model needs and nothing else."""
        base = f"{self.model_url}resolve/main/"
        out = {base + urllib.parse.quote(name): self.model_dir / name for name in model_files(self.model_dir)}
        for lib in (self.model_lib, self.model_lib_cpu, self.model_lib_fallback):
            if lib is not None:
                out[self.lib_url(lib)] = lib
        return out


def app_config(models: list[ServedModel], cache_backend: str = "cache") -> dict[str, Any]:
    return {"model_list": [m.record() for m in models], "cache_backend": cache_backend}


def site_routes(page_dir: Path | None = None, pyodide_dir: Path | None = None) -> dict[str, Path]:
    """The demo's folder routes: the page at /, the boot scripts at /runtime/, Pyodide at /pyodide/."""
    page_dir = Path(page_dir).resolve() if page_dir else default_site_dir()
    pyodide_dir = Path(pyodide_dir).resolve() if pyodide_dir else find_node_package("pyodide")
    for what, path, fix in (("page", page_dir / "index.html", "pass --site DIR (a folder with index.html)"),
                            ("pyodide", pyodide_dir / "pyodide.mjs", "run `npm install pyodide` or pass --pyodide"),
                            ("runtime", BOOT_DIR / "boot.js", "reinstall webrt")):
        if not path.is_file():
            raise ToolchainError(f"{path} is missing ({what}); {fix}.")
    return {"/": page_dir, "/runtime/": BOOT_DIR, "/pyodide/": pyodide_dir}


def _folder_file(root: Path, rel: str) -> Path | None:
    """The regular file `rel` (URL-decoded, '/'-separated) under `root`, or None: no dot
    segments, no empty segments, nothing that resolves outside `root`; a folder gives its index.html."""
    if rel == "" or rel.endswith("/"):
        rel += "index.html"
    parts = rel.split("/")
    if any(p == "" or p.startswith(".") for p in parts):
        return None
    target = (root / Path(*parts)).resolve()
    if root not in target.parents or not target.is_file():
        return None
    return target


class ArtifactHandler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of in-memory files, exact file routes, then folder routes; nothing else."""

    server_version = "webrt"
    timeout = IDLE_TIMEOUT_S

    def __init__(self, *args: Any, server_state: ArtifactServer, **kwargs: Any):
        self.state = server_state
        self.timeout = server_state.idle_timeout_s
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        host = self.headers.get("Host", "")
        if host not in self.state.allowed_hosts:
            self.send_error(HTTPStatus.MISDIRECTED_REQUEST,
                            f"this server answers only to {' or '.join(sorted(self.state.allowed_hosts))}")
            return
        try:
            url_path = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0], errors="strict")
        except UnicodeDecodeError:
            url_path = ""
        if not url_path.startswith("/") or any(ord(c) < 32 or c == "\\" for c in url_path):
            self.send_error(HTTPStatus.BAD_REQUEST, "malformed path")
            return
        self.state.record_request(url_path)
        self.send_found(url_path, self.state.lookup(url_path), send_body)

    def send_found(self, url_path: str, found: bytes | Path | None, send_body: bool) -> None:
        """Answer with `found` (bytes or a file), or 404; the body only when `send_body`."""
        if found is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        ctype = MIME[".html"] if url_path.endswith("/") else self.content_type(url_path)
        if isinstance(found, bytes):
            self.send_ok_headers(ctype, len(found))
            if send_body:
                self.wfile.write(found)
            return
        try:
            stream = found.open("rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with stream:
            self.send_ok_headers(ctype, os.fstat(stream.fileno()).st_size)
            if send_body:
                shutil.copyfileobj(stream, self.wfile, 1 << 20)

    def send_ok_headers(self, ctype: str, length: int) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    @staticmethod
    def content_type(url_path: str) -> str:
        return MIME.get(PurePosixPath(url_path).suffix.lower(), "application/octet-stream")

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        for key, value in self.state.headers.items():
            self.send_header(key, value)
        super().end_headers()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.state.verbose:
            super().log_message(format, *args)


class ArtifactServer:
    """A threaded static server on 127.0.0.1.

    Looks a URL path up in `files` (exact path -> bytes), then `file_routes` (exact path ->
    file), then `routes` (URL prefix -> folder, see `_folder_file`). `requests` lists every
    request's path, in order. `csp` is the Content-Security-Policy sent with every answer (None
    for none: only for internal pages with inline scripts, such as the benchmark's).
    """

    handler_class: type[ArtifactHandler] = ArtifactHandler

    def __init__(self, routes: Mapping[str, Path] | None = None, files: Mapping[str, bytes | str] | None = None,
                 file_routes: Mapping[str, Path] | None = None, port: int = 0, isolation: bool = True,
                 csp: str | None = CONTENT_SECURITY_POLICY, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 verbose: bool = False):
        self.routes = {k: Path(v).resolve() for k, v in (routes or {}).items()}
        self.files = {k: (v.encode() if isinstance(v, str) else v) for k, v in (files or {}).items()}
        self.files.setdefault("/favicon.ico", b"")
        self.file_routes = {k: Path(v).resolve() for k, v in (file_routes or {}).items()}
        self.headers = {**(ISOLATION_HEADERS if isolation else {}), **SECURITY_HEADERS,
                        **({"Content-Security-Policy": csp} if csp else {})}
        self.idle_timeout_s, self.verbose = idle_timeout_s, verbose
        self.requests: list[str] = []
        self.lock = threading.Lock()
        handler = functools.partial(self.handler_class, server_state=self)
        try:
            self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as e:
            raise ToolchainError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); pass another --port "
                                 "(0 picks a free one).") from None
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.allowed_hosts = frozenset(f"{name}:{self.port}" for name in LOCAL_HOST_NAMES)
        self._thread: threading.Thread | None = None

    def lookup(self, url_path: str) -> bytes | Path | None:
        """What `url_path` serves: in-memory bytes, a file, or None."""
        if url_path in self.files:
            return self.files[url_path]
        if url_path in self.file_routes:
            return self.file_routes[url_path]
        for prefix in sorted(self.routes, key=len, reverse=True):
            if url_path.startswith(prefix):
                return _folder_file(self.routes[prefix], url_path[len(prefix):])
        return None

    def record_request(self, url_path: str) -> None:
        with self.lock:
            self.requests.append(url_path)

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def count(self, prefix: str, since: int = 0) -> int:
        """Requests of paths starting with `prefix` (from request number `since` on)."""
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


def model_file_routes(models: Iterable[ServedModel]) -> dict[str, Path]:
    """Every served model's files by URL path; model ids must not repeat."""
    ids = [m.model_id for m in models]
    if len(set(ids)) != len(ids):
        raise ModelConfigError(f"model ids {ids} repeat; give each --model its own --model-id.")
    return {url: path for m in models for url, path in m.files().items()}


def demo_server(models: list[ServedModel], port: int = 0, page_dir: Path | None = None,
                pyodide_dir: Path | None = None, cache_backend: str = "cache", verbose: bool = False) -> ArtifactServer:
    """The server of ``webrt serve``: the page, the runtime, the webrt bundle and the models."""
    from webrt.tools.bundle import build_bundle

    file_routes = model_file_routes(models)
    files = {"/webrt-bundle.zip": build_bundle(),
             "/app-config.json": json.dumps(app_config(models, cache_backend), indent=2)}
    return ArtifactServer(site_routes(page_dir, pyodide_dir), files, file_routes, port=port, verbose=verbose)
