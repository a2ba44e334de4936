"""The WebGPU runtime under faults, on the tiny model in headless Chromium (SwiftShader).

One page (a module worker, the engine in an asyncio task, as the demo runs it) goes through:

- a small device: the real device with its limits reported lower (the loader's ``gpu=``; WebGPU
  cannot lower a device's own limits below the defaults). A model whose KV cache layer is above
  the largest buffer is refused at reload with GPUOutOfMemoryError before any weight is fetched,
  naming the planned memory and a context window that fits; that window then loads and chats.
  Below the KV cache's fixed masks no window helps, and the error does not offer one. A tensor
  past the limits allocated through TVM's runtime fails with the same typed error, and a full
  device reloads after it.
- a lost device: ``device.destroy()`` while a request decodes turns the request into
  DeviceLostError within a step, and ``reload`` requests a new device and answers as before.
- an uncaptured GPUOutOfMemoryError event fails the next request with GPUOutOfMemoryError.
- a wait on the worker (`bootWorker`'s ``runPython(code, {timeoutMs})``) ends with a
  WorkerTimeoutError while the worker is still busy.
- hung GPU waits: ``mapAsync`` and ``createComputePipelineAsync`` replaced by promises that never
  settle give GPUTimeoutError after ``GPUInfo.wait_timeout_s``; a reload works afterwards.

The planned memory is checked against what the device allocated: the KV cache's per-layer
buffers and masks, and the weights' bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pyodide_util

pytestmark = pytest.mark.browser

FAULTS = r"""
import asyncio, dataclasses, re, time
import js
from pyodide.ffi import create_once_callable, create_proxy
from webrt.engine import AppConfig, Engine
from webrt.wasm.loader import WebGPUModelLoader
from webrt.wasm.webgpu import request_device

CFG = AppConfig.from_dict({"model_list": [{"model": "/models/tiny", "model_id": "tiny", "model_lib": "/lib/%(lib)s"}]})
HELLO = [{"role": "user", "content": "hello world"}]


def outcome(exc):
    return {"type": type(exc).__name__, "message": str(exc), "mro": [c.__name__ for c in type(exc).__mro__]}


async def attempt(out, key, awaitable):
    # out[key]: None when it succeeded, else what it raised; out[key + "_s"]: the seconds it took
    t0 = time.perf_counter()
    try:
        await awaitable
        out[key] = None
    except Exception as exc:
        out[key] = outcome(exc)
    out[key + "_s"] = time.perf_counter() - t0


NEVER = create_proxy(lambda *args: js.Promise.new(create_once_callable(lambda resolve, reject: None)))


async def hung(proto, method, out, key, awaitable):
    # `awaitable` with proto.method answering promises that never settle
    real = getattr(proto, method)
    setattr(proto, method, NEVER)
    try:
        await attempt(out, key, awaitable)
    finally:
        setattr(proto, method, real)


async def reply(engine, **kw):
    out = await engine.chat.completions.create(messages=HELLO, temperature=0, max_tokens=8, **kw)
    return out.choices[0].message.content


def small(gpu, limit):
    return dataclasses.replace(gpu, limits={**gpu.limits, "maxBufferSize": limit, "maxStorageBufferBindingSize": limit})


def shard_fetches(loader):
    stats = loader.cache.stats
    return [u for u in stats.network + stats.cached if "params_shard" in u]


async def small_device(full):
    out = {}
    # 1. the planned KV cache layer is above the device's largest buffer: refused before the weights
    loader = WebGPUModelLoader(CFG, gpu=small(full, 300_000))
    engine = Engine(CFG, loader=loader)
    await attempt(out, "refused", engine.reload("tiny", {"context_window_size": 1024}))
    out["shards_fetched_before_refusal"] = shard_fetches(loader)
    out["live_after_refusal"] = [loader.gpu.live.count, loader.gpu.live.nbytes]
    # 2. the window the error names loads and chats on that device
    named = re.search(r"'context_window_size': (\d+)", out["refused"]["message"] if out["refused"] else "")
    fit = int(named.group(1)) if named else 0
    out["fit"] = fit
    if fit:
        await engine.reload("tiny", {"context_window_size": fit})
        out["fit_reply"] = await reply(engine)
        ctx = engine.get_model().runner.backend.runtime.gpu_ctx
        out["fit_plan"] = ctx.memory_plan.to_json()
        out["fit_largest_buffer"] = max(ctx.storage._sizes)
        await engine.unload()
    # 3. below the KV cache's fixed tree-attention masks no window helps: refused, saying so
    engine = Engine(CFG, loader=WebGPUModelLoader(CFG, gpu=small(full, 200_000)))
    await attempt(out, "mask", engine.reload("tiny"))
    # 4. a tensor past the device's limits, allocated through TVM's runtime once the model is loaded
    engine = Engine(CFG, loader=WebGPUModelLoader(CFG, gpu=small(full, 270_000)))
    await engine.reload("tiny")
    backend = engine.get_model().runner.backend
    async def upload():
        backend.upload(bytes(300_000), (300_000,), "uint8")

    await attempt(out, "alloc", upload())
    # 5. the full device answers after it, as it would have anyway
    engine = Engine(CFG, loader=WebGPUModelLoader(CFG, gpu=full))
    await engine.reload("tiny", {"context_window_size": fit or 256})
    out["full_reply"] = await reply(engine)
    ctx = engine.get_model().runner.backend.runtime.gpu_ctx
    await engine.reload("tiny")
    ctx = engine.get_model().runner.backend.runtime.gpu_ctx
    out["plan"] = ctx.memory_plan.to_json()
    out["allocated_sizes"] = sorted(s for s in ctx.storage._sizes if s)
    out["param_bytes_allocated"] = sum(int(t.nbytes) for t in engine.get_model().runner.backend.params)
    await engine.unload()
    return out


