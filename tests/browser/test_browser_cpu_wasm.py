"""The CPU model library (``webrt compile --device wasm``) in headless Chromium, through webrt's
Python host on Pyodide, against the native CPU library.

The tiny random Llama (q0f32) is compiled for cpu (.so), webgpu and wasm. One page (a module
worker, as the product runs) loads a ModelRecord that names both browser libraries
(``model_lib`` = WebGPU, ``model_lib_cpu`` = CPU) with `WebGPUModelLoader`:

- Chromium's only adapter here is SwiftShader, which reports ``info.isFallbackAdapter = true``
  (checked in this Chromium 156), so the loader picks the CPU library; the unchanged
  `ModelRunner` prefills a prompt and greedily decodes 8 tokens through the paged KV cache, with
  every tensor in wasm memory. Same steps natively with `NativeBackend` on the .so.
- The Engine (same loader, same page) answers a chat greedily; the native Engine on the .so gives
  the same reply.
- With ``navigator.gpu`` made undefined in the worker (WebGPU unavailable), the loader picks the
  CPU library too; a library handed to the wrong path raises LibraryDeviceError.
- The quantized builds, whose decode GEMVs are the wasm code-dot kernel
  (`webrt.compiler.schedules.wasm`): the tiny Llama in q4f32_1 and the tiny GGUF of every type in
  gguf_f32 (Q4_0, Q4_1, Q4_K and Q8_0 matrices), loaded by records that ask for the CPU library,
  give the native CPU library's tokens and logits through the same runner steps.

Tolerance: both sides run the same TIR on the CPU in fp32; they differ in vector width (wasm
simd128 against the host's AVX) and in libm (exp, sin/cos of RoPE, rsqrt), i.e. by fp32 rounding
in reduction order: logits within 1e-3 (a wrong kernel or KV page moves them by O(0.1)), and
identical greedy tokens.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import pyodide_util
from engine_util import native_greedy_steps
from test_wasm_cpu_library import tiny_wasm_artifacts
from test_wasm_gemv import tiny_gguf, tiny_model  # noqa: F401 - tiny_gguf: the fixture tiny_model uses

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPT = [5, 17, 42, 100, 7, 250, 3, 9, 64, 128, 11]
DECODE_STEPS = 8
LOGIT_ATOL = 1e-3
MESSAGES = [{"role": "user", "content": "Paris is the capital of"}]
MAX_TOKENS = 12

BROWSER = r"""
import asyncio, json, time
import js
from webrt.engine import AppConfig, Engine
from webrt.engine.config import ModelRecord
from webrt.engine.model_runner import ModelRunner, WindowConfig
from webrt.wasm.cpu import CPURuntime
from webrt.wasm.loader import WebGPUModelLoader
from webrt.wasm.runtime import LibraryDeviceError, Runtime

RECORD = {"model": "/models/tiny", "model_id": "tiny", "model_lib": "/lib/%(gpu_lib)s",
          "model_lib_cpu": "/lib/%(cpu_lib)s"}
CFG = AppConfig.from_dict({"model_list": [RECORD]})
out = {}

async def runner_steps():
    loader = WebGPUModelLoader(CFG)
    record = CFG.find("tiny")
    cfg = json.loads(await loader.read_text(record, "mlc-chat-config.json"))
    backend = await loader.load(record, cfg, None)
    out["adapter_fallback"] = loader.gpu.is_fallback
    out["last_load"] = {k: v for k, v in loader.last_load.items() if k != "fetch"}
    out["device_type"] = backend.device.device_type
    out["stats"] = backend.stats
    window = WindowConfig(cfg["context_window_size"], cfg["sliding_window_size"], cfg["attention_sink_size"],
                          cfg["prefill_chunk_size"])
    runner = ModelRunner(backend, window)
    logits = runner.prefill(%(prompt)s)
    out["logits"], out["tokens"] = [runner.logits_to_list(logits)], [runner.argmax(logits)]
    t0 = time.perf_counter()
    for _ in range(%(steps)d):
        logits = runner.decode(out["tokens"][-1])
        out["logits"].append(runner.logits_to_list(logits))
        out["tokens"].append(runner.argmax(logits))
    out["decode_ms"] = (time.perf_counter() - t0) * 1e3 / %(steps)d
    backend.close()

