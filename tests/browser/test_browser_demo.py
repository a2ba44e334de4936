"""The chat demo (site/) served by `webrt serve`'s server, driven in headless Chromium.

The page boots webrt in a module worker, loads the tiny model from the served AppConfig with a
progress bar, and streams a greedy reply, which must equal the native Engine's reply. A
screenshot goes to $WEBRT_SCREENSHOT_DIR (default: pytest's tmp dir) for a look.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import browser_util
import pyodide_util

QUESTION = "hello world"
TIMEOUT_S = 180


def native_reply(art: Any, max_tokens: int) -> tuple[str, str]:
    from webrt.engine import AppConfig, Engine

    async def main() -> str:
        engine = Engine(AppConfig([{"model": str(art.model_dir), "model_id": "tiny", "model_lib": str(art.libs["cpu"])}]))
        await engine.reload("tiny")
        reply = await engine.chat.completions.create(messages=[{"role": "user", "content": QUESTION}],
                                                     temperature=0, max_tokens=max_tokens)
        return reply.choices[0].message.content, reply.choices[0].finish_reason

    return asyncio.run(main())


def test_serve_urls_headers_and_confinement() -> None:
    """What `webrt serve` answers (no browser): the AppConfig, the bundle, MIME types, headers,
    and nothing outside the served folders."""
    import urllib.error
    import urllib.request
    import zipfile
    from io import BytesIO

    import model_factory
    from webrt.errors import ModelConfigError
    from webrt.tools.serve import ServedModel, demo_server

    if shutil.which("emcc") is None:
        pytest.skip("emcc is not installed (needed to build the webgpu library)")
    art = model_factory.tiny_artifacts("llama2", devices=("cpu", "webgpu"))
    with pytest.raises(ModelConfigError, match="--device webgpu"):
        ServedModel(art.model_dir, art.libs["cpu"])
    model = ServedModel(art.model_dir, art.libs["webgpu"], "tiny")
    with pytest.raises(ModelConfigError, match="repeat"):
        demo_server([model, model])
    with demo_server([model]) as server:
        def get(path: str) -> tuple[int, Any, bytes]:
            """Status, headers (case-insensitive lookup), body."""
            try:
                with urllib.request.urlopen(server.url(path), timeout=30) as r:
                    return r.status, r.headers, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers, b""

        status, headers, body = get("/app-config.json")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"model_list": [{"model": "/models/tiny/", "model_id": "tiny",
                                                    "model_lib": f"/libs/tiny/{art.libs['webgpu'].name}",
                                                    "required_features": []}], "cache_backend": "cache"}
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin" and headers["Cache-Control"] == "no-cache"
        status, headers, body = get(f"/libs/tiny/{art.libs['webgpu'].name}")
        assert status == 200 and headers["Content-Type"] == "application/wasm" and body[:4] == b"\0asm"
        status, _, body = get("/models/tiny/resolve/main/tensor-cache.json")
        assert status == 200 and json.loads(body)["records"]
        names = zipfile.ZipFile(BytesIO(get("/webrt-bundle.zip")[2])).namelist()
        assert "webrt/wasm/loader.py" in names and "webrt/tools/serve.py" not in names
        assert get("/runtime/boot.js")[1]["Content-Type"] == "text/javascript"
        assert get("/")[0] == 200 and get("/chat.js")[0] == 200 and get("/app.py")[0] == 200
        assert get("/models/tiny/resolve/main/../../../../etc/passwd")[0] == 404
        assert get("/models/tiny/resolve/main/%2e%2e/%2e%2e/lib-cpu.so")[0] == 404
        assert get("/nothing-here")[0] == 404


@pytest.mark.browser
def test_demo_loads_the_tiny_model_and_streams_a_reply(tmp_path: Path) -> None:
    if not pyodide_util.pyodide_available() or shutil.which("emcc") is None:
        pytest.skip("chromium, playwright, npm pyodide or emcc is missing")
    import model_factory
    from webrt.tools.serve import ServedModel, demo_server

    art = model_factory.tiny_artifacts("llama2", devices=("cpu", "webgpu"))
    # the page caps replies (its max-tokens field); set to 12 here, as a user would
    expected, finish = native_reply(art, max_tokens=12)
    server = demo_server([ServedModel(art.model_dir, art.libs["webgpu"], "tiny-llama")])
    shots = Path(os.environ.get("WEBRT_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with server, browser_util.chromium() as browser:
        page = browser.page
        page.set_viewport_size({"width": 900, "height": 760})
        browser.goto(server.url("/"))
        browser.evaluate("async () => { await window.webrtDemo.ready; }", timeout_s=TIMEOUT_S)
        assert page.locator("#model option").all_inner_texts() == ["tiny-llama"]
        page.click("#load")
        page.wait_for_function("() => document.querySelector('#model').dataset.loaded === 'tiny-llama'",
                               timeout=TIMEOUT_S * 1000)
        status = page.inner_text("#status")
        assert "ready" in status and "files downloaded" in status
        assert page.eval_on_selector("#bar", "el => el.value") == 1
        assert page.input_value("#max-tokens") == "512"  # capped by default
        page.fill("#max-tokens", "12")
        page.fill("#temperature", "0")
        page.fill("#input", QUESTION)
        page.click("#send")
        page.wait_for_function("() => !document.querySelector('#stop').disabled || "
                               "document.querySelector('.msg.assistant')?.textContent", timeout=TIMEOUT_S * 1000)
        page.wait_for_function("() => document.querySelector('#stop').disabled && "
                               "window.webrtDemo.history.length === 2", timeout=TIMEOUT_S * 1000)
        page.screenshot(path=str(shots / "demo.png"))
        reply = page.inner_text(".msg.assistant")
        cut = page.eval_on_selector(".msg.assistant", "el => el.classList.contains('cut')")
        events: list[str] = page.evaluate("() => window.webrtDemo.events")
        stats = page.inner_text("#stats")
        errors = [m for m in browser.console if m.startswith("pageerror") or "Content Security Policy" in m]
    assert reply == expected.strip() or reply == expected
    assert cut == (finish == "length")
    assert events.count("delta") > 1  # streamed, not one block
    assert events.index("delta") < events.index("done")
    assert events.count("progress") >= 3
    assert "decode" in stats and "tok/s" in stats
    assert errors == []
    assert server.count("/models/tiny-llama/resolve/main/params_shard_") >= 1
    print(f"\ndemo reply: {reply!r}; screenshot: {shots / 'demo.png'}")
