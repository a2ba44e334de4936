"""webrt's Python runtime (webrt.wasm) on Pyodide in headless Chromium, against the native CPU library.

The tiny random Llama (q0f32) is compiled for webgpu and cpu (`model_factory.tiny_artifacts`).
In a module worker, the browser loader's `WasmBackend` + the unchanged `ModelRunner` prefill a prompt and greedily
decode 8 tokens through the paged KV cache, inside an asyncio task (the engine's context, where
`download` blocks with JSPI). The same steps run natively with `NativeBackend`.

Tolerance: SwiftShader's WGSL sin/cos are accurate to only ~2e-4 absolute (measured against numpy; worse for
large angles), so RoPE'd queries/keys differ from the CPU's by up to that much; everything else
(exp, rsqrt, matmuls) is fp32 rounding. At the <= 20 positions used here the angles are small and
the measured logit difference is ~5e-5; we allow 2e-3 (10x the sin/cos error, far below the
O(0.1) errors a wrong kernel, binding or KV-cache page produces) and require identical greedy tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import pyodide_util
from engine_util import native_greedy_steps

pytestmark = pytest.mark.browser

PROMPT = [5, 17, 42, 100, 7, 250, 3, 9, 64, 128, 11]
DECODE_STEPS = 8
LOGIT_ATOL = 2e-3




@pytest.fixture(scope="module")
def artifacts() -> Any:
    return pyodide_util.tiny_webgpu_artifacts()


def _routes(art: Any) -> dict[str, Path]:
    return {"/models/tiny/resolve/main/": art.model_dir, "/lib/": art.libs["webgpu"].parent}


def native_reference(art: Any) -> dict[str, Any]:
    """Prefill + greedy decode with the CPU library (TVM's own runtime)."""
    return native_greedy_steps(art, PROMPT, DECODE_STEPS)


BROWSER_RUN = r"""
import asyncio, dataclasses, json, struct, time
import js
from webrt.engine.config import ModelRecord
from webrt.engine.model_runner import ModelRunner, WindowConfig
from webrt.wasm.loader import WebGPUModelLoader

PROMPT = %(prompt)s
STEPS = %(steps)d
RECORD = ModelRecord(model="/models/tiny", model_id="tiny", model_lib="/lib/%(lib)s")
progress = []
loader = WebGPUModelLoader(use_kernel_list=False)
cfg = json.loads(await loader.read_text(RECORD, "mlc-chat-config.json"))
backend = await loader.load(RECORD, cfg, lambda r: progress.append({"progress": r.progress, "text": r.text}))
window = WindowConfig(cfg["context_window_size"], cfg["sliding_window_size"], cfg["attention_sink_size"],
                      cfg["prefill_chunk_size"])

def host_argmax(values):
    return max(range(len(values)), key=values.__getitem__)

async def generate(backend, timed_steps=0):
    runner = ModelRunner(backend, window)
    stats = backend.stats
    t0 = time.perf_counter()
    logits = runner.prefill(PROMPT)
    prefill_tok = runner.argmax(logits)
    prefill_s = time.perf_counter() - t0
    out = {"logits": [runner.logits_to_list(logits)], "tokens": [prefill_tok], "steps": []}
    out["host_argmax"] = [host_argmax(out["logits"][0])]
    for _ in range(STEPS):
        logits = runner.decode(out["tokens"][-1])
        token = runner.argmax(logits)
        values = runner.logits_to_list(logits)
        out["logits"].append(values)
        out["tokens"].append(token)
        out["host_argmax"].append(host_argmax(values))
    out["prefill_ms"] = prefill_s * 1e3
    # timing: greedy decode steps as a generation loop runs them (decode + on-device argmax)
    token = out["tokens"][-1]
    for _ in range(timed_steps):
        t0, w0, d0 = time.perf_counter(), stats.wait_s, stats.dispatches
        token = runner.argmax(runner.decode(token))
        out["steps"].append({"total_ms": (time.perf_counter() - t0) * 1e3, "wait_ms": (stats.wait_s - w0) * 1e3,
                             "dispatches": stats.dispatches - d0})
    return out

result = await asyncio.create_task(generate(backend, timed_steps=12))

# on-device sampling on given probabilities: sort-free inverse CDF (whole, or above the top-p
# floor), and WebLLM's argsort + top-p pair
def pack(fmt, values):
    return struct.pack("<%%d%%s" %% (len(values), fmt), *values)

def sample_cases():
    out = []
    probs = backend.upload(pack("f", SAMPLE_PROBS), (1, len(SAMPLE_PROBS)), "float32")
    for u, top_p, sort in SAMPLE_DRAWS:
        uniform = backend.upload(pack("f", [u]), (1,), "float32")
        if top_p >= 1.0:
            token = backend.function("sample_from_probs")(probs, uniform)
        elif not sort:
            token = backend.function("sample_top_p_from_probs")(
                probs, uniform, backend.upload(pack("i", [0]), (1,), "int32"),
                backend.upload(pack("f", [top_p]), (1,), "float32"))
        else:
            sorted_probs, sorted_ids = backend.function("argsort_probs")(probs)
            token = backend.function("sample_with_top_p")(
                sorted_probs, sorted_ids, uniform, backend.upload(pack("i", [0]), (1,), "int32"),
                backend.upload(pack("f", [top_p]), (1,), "float32"))
        out.append(struct.unpack("<i", backend.download(token, 4))[0])
    return out

SAMPLE_PROBS = %(sample_probs)s
SAMPLE_DRAWS = %(sample_draws)s

async def sample_task():
    return sample_cases()

result["sampled"] = await asyncio.create_task(sample_task())
rt = backend.runtime
result["timings"] = rt.timings
result["progress"] = progress
result["stats"] = {k: v for k, v in dataclasses.asdict(backend.stats).items() if k != "pipeline_s"}
result["slowest_kernels"] = sorted(backend.stats.pipeline_s.items(), key=lambda kv: -kv[1])[:5]
result["errors"] = list(rt.gpu.errors)
result["launched"] = rt.launched_kernels()
result["n_kernels"] = len(rt.kernel_infos())

# A second instance, on a new device, that creates only the kernels the first one launched
# (the list the first backend saved in the cache)
result["saved"] = await backend.saved()
loader2 = WebGPUModelLoader()
backend2 = await loader2.load(RECORD, cfg, None)
rt2 = backend2.runtime
again = await asyncio.create_task(generate(backend2))
result["used_only"] = {"pipelines_s": rt2.timings["pipelines_s"], "n": rt2.timings["pipelines_n"],
                       "kernel_list": loader2.last_load["kernel_list"], "new_device": rt2.gpu is not rt.gpu,
                       "tokens": again["tokens"], "lazily": list(backend2.stats.kernels_created_lazily)}
result
"""


def sampling_cases(vocab: int) -> tuple[list[float], list[tuple[float, float, bool]], list[int]]:
    """Probabilities, (uniform, top_p, sorted) draws kept away from decision boundaries, and the
    numpy answers. With a cut, the sorted pair walks the kept tokens from most to least likely;
    sample_top_p_from_probs walks the same tokens in token order."""
    import numpy as np

    rng = np.random.RandomState(2)
    logits = rng.randn(vocab) * 2
    probs = (np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()).astype("float32")
    by_mass = np.array(sorted(range(vocab), key=lambda i: (-probs[i], i)))
    draws, expected = [], []
    for u in rng.rand(40).astype("float32"):
        for top_p, sort in ((1.0, False), (0.8, True), (0.97, True), (0.8, False), (0.97, False)):
            mass = np.cumsum(probs[by_mass].astype("float64"))
            cut = len(by_mass) - 1 if top_p >= 1.0 else int(np.argmax(mass >= top_p))
            order = by_mass[: cut + 1] if sort else np.flatnonzero(probs >= probs[by_mass[cut]])
            kept = np.cumsum(probs[order].astype("float64"))
            kept /= kept[-1]
            if np.min(np.abs(kept - u)) < 1e-4:
                continue  # a boundary draw: float rounding decides
            draws.append((float(u), top_p, sort))
            expected.append(int(order[int(np.argmax(u < kept))]))
    return [float(x) for x in probs], draws, expected


@pytest.fixture(scope="module")
def browser_run(artifacts: Any) -> dict[str, Any]:
    probs, draws, expected = sampling_cases(artifacts.chat_config["vocab_size"])
    code = BROWSER_RUN % {
        "prompt": json.dumps(PROMPT), "steps": DECODE_STEPS, "lib": artifacts.libs["webgpu"].name,
        "sample_probs": json.dumps(probs), "sample_draws": repr(draws),
    }
    with pyodide_util.PyodidePage(_routes(artifacts), worker=True) as page:
        result = page.run(code, timeout_s=240)
        result["console"] = [m for m in page.console if m.startswith(("error", "pageerror", "warning"))]
    result["sampled_expected"] = expected
    return result


def test_tiny_model_matches_native_cpu(artifacts: Any, browser_run: dict[str, Any]) -> None:
    """Prefill logits and 8 paged-KV decode steps match the CPU library; greedy tokens are identical."""
    ref = native_reference(artifacts)
    got = browser_run
    assert got["tokens"] == ref["tokens"]
    assert len(got["logits"]) == len(ref["logits"]) == DECODE_STEPS + 1
    worst = 0.0
    for step, (a, b) in enumerate(zip(got["logits"], ref["logits"], strict=True)):
        assert len(a) == len(b) == artifacts.chat_config["vocab_size"]
        err = max(abs(x - y) for x, y in zip(a, b, strict=True))
        worst = max(worst, err)
        assert err <= LOGIT_ATOL, f"step {step}: max |logit diff| {err:.3g} > {LOGIT_ATOL}"
    print(f"\nmax |browser - cpu| logit difference over {DECODE_STEPS + 1} steps: {worst:.3g}")
    # on-device argmax (4 bytes back) equals the argmax of the downloaded logits
    assert got["tokens"] == got["host_argmax"]
    # the same tokens from a second instance, on a new device, that created only the launched kernels
    assert got["used_only"]["kernel_list"] is True and got["used_only"]["new_device"] is True
    assert got["saved"] == sorted(got["launched"]) and got["used_only"]["n"] == len(got["launched"])
    assert got["used_only"]["tokens"] == got["tokens"]
    assert got["used_only"]["lazily"] == []


def test_sampling_kernels_on_webgpu_match_numpy(browser_run: dict[str, Any]) -> None:
    """sample_from_probs, sample_top_p_from_probs (bisected floor, workgroup barriers) and
    argsort_probs + sample_with_top_p (bitonic network) pick what numpy's inverse CDF picks
    for the same uniform draws."""
    assert len(browser_run["sampled_expected"]) > 100
    assert browser_run["sampled"] == browser_run["sampled_expected"]


def test_no_blocking_inside_the_vm_and_no_gpu_errors(browser_run: dict[str, Any]) -> None:
    """Model functions never ask the host to block (no Asyncify/JSPI needed inside the VM)."""
    stats = browser_run["stats"]
    assert stats["stream_syncs"] == 0
    assert stats["deferred_reads"] == 0
    assert stats["kernels_created_lazily"] == []
    assert browser_run["errors"] == []
    assert browser_run["console"] == []


def test_report_costs(browser_run: dict[str, Any]) -> None:
    """Print the measured costs (pipeline creation, per-step host time vs GPU wait)."""
    steps = browser_run["steps"]

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    total = median([s["total_ms"] for s in steps])
    wait = median([s["wait_ms"] for s in steps])
    host = median([s["total_ms"] - s["wait_ms"] for s in steps])
    t = browser_run["timings"]
    print(
        f"\npipelines: {t['pipelines_n']} kernels in {t['pipelines_s']:.2f} s "
        f"(only the {browser_run['used_only']['n']} launched ones, new device: "
        f"{browser_run['used_only']['pipelines_s']:.2f} s); "
        f"slowest {[(k, round(v, 2)) for k, v in browser_run['slowest_kernels']]}\n"
        f"instantiate {t['instantiate_s'] * 1e3:.0f} ms, VM {t['vm_s'] * 1e3:.0f} ms, weights {t['weights_s'] * 1e3:.0f} ms\n"
        f"prefill {len(PROMPT)} tokens: {browser_run['prefill_ms']:.0f} ms; decode + argmax step (median of "
        f"{len(steps)}, after {DECODE_STEPS} others): {total:.1f} ms = Python host {host:.1f} ms + GPU wait "
        f"{wait:.1f} ms, {steps[0]['dispatches']} dispatches\nstats: {browser_run['stats']}"
    )
    assert t["pipelines_n"] == browser_run["n_kernels"]
    assert 0 < host < total


# --- the FFI and the refusals, on the main thread (no pipelines needed) ---------------------------
FFI_CHECKS = r"""
import js
from pyodide.ffi import to_js
from webrt.errors import FeatureNotSupportedError
from webrt.wasm.ffi import CPU, WasmRuntimeError, WasmTrapError
from webrt.wasm.instance import Instance
from webrt.wasm.runtime import Runtime
from webrt.wasm.webgpu import check_library, request_device

out = {}
wasm = await (await js.fetch("/lib/%(lib)s")).arrayBuffer()
inst = await Instance.create(wasm)
out["add_one"] = inst.global_function("tvmjs.testing.add_one")(41)

# Python callables as packed functions: values both ways, strings, bytes, shapes, arrays, devices
seen = []
def echo(*args):
    seen.append([repr(a) for a in args])
    return args[0]
f = inst.function(echo)
st = inst.shape_tuple([2, 3, 4])
out["echo"] = [f(7), f(2.5), f("hello"), f("a longer string, not small"), f(b"\x00\x01bytes"), f(None), f(True)]
out["shape_back"] = list(f(st).values)
out["device_back"] = repr(f(CPU))
arr = inst.array([1, "two", st])
out["array"] = [len(arr), arr[0], arr[1], list(arr[2].values)]
# through C++: tvmjs.testing.call(f, args...) calls f from inside the runtime
out["via_cpp"] = inst.global_function("tvmjs.testing.call")(f, "from c++", 5)

# a tensor on the CPU: empty + copy bytes in and out through TVM's own functions
t = inst.empty((2, 3), "float32", CPU)
inst.global_function("tvmjs.runtime.TensorCopyFromBytes")(t, bytes(range(24)))
out["tensor"] = [list(t.shape), str(t.dtype), repr(t.device),
                 inst.global_function("tvmjs.runtime.TensorCopyToBytes")(t) == bytes(range(24))]

# memory growth: a CPU tensor bigger than the initial 160 MB grows the wasm memory; Python's views follow
before = inst.memory.size
big = inst.empty((50_000_000,), "float32", CPU)
inst.global_function("tvmjs.runtime.TensorCopyFromBytes")(t, bytes(range(24, 48)))
out["growth"] = [inst.memory.size > before, inst.global_function("tvmjs.runtime.TensorCopyToBytes")(t) == bytes(range(24, 48)),
                 inst.memory.read(big.data + 4 * 49_999_999, 4) is not None]
big.dispose()

# a Python exception inside a packed function comes back with its type and message
class Boom(ValueError):
    pass
def fail(x):
    raise Boom(f"no good: {x}")
inst.register_func("webrt.test.fail", fail)
try:
    inst.global_function("webrt.test.fail")(3)
except Boom as exc:
    out["python_error"] = str(exc)
# a C++ error inside the runtime (here a type check of a top-level call) aborts the instance:
# a typed error with TVM's message, and the instance refuses further calls
inst2 = await Instance.create(wasm, log=None)
try:
    inst2.global_function("ffi.ModuleGetFunction")(inst2.shape_tuple([1]), "x", True)
except WasmTrapError as exc:
    out["trap_type"] = [exc.kind, str(exc)]
try:
    inst2.global_function("tvmjs.testing.add_one")(1)
except WasmTrapError as exc:
    out["after_trap"] = str(exc)
inst3 = await Instance.create(wasm, log=None)
try:
    inst3.global_function("ffi.ArrayGetItem")(inst3.array([1]), 5)
except WasmTrapError as exc:
    out["trap_index"] = [exc.kind, str(exc)]
out["others_alive"] = inst.global_function("tvmjs.testing.add_one")(1)

# the refusals
gpu = await request_device()
out["adapter"] = gpu.description
out["subgroups"] = [gpu.subgroup_min_size, gpu.subgroup_max_size]
try:
    await request_device(required_features=["shader-f16"], quantization="q4f16_1")
except FeatureNotSupportedError as exc:
    out["f16_device"] = str(exc)
rt = await Runtime.load(wasm, gpu)
meta = dict(rt.metadata)
out["lib_subgroup_size"] = meta["webrt"]["subgroup_size"]
try:
    check_library({**meta, "webrt": {**meta["webrt"], "subgroup_size": 32}}, gpu)
except FeatureNotSupportedError as exc:
    out["subgroup_lib"] = str(exc)
try:
    check_library({**meta, "quantization": "q4f16_1",
                   "webrt": {**meta["webrt"], "model_dtype": "float16", "required_features": ["shader-f16"]}}, gpu)
except FeatureNotSupportedError as exc:
    out["f16_lib"] = str(exc)
check_library(meta, gpu)  # the real library fits

# JSPI can block inside a wasm call without Asyncify (what webrt.wasm.runtime's docstring says):
# a hand-made module whose import returns a Promise, imported as WebAssembly.Suspending and called
# through WebAssembly.promising, awaited and run_sync'ed from Python
from pyodide.ffi import create_proxy, run_sync
tiny = bytes([0, 0x61, 0x73, 0x6D, 1, 0, 0, 0, 1, 5, 1, 0x60, 0, 1, 0x7F, 2, 10, 1, 3, 101, 110, 118, 2, 99, 98, 0, 0,
              3, 2, 1, 0, 7, 7, 1, 3, 114, 117, 110, 0, 1, 10, 6, 1, 4, 0, 0x10, 0, 0x0B])  # run() { return cb(); }
def later():
    return js.Promise.new(create_proxy(lambda res, rej: js.setTimeout(create_proxy(lambda: res(42)), 5)))
jspi = await js.WebAssembly.instantiate(to_js(tiny), to_js(
    {"env": {"cb": js.WebAssembly.Suspending.new(create_proxy(later))}}, dict_converter=js.Object.fromEntries))
run = js.WebAssembly.promising(jspi.instance.exports.run)
out["jspi"] = [await run(), run_sync(run())]

# weight records straight from a JS buffer to the GPU: raw (odd size), and bf16 widened to f32
import struct
from webrt.ndarray_cache.format import TensorRecord
from webrt.wasm.weights import upload_record
shard = js.Uint8Array.new(16)
shard.set(js.Uint8Array.new(to_js(bytes([7, 8, 9]))), 0)
shard.set(js.Uint8Array.new(to_js(struct.pack("<4H", 0x3F80, 0xC000, 0x3F00, 0x4040))), 8)
raw = upload_record(rt, TensorRecord("u", (3,), "uint8", "raw", 3, 0), shard.buffer)
bf = upload_record(rt, TensorRecord("b", (4,), "float32", "f32-to-bf16", 8, 8), shard.buffer)
out["records"] = [list(rt.gpu_ctx.read(raw.data, raw.byte_offset, 3)),
                  list(struct.unpack("<4f", rt.gpu_ctx.read(bf.data, bf.byte_offset, 16)))]
out
"""


@pytest.fixture(scope="module")
def ffi_checks(artifacts: Any) -> dict[str, Any]:
    with pyodide_util.PyodidePage(_routes(artifacts), worker=False) as page:
        return page.run(FFI_CHECKS % {"lib": artifacts.libs["webgpu"].name}, timeout_s=120)


def test_ffi_values_round_trip(ffi_checks: dict[str, Any]) -> None:
    r = ffi_checks
    assert r["add_one"] == 42
    assert r["echo"] == [7, 2.5, "hello", "a longer string, not small", repr(b"\x00\x01bytes"), None, True]
    assert r["shape_back"] == [2, 3, 4]
    assert r["device_back"] == "Device(cpu:0)"
    assert r["array"] == [3, 1, "two", [2, 3, 4]]
    assert r["via_cpp"] == "from c++"
    assert r["tensor"] == [[2, 3], "float32", "Device(cpu:0)", True]
    assert r["growth"] == [True, True, True]


def test_errors_propagate_with_their_message(ffi_checks: dict[str, Any]) -> None:
    r = ffi_checks
    assert r["python_error"] == "no good: 3"
    kind, msg = r["trap_type"]
    assert kind == "TypeError" and msg.startswith("TypeError: Mismatched type on argument #0")
    assert "Expected `ffi.Module` but got `ffi.Shape`" in msg
    assert "instance is dead" in r["after_trap"] and "Mismatched type" in r["after_trap"]
    kind, msg = r["trap_index"]
    assert kind == "IndexError" and msg.startswith("IndexError: Index 5 out of bounds 1")
    assert r["others_alive"] == 2


def test_refuses_libraries_the_adapter_cannot_run(ffi_checks: dict[str, Any]) -> None:
    r = ffi_checks
    assert "swiftshader" in r["adapter"]
    assert r["subgroups"][0] == 4
    assert r["lib_subgroup_size"] == 0
    assert "shader-f16" in r["f16_device"] and "q4f32_1" in r["f16_device"]
    assert "shader-f16" in r["f16_lib"] and "q4f32_1" in r["f16_lib"]
    assert "32" in r["subgroup_lib"] and "4" in r["subgroup_lib"]


def test_jspi_can_block_inside_a_wasm_call(ffi_checks: dict[str, Any]) -> None:
    assert ffi_checks["jspi"] == [42, 42]


def test_weight_records_upload_to_the_gpu(ffi_checks: dict[str, Any]) -> None:
    assert ffi_checks["records"] == [[7, 8, 9], [1.0, -2.0, 0.5, 3.0]]


# --- lifecycle: a reload releases the GPU buffers of the model it replaces ------------------------
RELOADS = r"""
import asyncio
from webrt.engine import AppConfig, Engine
from webrt.wasm.loader import WebGPUModelLoader

CFG = AppConfig.from_dict({"model_list": [{"model": "/models/tiny", "model_id": "tiny", "model_lib": "/lib/%(lib)s"}]})

async def reloads(n):
    loader = WebGPUModelLoader(CFG)
    engine = Engine(CFG, loader=loader)
    levels, texts = [], []
    for _ in range(n):
        await engine.reload("tiny")
        reply = await engine.chat.completions.create(messages=[{"role": "user", "content": "hello world"}],
                                                     temperature=0, max_tokens=8)
        texts.append(reply.choices[0].message.content)
        live = loader.gpu.live  # every buffer on the device: weights, KV cache pages, activations, staging
        levels.append([live.count, live.nbytes])
    backend = engine.get_model().runner.backend
    await engine.unload()
    return {"levels": levels, "texts": texts, "after_unload": [loader.gpu.live.count, loader.gpu.live.nbytes],
            "closed": backend.closed, "errors": list(loader.gpu.errors)}

await asyncio.create_task(reloads(%(n)d))
"""
RELOAD_COUNT = 5


@pytest.fixture(scope="module")
def reload_levels(artifacts: Any) -> dict[str, Any]:
    with pyodide_util.PyodidePage(_routes(artifacts), worker=True) as page:
        return page.run(RELOADS % {"lib": artifacts.libs["webgpu"].name, "n": RELOAD_COUNT}, timeout_s=300)


def test_reloads_release_the_gpu_buffers(reload_levels: dict[str, Any]) -> None:
    """Engine.reload closes the backend it replaces: after each of 5 reloads (and a chat, which
    fills the KV cache) the device holds the same live buffers and bytes; unload leaves none."""
    levels = reload_levels["levels"]
    count, nbytes = levels[0]
    print(f"\nlive GPU buffers after each of {RELOAD_COUNT} reloads + chat: {levels}; "
          f"after unload: {reload_levels['after_unload']}")
    assert len(levels) == RELOAD_COUNT and count > 0 and nbytes > 0
    assert all(level == [count, nbytes] for level in levels)
    assert reload_levels["after_unload"] == [0, 0] and reload_levels["closed"] is True
    assert len(set(reload_levels["texts"])) == 1 and reload_levels["errors"] == []
