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


def tiny_webgpu_artifacts() -> Any:
    """The tiny Llama built for webgpu and cpu, or a skip naming what is missing to build/run it."""
    import shutil

    import pytest

    if not pyodide_available():
        pytest.skip("chromium, playwright or npm pyodide is not installed")
    if shutil.which("emcc") is None:
        pytest.skip("emcc is not installed (needed to build the webgpu library)")
    import model_factory

    return model_factory.tiny_artifacts("llama2", devices=("cpu", "webgpu"))


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
                 boot_timeout_s: float = 90):
        self.routes = {"/pyodide/": PYODIDE_DIR, "/runtime/": RUNTIME_DIR, **(routes or {})}
        self.worker = worker
        self.boot_timeout_s = boot_timeout_s
        self._stack = contextlib.ExitStack()
        self.browser: Page | None = None
        self.server: browser_util.StaticServer | None = None

    def __enter__(self) -> PyodidePage:
        files = {"/": page_html(self.worker), BUNDLE_URL: bundle_bytes()}
        try:
            self.server = self._stack.enter_context(browser_util.StaticServer(self.routes, files))
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