async def engine_reply():
    loader = WebGPUModelLoader(CFG)
    engine = Engine(CFG, loader=loader)
    await engine.reload("tiny")
    reply = await engine.chat.completions.create(messages=%(messages)s, temperature=0, max_tokens=%(max_tokens)d)
    out["engine_library"] = loader.last_load["library"]
    out["text"] = reply.choices[0].message.content
    await engine.unload()

async def wrong_paths():
    lib = lambda name: js.fetch("/lib/" + name)
    gpu_wasm = await (await lib("%(gpu_lib)s")).arrayBuffer()
    cpu_wasm = await (await lib("%(cpu_lib)s")).arrayBuffer()
    try:
        await CPURuntime.load(gpu_wasm)
    except LibraryDeviceError as exc:
        out["webgpu_on_cpu_path"] = str(exc)
    loader = WebGPUModelLoader(CFG, device="webgpu")
    try:
        await Runtime.load(cpu_wasm, await loader.gpu_device())
    except LibraryDeviceError as exc:
        out["cpu_on_webgpu_path"] = str(exc)

async def delete_libraries():
    from webrt.ndarray_cache import cache_helpers
    from webrt.ndarray_cache.artifact_cache import ArtifactCache
    from webrt.ndarray_cache.urls import absolute_url

    cache = ArtifactCache("cache")
    cpu_url = absolute_url(CFG.find("tiny").model_lib_cpu)
    before = await cache.wasm.has(cpu_url)
    await cache_helpers.delete_model_wasm_in_cache("tiny", CFG)
    out["cpu_library_cached"] = [before, await cache.wasm.has(cpu_url)]

async def without_webgpu():
    js.eval("Object.defineProperty(self.navigator, 'gpu', {value: undefined, configurable: true})")
    choice = await WebGPUModelLoader(CFG).choose_library(CFG.find("tiny"))
    out["no_webgpu"] = [choice.library, choice.reason]

