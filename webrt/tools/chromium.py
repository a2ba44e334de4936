"""Headless Chromium with WebGPU, driven by Playwright over CDP (benchmarks and tests).

The flags are the ones that give a WebGPU adapter in headless Chromium: without
``--enable-unsafe-webgpu`` ``requestAdapter()`` returns null on a machine whose only adapter is
Chromium's software one (SwiftShader); on a machine with a GPU the same flags give the real GPU.
Each session gets a fresh profile, so nothing is cached from a previous one. Every `evaluate` is
bounded twice: in the page by a JS timer, and from Python by a watchdog that ends the browser if
the page is stuck in synchronous code (a timer cannot fire then).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from webrt.errors import ToolchainError

CHROMIUM_FLAGS = (
    "--headless=new", "--enable-unsafe-webgpu", "--no-sandbox", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic",
)
#: Seconds the Python watchdog waits beyond an `evaluate`'s own limit before ending the browser.
WATCHDOG_GRACE_S = 15


def find_chromium() -> str:
    """The Chromium binary on PATH; a typed error naming the install command otherwise."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise ToolchainError("no Chromium found; install it (`apt-get install chromium`).")


def chromium_available() -> bool:
    """Whether a Chromium binary and Python Playwright are both installed."""
    try:
        import playwright.sync_api  # noqa: F401
        find_chromium()
    except (ImportError, ToolchainError):
        return False
    return True


class Page:
    """One page of a Chromium session: bounded `evaluate`, console messages, the browser process."""

    def __init__(self, page: Any, proc: subprocess.Popen[bytes]):
        self.page, self.proc = page, proc
        self.console: list[str] = []
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda err: self.console.append(f"pageerror: {err}"))

    def goto(self, url: str, timeout_s: float = 60) -> None:
        self.page.goto(url, timeout=timeout_s * 1000, wait_until="load")

    def evaluate(self, script: str, arg: Any = None, timeout_s: float = 600) -> Any:
        """Run a JS function expression (may be async) on `arg`; TimeoutError after `timeout_s`."""
        ms = int(timeout_s * 1000)
        wrapper = ("async ([arg, ms]) => { const fn = (" + script + "); let timer;"
                   " const limit = new Promise((_, reject) => { timer = setTimeout("
                   " () => reject(new Error(`webrt-timeout after ${ms} ms`)), ms); });"
                   " try { return await Promise.race([Promise.resolve().then(() => fn(arg)), limit]); }"
                   " finally { clearTimeout(timer); } }")
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            _end(self.proc, signal.SIGKILL)

        watchdog = threading.Timer(timeout_s + WATCHDOG_GRACE_S, kill)
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


def _end(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


@contextlib.contextmanager
def chromium_page(extra_args: tuple[str, ...] = (), startup_timeout_s: float = 60) -> Iterator[Page]:
    """A fresh-profile headless Chromium and one page; the browser is ended on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ToolchainError("webrt drives Chromium with Playwright: pip install playwright") from None
    profile = Path(tempfile.mkdtemp(prefix="webrt-chromium-"))
    proc = subprocess.Popen([find_chromium(), *CHROMIUM_FLAGS, *extra_args, f"--user-data-dir={profile}",
                             "--remote-debugging-port=0", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pw = browser = None
    try:
        port = devtools_port(profile, proc, startup_timeout_s)
        pw = sync_playwright().start()
        browser = pw.chromium.connect_over_cdp(f"http://127.0.0.1:{port}", timeout=startup_timeout_s * 1000)
        context = browser.contexts[0] if browser.contexts else browser.new_context()
        yield Page(context.pages[0] if context.pages else context.new_page(), proc)
    finally:
        if browser is not None:
            with contextlib.suppress(Exception):
                browser.close()
        if pw is not None:
            with contextlib.suppress(Exception):
                pw.stop()
        _end(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _end(proc, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """The DevTools port Chromium started with ``--remote-debugging-port=0`` writes into its profile."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ToolchainError(f"chromium exited at start-up with code {proc.returncode}")
        if port_file.is_file():
            first = port_file.read_text().splitlines()[:1]
            if first and first[0].strip().isdigit():
                return int(first[0])
        time.sleep(0.05)
    raise ToolchainError(f"chromium did not open its DevTools port within {timeout_s} s")