async def lost_device():
    out = {}
    loader = WebGPUModelLoader(CFG)
    engine = Engine(CFG, loader=loader)
    await engine.reload("tiny")
    out["before"] = await reply(engine)
    old = loader.gpu
    ctx = engine.get_model().runner.backend.runtime.gpu_ctx
    start = ctx.stats.readbacks
    task = asyncio.create_task(engine.chat.completions.create(messages=HELLO, temperature=0, max_tokens=200,
                                                              ignore_eos=True))
    while ctx.stats.readbacks < start + 3 and not task.done():
        await asyncio.sleep(0)
    out["readbacks_before_loss"] = ctx.stats.readbacks - start
    old.device.destroy()
    await attempt(out, "request", asyncio.wait_for(task, 60))
    out["readbacks_after_loss"] = ctx.stats.readbacks - start - out["readbacks_before_loss"]
    out["old_lost"] = old.lost
    await engine.reload("tiny")
    out["new_device"] = loader.gpu is not old and loader.gpu.lost is None
    out["after"] = await reply(engine)
    await engine.unload()
    return out, loader


async def hung_waits(loader):
    out = {}
    engine = Engine(CFG, loader=loader)
    await engine.reload("tiny")
    # an out-of-memory error the device reports (as the browser delivers one nobody captured)
    error = js.GPUOutOfMemoryError.new("injected: the device ran out of memory")
    init = js.Object.new()
    init.error = error
    loader.gpu.device.dispatchEvent(js.GPUUncapturedErrorEvent.new("uncapturederror", init))
    await attempt(out, "oom_event", reply(engine))
    out["after_oom_event"] = await reply(engine)
    loader.gpu.wait_timeout_s = 1.5
    await hung(js.GPUBuffer.prototype, "mapAsync", out, "readback", reply(engine))
    await engine.unload()
    loader.use_kernel_list = False  # every pipeline is created at load
    await hung(js.GPUDevice.prototype, "createComputePipelineAsync", out, "pipelines", engine.reload("tiny"))
    out["live_after_failed_load"] = [loader.gpu.live.count, loader.gpu.live.nbytes]
    loader.gpu.wait_timeout_s = 120
    await engine.reload("tiny")
    out["after"] = await reply(engine)
    await engine.unload()
    return out


async def guarded(coroutine):  # a failure of the script itself is that scenario's result
    try:
        return await coroutine
    except Exception as exc:
        return {"script_failed": outcome(exc)}


async def main():
    full = await request_device()
    results = {"small": await guarded(small_device(full))}
    got = await guarded(lost_device())
    results["lost"], loader = got if isinstance(got, tuple) else (got, WebGPUModelLoader(CFG))
    results["hung"] = await guarded(hung_waits(loader))
    return results

