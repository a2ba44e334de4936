"""Test plumbing for webrt's Python runtime on Pyodide in headless Chromium.

`PyodidePage` serves the repo's boot assets (`webrt/wasm/js/`), Pyodide (`node_modules/pyodide`),
a zip of webrt's pure-Python packages built on the fly, and any extra folders (model artifacts),
boots webrt in the page through `webrt/wasm/js/boot.js`, and runs Python snippets there with
bounded timeouts::

    with PyodidePage(routes={"/model/": model_dir}) as page:
        page.run("import webrt.wasm")
        value = page.run("1 + 1")            # the value of the last expression, converted to JSON

Snippets run with `pyodide.runPythonAsync` (so top-level `await` and `run_sync` work) in one
shared global namespace per page.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import browser_util
from webrt.tools.chromium import Page
from webrt.tools.paths import BOOT_DIR, find_node_package

PYODIDE_DIR = find_node_package("pyodide")
RUNTIME_DIR = BOOT_DIR
BUNDLE_URL = "/webrt-bundle.zip"


def pyodide_available() -> bool:
    """Chromium, Playwright and the npm pyodide package are all here."""
    return browser_util.chromium_available() and (PYODIDE_DIR / "pyodide.mjs").is_file()


def require_webgpu_build() -> None:
    """Skip, naming what is missing, unless WebGPU libraries can be built (emcc) and run here."""
    import shutil

    import pytest

    if not pyodide_available():
        pytest.skip("chromium, playwright or npm pyodide is not installed")
    if shutil.which("emcc") is None:
        pytest.skip("emcc is not installed (needed to build the webgpu library)")


def tiny_webgpu_artifacts(quantization: str = "q0f32", devices: tuple[str, ...] = ("cpu", "webgpu")) -> Any:
    """The tiny Llama built for ``devices`` (model_factory.LIBRARY_BUILDS keys), or a skip naming what
    is missing to build/run it."""
    require_webgpu_build()
    import model_factory

    return model_factory.tiny_artifacts("llama2", quantization, devices=devices)


def smollm2_webgpu_artifacts(devices: tuple[str, ...]) -> Any:
    """The real SmolLM2 (q4f32_1) built for ``devices``, or a skip naming what is missing."""
    import pytest

    require_webgpu_build()
    import model_factory

    try:
        model_factory.smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return model_factory.smollm2_artifacts("q4f32_1", devices=devices)


def bundle_bytes() -> bytes:
    """The zip of webrt's pure-Python packages that the page unpacks into Pyodide."""
    from webrt.tools.bundle import build_bundle

    return build_bundle()


def page_html(worker: bool = False) -> str:
    """A page that boots webrt (main thread, or in a module worker) and sets `window.webrt`."""
    opts = json.dumps({"pyodideURL": "/pyodide/", "bundleURL": BUNDLE_URL})
    entry = "bootWorker" if worker else "bootMain"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>webrt</title></head><body>"
        "<script type='module'>\n"
        f"import {{ {entry} }} from '/runtime/boot.js';\n"
        f"window.webrtBoot = {entry}({opts}).then((rt) => {{ window.webrt = rt; return true; }});\n"
        "</script></body></html>"
    )