"""


def native_reference(art: Any) -> dict[str, Any]:
    """Runner steps and the Engine's greedy reply with the CPU .so on TVM's runtime."""
    from webrt.engine import AppConfig, Engine

    out = native_greedy_steps(art, PROMPT, DECODE_STEPS)

    async def chat() -> str:
        engine = Engine(AppConfig([{"model": str(art.model_dir), "model_id": "tiny", "model_lib": str(art.libs["cpu"])}]))
        await engine.reload("tiny")
        reply = await engine.chat.completions.create(messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS)
        return reply.choices[0].message.content

    out["text"] = asyncio.run(chat())
    return out


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    if not pyodide_util.pyodide_available():
        pytest.skip("chromium, playwright or npm pyodide is not installed")
    art = tiny_wasm_artifacts()
    code = BROWSER % {"gpu_lib": art.libs["webgpu"].name, "cpu_lib": art.libs["wasm"].name,
                      "prompt": json.dumps(PROMPT), "steps": DECODE_STEPS, "messages": json.dumps(MESSAGES),
                      "max_tokens": MAX_TOKENS}
    routes = {"/models/tiny/resolve/main/": art.model_dir, "/lib/": art.libs["wasm"].parent}
    with pyodide_util.PyodidePage(routes, worker=True) as page:
        page.run(code)
        page.run("await asyncio.create_task(runner_steps())\nawait asyncio.create_task(engine_reply())",
                 timeout_s=300)
        lib_requests = [p for p in page.server.requests if p.startswith("/lib/")]
        browser = page.run("await asyncio.create_task(wrong_paths())\n"
                           "await asyncio.create_task(delete_libraries())\n"
                           "await asyncio.create_task(without_webgpu())\nout", timeout_s=120)
        browser["lib_requests"] = lib_requests
    return {"browser": browser, "native": native_reference(art), "vocab": art.chat_config["vocab_size"]}


def test_fallback_adapter_picks_the_cpu_library(runs: dict[str, Any]) -> None:
    b = runs["browser"]
    assert b["adapter_fallback"] is True  # SwiftShader
    assert b["last_load"]["library"] == "cpu" and "fallback adapter" in b["last_load"]["reason"]
    assert b["device_type"] == 1 and b["stats"] is None  # kDLCPU, no WebGPU bridge
    assert b["engine_library"] == "cpu"
    # both loads fetched only the CPU library, the second from Cache Storage
    assert b["lib_requests"] == ["/lib/lib-wasm.wasm"]


def test_runner_logits_match_the_native_cpu_library(runs: dict[str, Any]) -> None:
    b, n = runs["browser"], runs["native"]
    assert b["tokens"] == n["tokens"]
    assert len(b["logits"]) == len(n["logits"]) == DECODE_STEPS + 1
    worst = 0.0
    for step, (x, y) in enumerate(zip(b["logits"], n["logits"], strict=True)):
        assert len(x) == len(y) == runs["vocab"]
        err = max(abs(p - q) for p, q in zip(x, y, strict=True))
        worst = max(worst, err)
        assert err <= LOGIT_ATOL, f"step {step}: max |logit diff| {err:.3g}"
    print(f"\nwasm CPU library vs native CPU library: max |logit diff| {worst:.3g} over {DECODE_STEPS + 1} steps; "
          f"decode {b['decode_ms']:.1f} ms/token (tiny model, Python host); load {b['last_load']}")


def test_engine_greedy_reply_equals_native(runs: dict[str, Any]) -> None:
    assert runs["browser"]["text"] == runs["native"]["text"]
    assert runs["native"]["text"]


def test_deleting_the_model_libraries_deletes_the_cpu_one_too(runs: dict[str, Any]) -> None:
    assert runs["browser"]["cpu_library_cached"] == [True, False]


def test_without_webgpu_the_loader_picks_the_cpu_library(runs: dict[str, Any]) -> None:
    library, reason = runs["browser"]["no_webgpu"]
    assert library == "cpu" and "navigator.gpu is undefined" in reason


def test_a_library_on_the_wrong_path_is_a_typed_error(runs: dict[str, Any]) -> None:
    b = runs["browser"]
    assert "--device wasm" in b["webgpu_on_cpu_path"]
    assert "model_lib_cpu" in b["cpu_on_webgpu_path"]


def test_bench_cpu_row_runs_the_cpu_library() -> None:
    """`webrt bench browser --model-lib-cpu`'s runs on the tiny model: webrt's loader takes the CPU
    library when asked, decodes the native library's greedy tokens, and the warm load downloads
    nothing; TVM's JS runtime on the same library gives the same tokens; the report shows both
    rows beside wllama's."""
    if not pyodide_util.pyodide_available():
        pytest.skip("chromium, playwright or npm pyodide is not installed")
    from webrt.engine.model_runner import ModelRunner, WindowConfig
    from webrt.native.backend import NativeBackend
    from webrt.tools.bench import report
    from webrt.tools.bench.browser_bench import BrowserModel, _options, bench_server, bench_tvmjs_cpu, bench_webrt_cpu

    art = tiny_wasm_artifacts()
    model = BrowserModel("tiny", art.model_dir, art.libs["webgpu"], wasm_cpu=art.libs["wasm"])
    with bench_server([model]) as server:
        opts = _options(model, server, steps=4, warmup=1, prompt_len=8)
        run = bench_webrt_cpu(server, opts, model, 300, print)
        ref = bench_tvmjs_cpu(server, opts, model, 300, print)
    cold, warm = run["cold"], run["warm"]
    assert cold["library"] == "cpu" and len(cold["stepMs"]) == 4 and cold["promptTokens"] == 8
    assert warm["downloads"] == 0 and run["console_errors"] == []
    cfg = art.chat_config
    runner = ModelRunner(NativeBackend(art.model_dir, art.libs["cpu"]),
                         WindowConfig(cfg["context_window_size"], -1, -1, cfg["prefill_chunk_size"]))
    tokens = [runner.argmax(runner.prefill(opts["prompt"]))]
    for _ in range(1 + 4):
        tokens.append(runner.argmax(runner.decode(tokens[-1])))
    assert cold["tokens"] == tokens
    # TVM's JS runtime on the same CPU library (tvm.cpu()): the same tokens
    assert ref["cold"]["tokens"] == tokens and ref["console_errors"] == []
    result = {"label": "tiny", "summary": {"webrt_step_ms": 10.0}, "webrt": {"cold": {"tokens": tokens}},
              "webrt_cpu": run, "tvmjs_cpu": ref}
    table = report.wllama_table([result])
    print("\n" + table)
    assert "| tiny | webrt CPU library (wasm32+simd128; same tokens as WebGPU) | 1 |" in table
    assert "| tiny | TVM JS runtime (tvmjs), webrt's CPU library | 1 |" in table