await asyncio.create_task(main())
"""


#: A run that outlasts its timeoutMs: the page's wait on the worker ends, the worker answers later.
WORKER_TIMEOUT = """async () => {
  const t0 = performance.now();
  let error = null;
  try {
    await window.webrt.runPython("import time\\ntime.sleep(3)", { timeoutMs: 300 });
  } catch (err) {
    error = { name: err.name, message: err.message };
  }
  const waited = (performance.now() - t0) / 1000;
  const next = await window.webrt.runPython("1 + 1");  // the worker goes on once the sleep ends
  return { error, waited, next: next.value };
}"""


@pytest.fixture(scope="module")
def faults() -> dict[str, Any]:
    art = pyodide_util.tiny_webgpu_artifacts()
    routes: dict[str, Path] = {"/models/tiny/resolve/main/": art.model_dir, "/lib/": art.libs["webgpu"].parent}
    with pyodide_util.PyodidePage(routes, worker=True) as page:
        results = page.run(FAULTS % {"lib": art.libs["webgpu"].name}, timeout_s=400)
        results["worker"] = page.evaluate(WORKER_TIMEOUT, timeout_s=60)
        return results


def scenario(faults: dict[str, Any], name: str) -> dict[str, Any]:
    """One scenario's results (the test fails with the page's error if its script broke)."""
    got = faults[name]
    assert "script_failed" not in got, got.get("script_failed")
    return got


def test_a_model_past_the_device_limits_is_refused_before_its_weights(faults: dict[str, Any]) -> None:
    small = scenario(faults, "small")
    refused = small["refused"]
    print(f"\nrefused: {refused and refused['message']}")
    assert refused is not None and refused["type"] == "GPUOutOfMemoryError" and "MemoryError" in refused["mro"]
    message = refused["message"]
    for named in ("300000 bytes", "The model plans", "KV cache", "1024-token context window",
                  "'context_window_size': ", "quantization", "model_lib_cpu"):
        assert named in message, named
    assert small["shards_fetched_before_refusal"] == []  # before: downloaded, then a raw MemoryError
    assert small["live_after_refusal"] == [0, 0]  # the refused library left no buffer behind


def test_the_window_the_error_names_fits_the_small_device(faults: dict[str, Any]) -> None:
    small = scenario(faults, "small")
    assert 256 < small["fit"] < 1024
    assert small["fit_plan"]["kv_layer_bytes"] <= 300_000 and small["fit_largest_buffer"] <= 300_000
    assert small["fit_reply"] == small["full_reply"]  # the same answer as on the full device


def test_a_buffer_no_window_shrinks_is_refused_without_suggesting_one(faults: dict[str, Any]) -> None:
    mask = scenario(faults, "small")["mask"]
    print(f"\nmask: {mask and mask['message']}")
    assert mask is not None and mask["type"] == "GPUOutOfMemoryError"  # before: a bare MemoryError
    assert "tree-attention mask" in mask["message"] and "200000 bytes" in mask["message"]
    assert "context_window_size" not in mask["message"] and "model_lib_cpu" in mask["message"]


def test_an_allocation_past_the_limits_is_a_typed_error_and_a_full_device_reloads(faults: dict[str, Any]) -> None:
    small = scenario(faults, "small")
    alloc = small["alloc"]
    print(f"\nallocation: {alloc and alloc['message']}")
    assert alloc is not None and alloc["type"] == "GPUOutOfMemoryError"  # before: a bare MemoryError
    assert "300000 bytes" in alloc["message"] and "270000 bytes" in alloc["message"]
    assert "The model plans" in alloc["message"]
    assert small["full_reply"]


def test_the_memory_plan_matches_what_the_device_allocated(faults: dict[str, Any]) -> None:
    small = scenario(faults, "small")
    plan = small["plan"]
    assert plan["params_bytes"] == small["param_bytes_allocated"]
    layers = plan["kv_layers"]
    assert layers >= 1 and small["allocated_sizes"].count(plan["kv_layer_bytes"]) >= layers
    assert small["allocated_sizes"].count(plan["kv_mask_bytes"]) >= 2
    # the compiler's figure (the library's _metadata.memory_plan) also counts the cache's attention
    # workspace and index arrays, beyond the page buffers and masks seen here
    assert plan["kv_cache_bytes"] >= layers * plan["kv_layer_bytes"] + 2 * plan["kv_mask_bytes"]
    assert plan["total_bytes"] == plan["params_bytes"] + plan["kv_cache_bytes"] + plan["temp_buffer_bytes"]


def test_a_lost_device_fails_the_request_and_reload_recovers(faults: dict[str, Any]) -> None:
    lost = scenario(faults, "lost")
    print(f"\nlost: {lost['request']} after {lost['request_s']:.2f} s")
    assert lost["readbacks_before_loss"] >= 3
    request = lost["request"]
    assert request is not None and request["type"] == "DeviceLostError"  # before: a raw JsException
    assert "reload" in request["message"] and lost["old_lost"]
    assert lost["readbacks_after_loss"] <= 1 and lost["request_s"] < 10
    assert lost["new_device"] and lost["after"] == lost["before"]


def test_an_out_of_memory_error_from_the_device_fails_the_request(faults: dict[str, Any]) -> None:
    hung = scenario(faults, "hung")
    oom = hung["oom_event"]
    assert oom is not None and oom["type"] == "GPUOutOfMemoryError"  # before: the reply went on regardless
    assert "injected: the device ran out of memory" in oom["message"] and "The model plans" in oom["message"]
    assert hung["after_oom_event"] == scenario(faults, "lost")["before"]  # reported once


def test_hung_gpu_waits_time_out_with_a_typed_error(faults: dict[str, Any]) -> None:
    hung = scenario(faults, "hung")
    print(f"\nreadback: {hung['readback']}\npipelines: {hung['pipelines']}")
    for what in ("readback", "pipelines"):
        got = hung[what]
        assert got is not None and got["type"] == "GPUTimeoutError", what  # before: waited forever
        assert "1.5 s" in got["message"] and 1.4 < hung[f"{what}_s"] < 15
    assert "mapAsync" in hung["readback"]["message"] and "pipeline" in hung["pipelines"]["message"]
    assert hung["live_after_failed_load"] == [0, 0]
    assert hung["after"] == scenario(faults, "lost")["before"]


def test_a_wait_on_the_worker_is_bounded(faults: dict[str, Any]) -> None:
    worker = faults["worker"]
    error = worker["error"]
    assert error is not None and error["name"] == "WorkerTimeoutError"  # before: waited for the run
    assert "300 ms" in error["message"] and worker["waited"] < 2.5 and worker["next"] == 2
