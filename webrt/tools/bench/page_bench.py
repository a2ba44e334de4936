"""webrt's side of the browser benchmark, run by Pyodide in the page (served as text, not imported).

The same work as `tvmjs_bench.js`: load the library and weights to "ready" (through
`WebGPUModelLoader`: cached downloads, pipelines, the KV cache), prefill, then greedy decode with
argmax on the device (`ModelRunner`, what the Engine runs per token). Per step it splits the wall
time into GPU wait (blocked on the readback) and host time (everything Python does). Last, it
times the ways from the final logits to a token id (webrt only: tvmjs has no sampler).
`webrt_cpu_bench` runs the same load, prefill and greedy decode on the model's CPU library.
"""

import asyncio
import json
import statistics
import time

from webrt.chat_config import CHAT_CONFIG_FILE
from webrt.engine.config import ModelRecord
from webrt.engine.model_runner import ModelRunner, WindowConfig
from webrt.wasm.loader import WebGPUModelLoader


async def _webrt_bench(opts):
    t0 = time.perf_counter()
    loader = WebGPUModelLoader(cache_backend="cache")
    record = ModelRecord(model=opts["model"], model_id="bench", model_lib=opts["wasm"])
    chat_config = json.loads(await loader.read_text(record, CHAT_CONFIG_FILE))
    backend = await loader.load(record, chat_config, None)
    runner = ModelRunner(backend, WindowConfig(opts["contextWindow"], -1, -1, opts["prefillChunk"]))
    backend.runtime.gpu_ctx.sync()
    out = {"runtime": "webrt", "readyMs": (time.perf_counter() - t0) * 1e3,
           "pipelinesMs": loader.last_load["pipelines_s"] * 1e3, "weightsMs": loader.last_load["weights_s"] * 1e3,
           "kernels": loader.last_load["pipelines_n"], "kernelList": loader.last_load["kernel_list"],
           "downloads": len(loader.last_load["fetch"]["network"])}
    if not opts.get("steps"):
        return out
    stats = backend.stats
    t = time.perf_counter()
    token = runner.argmax(runner.prefill(opts["prompt"]))
    out["prefillMs"] = (time.perf_counter() - t) * 1e3
    tokens, total, host, dispatches = [token], [], [], []
    for i in range(opts["warmup"] + opts["steps"]):
        t, w, d = time.perf_counter(), stats.wait_s, stats.dispatches
        logits = runner.decode(token)
        token = runner.argmax(logits)
        step = time.perf_counter() - t
        tokens.append(token)
        if i >= opts["warmup"]:
            total.append(step * 1e3)
            host.append((step - (stats.wait_s - w)) * 1e3)
            dispatches.append(stats.dispatches - d)
    out.update(stepMs=total, hostMs=host, dispatches=dispatches, tokens=tokens,
               samplingMs=_sampling_ms(runner, logits), savedKernels=len(await backend.saved()))
    return out


async def _webrt_cpu_bench(opts):
    """The same steps on the CPU library (``model_lib_cpu``, `WebGPUModelLoader(device="cpu")`):
    every tensor in wasm memory, nothing to wait for, on ``opts["threads"]`` threads (default 1)."""
    t0 = time.perf_counter()
    loader = WebGPUModelLoader(cache_backend="cache", device="cpu", threads=opts.get("threads", 1))
    record = ModelRecord(model=opts["model"], model_id="bench", model_lib=opts["wasm"], model_lib_cpu=opts["wasmCpu"])
    chat_config = json.loads(await loader.read_text(record, CHAT_CONFIG_FILE))
    backend = await loader.load(record, chat_config, None)
    runner = ModelRunner(backend, WindowConfig(opts["contextWindow"], -1, -1, opts["prefillChunk"]))
    out = {"runtime": "webrt-cpu", "readyMs": (time.perf_counter() - t0) * 1e3,
           "weightsMs": loader.last_load["weights_s"] * 1e3, "library": loader.last_load["library"],
           "memoryBytes": loader.last_load["memory_bytes"], "threads": loader.last_load["threads"],
           "downloads": len(loader.last_load["fetch"]["network"])}
    if not opts.get("steps"):
        return out
    t = time.perf_counter()
    token = runner.argmax(runner.prefill(opts["prompt"]))
    out["prefillMs"] = (time.perf_counter() - t) * 1e3
    out["promptTokens"] = len(opts["prompt"])
    tokens, total = [token], []
    timed_from = time.time() * 1e3  # epoch ms (Date.now()): the window bench's CPU sampler reads
    for i in range(opts["warmup"] + opts["steps"]):
        if i == opts["warmup"]:
            timed_from = time.time() * 1e3
        t = time.perf_counter()
        token = runner.argmax(runner.decode(token))
        tokens.append(token)
        if i >= opts["warmup"]:
            total.append((time.perf_counter() - t) * 1e3)
    out.update(stepMs=total, tokens=tokens, timedFromEpoch=timed_from, timedToEpoch=time.time() * 1e3)
    return out


async def webrt_cpu_bench(opts_json):
    """Entry point of the CPU-library run (JSON options in, a JSON-able dict out)."""
    return await asyncio.create_task(_webrt_cpu_bench(json.loads(opts_json)))


#: name -> (temperature, top_p, sort); each ends in the 4-byte readback of the token id
SAMPLERS = {
    "argmax": (0.0, 1.0, False),
    "sample": (1.0, 1.0, False),
    "top_p_0.9": (1.0, 0.9, False),
    "top_p_0.9_sorted": (1.0, 0.9, True),
}


def _sampling_ms(runner, logits, draws=5):
    """Median ms from logits to a token id, per sampler (softmax included where it samples)."""
    out = {}
    for name, (temperature, top_p, sort) in SAMPLERS.items():
        times = []
        for i in range(draws + 1):
            t = time.perf_counter()
            runner.sample(logits, temperature, top_p, (i + 0.5) / (draws + 1), sort=sort)
            times.append((time.perf_counter() - t) * 1e3)
        out[name] = statistics.median(times[1:])  # the first call may create pipelines
    return out


async def webrt_bench(opts_json):
    """Entry point: JSON options in, a JSON-able dict out (runs the work in an asyncio task)."""
    return await asyncio.create_task(_webrt_bench(json.loads(opts_json)))
