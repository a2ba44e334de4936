"""Soak: 200 consecutive chat requests on the tiny model, natively and in one browser page.

Every answer must be well formed (text, a finish reason of "stop" or "length", usage within
max_tokens), and memory must stay flat: after a warm-up of 20 requests, the Python heap
(tracemalloc, natively and in Pyodide: it grows only as the tokenizer's bounded word cache
fills), the model library's wasm memory (not at all) and the live GPU buffers (a few small
pooled buffers for new prompt lengths) may not grow by more than the bounds below over the next
180 requests. Requests vary: plain and
streamed, greedy and sampled, fresh conversations and a growing one that is reset every 3 turns
(the tiny model has a 256-token window).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import model_factory
import pyodide_util

REQUESTS = 200
WARMUP = 20
#: Python heap growth allowed natively over the 180 requests after warm-up (bytes)
NATIVE_HEAP_BOUND = 512 * 1024
#: the same for Pyodide's Python heap (tracemalloc)
PYODIDE_HEAP_BOUND = 512 * 1024
#: live GPU buffer growth allowed: TVM's pooled allocator keeps a freed buffer for reuse by size,
#: so each new prompt length (at most the prefill chunk: 256 here) may add one small buffer
GPU_BYTES_BOUND = 64 * 1024
GPU_BUFFERS_BOUND = 256

# The request loop, shared by both hosts (natively it runs as is; in the page it is sent as text).
SOAK = r'''
import gc, sys

PROMPTS = ["hello world", "what is the capital of France?", "count to five", "tell me a story",
           "{\"a\": 1}", "def add(a, b):", "the quick brown fox", "1 2 3 4 5", "true false null", "why?"]


def well_formed(reply, stream_text=None):
    choice = reply["choices"][0]
    text = stream_text if stream_text is not None else choice["message"]["content"]
    return isinstance(text, str) and choice["finish_reason"] in ("stop", "length")


async def soak(engine, n, heap_size):
    history, levels, bad = [], [], []
    for i in range(n):
        if i % 3 == 0:
            history = []
        history.append({"role": "user", "content": PROMPTS[i % len(PROMPTS)]})
        options = {"max_tokens": 8, "temperature": 0 if i % 3 else 0.8, "seed": i}
        if i % 2:
            parts, finish = [], None
            stream = await engine.chat.completions.create(messages=history, stream=True, **options)
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.get("content") or "")
                    finish = chunk.choices[0].finish_reason or finish
            text = "".join(parts)
            ok = finish in ("stop", "length")
        else:
            reply = await engine.chat.completions.create(messages=history, **options)
            text = reply.choices[0].message.content
            ok = (reply.choices[0].finish_reason in ("stop", "length") and isinstance(text, str)
                  and reply.usage.completion_tokens <= 8)
        if not ok:
            bad.append(i)
        history.append({"role": "assistant", "content": text})
        gc.collect()
        levels.append(heap_size())
    return {"levels": levels, "bad": bad}
'''


def test_native_soak_keeps_memory_flat() -> None:
    from webrt.engine import AppConfig, Engine

    art = model_factory.tiny_artifacts("llama2")
    namespace: dict[str, Any] = {}
    exec(SOAK, namespace)  # noqa: S102 - this file's own code

    async def main() -> dict[str, Any]:
        engine = Engine(AppConfig([{"model": str(art.model_dir), "model_id": "tiny",
                                    "model_lib": str(art.libs["cpu"])}]))
        await engine.reload("tiny")
        tracemalloc.start()
        try:
            return await namespace["soak"](engine, REQUESTS, lambda: tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
            await engine.unload()

    result = asyncio.run(main())
    levels = result["levels"]
    growth = max(levels[WARMUP:]) - levels[WARMUP]
    print(f"\nnative soak: {REQUESTS} requests, traced Python heap {levels[WARMUP] / 1024:.0f} KiB after "
          f"{WARMUP}, max growth {growth / 1024:.1f} KiB over the rest; every 20th: {[round(v / 1024) for v in levels[::20]]}")
    assert result["bad"] == [] and len(levels) == REQUESTS
    assert growth < NATIVE_HEAP_BOUND


PAGE = SOAK + r'''
import asyncio, json, tracemalloc
from webrt.engine import AppConfig, Engine
from webrt.wasm.loader import WebGPUModelLoader


async def page_soak(lib, n):
    config = AppConfig.from_dict({"model_list": [{"model": "/models/tiny", "model_id": "tiny", "model_lib": "/lib/" + lib}]})
    loader = WebGPUModelLoader(config)
    engine = Engine(config, loader=loader)
    await engine.reload("tiny")
    backend = engine.get_model().runner.backend
    wasm, gpu = [], []

    def heap_size():
        wasm.append(backend.inst.memory.memory.buffer.byteLength)
        gpu.append([loader.gpu.live.count, loader.gpu.live.nbytes])
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    result = await soak(engine, n, heap_size)
    tracemalloc.stop()
    await engine.unload()
    return {**result, "wasm": wasm, "gpu": gpu, "errors": list(loader.gpu.errors)}

await asyncio.create_task(page_soak(LIB_NAME, REQUESTS))
'''


@pytest.mark.browser
def test_browser_soak_keeps_memory_flat() -> None:
    art = pyodide_util.tiny_webgpu_artifacts()
    routes = {"/models/tiny/resolve/main/": art.model_dir, "/lib/": Path(art.libs["webgpu"]).parent}
    with pyodide_util.PyodidePage(routes, worker=True) as page:
        code = PAGE.replace("LIB_NAME", repr(art.libs["webgpu"].name)).replace("REQUESTS", str(REQUESTS))
        result = page.run(code, timeout_s=900)
    heap, wasm, gpu = result["levels"], result["wasm"], result["gpu"]
    heap_growth = max(heap[WARMUP:]) - heap[WARMUP]
    print(f"\nbrowser soak: {REQUESTS} requests; Pyodide traced heap {heap[WARMUP] / 1024:.0f} KiB after {WARMUP}, "
          f"max growth {heap_growth / 1024:.1f} KiB; wasm memory {wasm[WARMUP] / 2**20:.1f} -> "
          f"{max(wasm) / 2**20:.1f} MiB; live GPU buffers every 20th: {gpu[::20]}; heap every 20th: "
          f"{[round(v / 1024) for v in heap[::20]]}")
    assert result["bad"] == [] and result["errors"] == [] and len(heap) == REQUESTS
    assert heap_growth < PYODIDE_HEAP_BOUND
    assert max(wasm[WARMUP:]) == wasm[WARMUP]  # the library's memory does not grow
    assert max(count for count, _ in gpu[WARMUP:]) - gpu[WARMUP][0] <= GPU_BUFFERS_BOUND
    assert max(nbytes for _, nbytes in gpu[WARMUP:]) - gpu[WARMUP][1] <= GPU_BYTES_BOUND
