"""webrt's Python API in the browser: the same Engine as on CPython, with the WebGPU loader.

Runs in Pyodide inside a module worker (index.html). `webrt serve` publishes the models it
serves as an AppConfig at /app-config.json.
"""

import asyncio
import json

import js
from pyodide.ffi import to_js

from webrt import AppConfig, Engine
from webrt.wasm.loader import WebGPUModelLoader


def post(kind: str, text: str) -> None:
    """Send a line to the page (this worker's postMessage)."""
    js.postMessage(to_js({"event": {"kind": kind, "text": text}}, dict_converter=js.Object.fromEntries))


async def main() -> str:
    config = AppConfig.from_dict(json.loads(await (await js.fetch("/app-config.json")).text()))
    engine = Engine(config, loader=WebGPUModelLoader(config),
                    init_progress_callback=lambda report: post("progress", report.text))
    model_id = config.model_list[0].model_id
    await engine.reload(model_id)  # weights go to Cache Storage: the next visit downloads nothing

    chunks = await engine.chat.completions.create(
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=48, stream=True)
    async for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.get("content"):
            post("delta", chunk.choices[0].delta["content"])
    return f"{model_id}: {await engine.runtime_stats_text()}"


# WebGPU readbacks block with JSPI, which works from an asyncio task
await asyncio.create_task(main())
