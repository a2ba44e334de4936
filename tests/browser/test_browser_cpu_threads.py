"""The CPU model library (``webrt compile --device wasm``) on several threads in headless Chromium
(`webrt.wasm.threads`), against the native CPU library and against itself on one thread.

One cross-origin isolated page (COOP/COEP, engine in a module worker, as `webrt serve` runs it)
loads the tiny Llama (q0f32) CPU library with ``WebGPUModelLoader(threads=2)``: the runner's
greedy tokens and logits equal the native CPU library's (same tolerance as
test_browser_cpu_wasm.py: fp32 rounding between wasm simd128 and the host's AVX) and the same
library's on one thread in the same page; the pool's own per-thread task counters (in the
library's shared memory) show the worker thread ran parallel-loop tasks. A worker whose script
does not load fails the load with ThreadsUnavailableError instead of hanging (a worker that stops
after the pool started: tests/native/test_wasm_cpu_threads_node.py; Chromium's Worker.terminate()
does not end a worker that is inside the pool's loop, so it cannot be staged here).

A page that is not cross-origin isolated runs the same library on one thread by default (and
answers the native tokens); asking it for two threads is a ThreadsUnavailableError naming the fix.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import pyodide_util
from engine_util import native_greedy_steps
from test_wasm_cpu_library import tiny_wasm_artifacts

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPT = [5, 17, 42, 100, 7, 250, 3, 9, 64, 128, 11]
DECODE_STEPS = 6
LOGIT_ATOL = 1e-3

BROWSER = r"""
import asyncio, json
import js
from webrt.engine import AppConfig
from webrt.engine.model_runner import ModelRunner, WindowConfig
from webrt.errors import ThreadsUnavailableError
from webrt.wasm.instance import Instance
from webrt.wasm.loader import WebGPUModelLoader
from webrt.wasm.threads import ThreadPool

CFG = AppConfig.from_dict({"model_list": [{"model": "/models/tiny", "model_id": "tiny", "model_lib": "/lib/unused.wasm",
                                           "model_lib_cpu": "/lib/%(cpu_lib)s", "device": "cpu"}]})

async def steps(threads):
    loader = WebGPUModelLoader(CFG, threads=threads)
    record = CFG.find("tiny")
    cfg = json.loads(await loader.read_text(record, "mlc-chat-config.json"))
    backend = await loader.load(record, cfg, None)
    runner = ModelRunner(backend, WindowConfig(cfg["context_window_size"], cfg["sliding_window_size"],
                                               cfg["attention_sink_size"], cfg["prefill_chunk_size"]))
    logits = runner.prefill(%(prompt)s)
    out = {"threads": loader.last_load["threads"], "logits": [runner.logits_to_list(logits)],
           "tokens": [runner.argmax(logits)]}
    for _ in range(%(steps)d):
        logits = runner.decode(out["tokens"][-1])
        out["logits"].append(runner.logits_to_list(logits))
        out["tokens"].append(runner.argmax(logits))
    pool = backend.runtime.pool
    out["tasks_run"] = pool.tasks_run() if pool is not None else None
    backend.close()
    return out

async def asks_for(threads):
    try:
        await steps(threads)
    except ThreadsUnavailableError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None}

async def worker_script_missing():
    wasm = await (await js.fetch("/lib/%(cpu_lib)s")).arrayBuffer()
    inst = await Instance.create(wasm)
    try:
        await ThreadPool.start(inst.exports, inst.module, inst.imported_memory, 2, timeout_s=20,
                               script_url="/runtime/no-such-thread.js")
    except ThreadsUnavailableError as exc:
        return str(exc)
    finally:
        inst.dispose()
    return None
"""


def _browser(isolation: bool, calls: list[str]) -> list[Any]:
    art = tiny_wasm_artifacts()
    code = BROWSER % {"cpu_lib": art.libs["wasm"].name, "prompt": json.dumps(PROMPT), "steps": DECODE_STEPS}
    routes = {"/models/tiny/resolve/main/": art.model_dir, "/lib/": art.libs["wasm"].parent}
    with pyodide_util.PyodidePage(routes, worker=True, isolation=isolation) as page:
        page.run(code)
        return [page.run(f"await asyncio.create_task({call})", timeout_s=180) for call in calls]


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    if not pyodide_util.pyodide_available():
        pytest.skip("chromium, playwright or npm pyodide is not installed")
    two, one, missing = _browser(True, ["steps(2)", "steps(1)", "worker_script_missing()"])
    default, refused = _browser(False, ["steps(None)", "asks_for(2)"])
    native = native_greedy_steps(tiny_wasm_artifacts(), PROMPT, DECODE_STEPS)
    return {"two": two, "one": one, "missing": missing, "default": default, "refused": refused, "native": native}


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert len(a) == len(b) == DECODE_STEPS + 1
    return max(abs(p - q) for x, y in zip(a, b, strict=True) for p, q in zip(x, y, strict=True))


def test_two_threads_match_the_native_library_and_one_thread(runs: dict[str, Any]) -> None:
    two, one, native = runs["two"], runs["one"], runs["native"]
    assert two["threads"] == 2 and one["threads"] == 1
    assert two["tokens"] == native["tokens"] == one["tokens"]
    assert _max_diff(two["logits"], native["logits"]) <= LOGIT_ATOL
    assert _max_diff(two["logits"], one["logits"]) <= 1e-5
    # the pool's counters: the calling thread and the worker each ran every parallel loop's share
    calling, worker = two["tasks_run"]
    assert calling > 0 and worker == calling
    assert one["tasks_run"] is None


def test_a_worker_that_cannot_start_is_a_typed_error(runs: dict[str, Any]) -> None:
    assert runs["missing"] and "CPU worker thread 1 failed" in runs["missing"]


def test_a_page_without_isolation_runs_one_thread(runs: dict[str, Any]) -> None:
    default = runs["default"]
    assert default["threads"] == 1 and default["tasks_run"] is None
    assert default["tokens"] == runs["native"]["tokens"]
    refused = runs["refused"]
    assert refused["error"] == "ThreadsUnavailableError"
    assert "not cross-origin isolated" in refused["message"] and "COOP" in refused["message"]