class PyodidePage:
    """A Chromium page running webrt's Python runtime (see module docstring)."""

    def __init__(self, routes: Mapping[str, Path] | None = None, worker: bool = False,
                 boot_timeout_s: float = 90, isolation: bool = True):
        self.routes = {"/pyodide/": PYODIDE_DIR, "/runtime/": RUNTIME_DIR, **(routes or {})}
        self.worker = worker
        #: serve the page cross-origin isolated (COOP/COEP), as `webrt serve` does
        self.isolation = isolation
        self.boot_timeout_s = boot_timeout_s
        self._stack = contextlib.ExitStack()
        self.browser: Page | None = None
        self.server: browser_util.StaticServer | None = None

    def __enter__(self) -> PyodidePage:
        files = {"/": page_html(self.worker), BUNDLE_URL: bundle_bytes()}
        try:
            self.server = self._stack.enter_context(browser_util.StaticServer(self.routes, files, isolation=self.isolation))
            self.browser = self._stack.enter_context(browser_util.chromium())
            self.reload()
        except BaseException:
            self._stack.close()
            raise
        return self

    def reload(self) -> None:
        """(Re)load the page and boot webrt again: a fresh Pyodide and GPU device, the same
        browser profile (Cache Storage and IndexedDB persist)."""
        assert self.browser is not None and self.server is not None
        self.browser.goto(self.server.url("/"))
        self.browser.evaluate("async () => await window.webrtBoot", timeout_s=self.boot_timeout_s)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def console(self) -> list[str]:
        assert self.browser is not None
        return list(self.browser.console)

    def run(self, code: str, timeout_s: float = 60) -> Any:
        """Run Python `code` in the page; return its last expression as JSON-able data.

        A Python exception comes back as RuntimeError carrying its traceback.
        """
        assert self.browser is not None
        result = self.browser.evaluate(
            "async (code) => await window.webrt.runPython(code)", code, timeout_s=timeout_s
        )
        if result.get("error"):
            raise RuntimeError(f"Python in the page failed:\n{result['error']}")
        return result.get("value")

    def evaluate(self, script: str, arg: Any = None, timeout_s: float = 60) -> Any:
        """Run a JS function expression in the page (bounded)."""
        assert self.browser is not None
        return self.browser.evaluate(script, arg, timeout_s=timeout_s)


@contextlib.contextmanager
def pyodide_page(routes: Mapping[str, Path] | None = None, worker: bool = False) -> Iterator[PyodidePage]:
    """Context manager form of `PyodidePage`."""
    with PyodidePage(routes, worker=worker) as page:
        yield page


#: Node script for `run_in_node_pyodide`: Pyodide with webrt's browser bundle on sys.path, the
#: given folders mounted, then the Python file main.py run with top-level await allowed.
_NODE_RUNNER = r"""
import { loadPyodide } from "%(pyodide)s";
import { readFileSync } from "node:fs";
const py = await loadPyodide();
py.unpackArchive(new Uint8Array(readFileSync("%(bundle)s")), "zip", { extractDir: "/bundle" });
for (const [dir, root] of %(mounts)s) {
  py.FS.mkdirTree(dir);
  py.FS.mount(py.FS.filesystems.NODEFS, { root }, dir);
}
py.runPython("import sys; sys.path.insert(0, '/bundle')");
try {
  const result = await py.runPythonAsync(readFileSync("%(main)s", "utf8"));
  console.log("RESULT " + py.runPython("import sys; sys.version.split()[0]") + " " + result);
} catch (error) {
  console.error(String(error.message).slice(-3000));
  process.exit(3);
}
"""


def run_in_node_pyodide(code: str, work: Path, mounts: Mapping[str, Path] | None = None,
                        timeout_s: float = 300) -> tuple[str, str]:
    """Run Python `code` (top-level await allowed; its last expression, a string, is the result)
    under Pyodide in Node, importing webrt from the browser bundle, with `mounts` (folder in
    Pyodide -> folder here) mounted. Returns (Python version, result); skips without node."""
    import shutil
    import subprocess

    import pytest

    from webrt.tools.bundle import build_bundle

    node = shutil.which("node")
    if node is None or not (PYODIDE_DIR / "pyodide.mjs").is_file():
        pytest.skip("node or npm pyodide is missing")
    work.mkdir(parents=True, exist_ok=True)
    (work / "bundle.zip").write_bytes(build_bundle())
    (work / "main.py").write_text(code)
    script = work / "run.mjs"
    script.write_text(_NODE_RUNNER % {
        "pyodide": (PYODIDE_DIR / "pyodide.mjs").as_posix(), "bundle": (work / "bundle.zip").as_posix(),
        "main": (work / "main.py").as_posix(),
        "mounts": json.dumps([[dir_, Path(root).resolve().as_posix()] for dir_, root in (mounts or {}).items()])})
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    _, version, result = line.split(" ", 2)
    return version, result