QUANTIZED = r"""
import asyncio, json
from webrt.engine import AppConfig
from webrt.engine.model_runner import ModelRunner, WindowConfig
from webrt.wasm.loader import WebGPUModelLoader

CFG = AppConfig.from_dict({"model_list": [
    {"model": f"/models/{name}", "model_id": name, "model_lib": "/lib/unused.wasm",
     "model_lib_cpu": f"/lib-{name}/lib-wasm.wasm", "device": "cpu"} for name in %(names)s]})

async def quantized_steps(name):
    loader = WebGPUModelLoader(CFG)
    record = CFG.find(name)
    cfg = json.loads(await loader.read_text(record, "mlc-chat-config.json"))
    backend = await loader.load(record, cfg, None)
    runner = ModelRunner(backend, WindowConfig(cfg["context_window_size"], cfg["sliding_window_size"],
                                               cfg["attention_sink_size"], cfg["prefill_chunk_size"]))
    logits = runner.prefill(%(prompt)s)
    out = {"library": loader.last_load["library"], "logits": [runner.logits_to_list(logits)],
           "tokens": [runner.argmax(logits)]}
    for _ in range(%(steps)d):
        logits = runner.decode(out["tokens"][-1])
        out["logits"].append(runner.logits_to_list(logits))
        out["tokens"].append(runner.argmax(logits))
    backend.close()
    return out
"""
QUANTIZATIONS = ("q4f32_1", "gguf_f32")


@pytest.fixture(scope="module")
def quantized_runs(request: pytest.FixtureRequest) -> dict[str, Any]:
    if not pyodide_util.pyodide_available():
        pytest.skip("chromium, playwright or npm pyodide is not installed")
    arts = {name: tiny_model(name, request) for name in QUANTIZATIONS}
    routes = {}
    for name, art in arts.items():
        routes[f"/models/{name}/resolve/main/"] = art.model_dir
        routes[f"/lib-{name}/"] = art.libs["wasm"].parent
    out: dict[str, Any] = {}
    with pyodide_util.PyodidePage(routes, worker=True) as page:
        page.run(QUANTIZED % {"names": json.dumps(list(QUANTIZATIONS)), "prompt": json.dumps(PROMPT),
                              "steps": DECODE_STEPS})
        for name in QUANTIZATIONS:
            out[name] = page.run(f"await asyncio.create_task(quantized_steps({name!r}))", timeout_s=300)
    return {name: (out[name], native_greedy_steps(art, PROMPT, DECODE_STEPS)) for name, art in arts.items()}


@pytest.mark.parametrize("name", QUANTIZATIONS)
def test_quantized_cpu_libraries_match_the_native_cpu_library(quantized_runs: dict[str, Any], name: str) -> None:
    browser, native = quantized_runs[name]
    assert browser["library"] == "cpu"
    assert browser["tokens"] == native["tokens"]
    for step, (x, y) in enumerate(zip(browser["logits"], native["logits"], strict=True)):
        err = max(abs(p - q) for p, q in zip(x, y, strict=True))
        assert err <= LOGIT_ATOL, f"{name}, step {step}: max |logit diff| {err:.3g}"
