"""Both WebGPU kernel variants on SwiftShader give the native CPU library's results, and the loader
picks between them by what the adapter reports.

The tiny random Llama (q4f32_1: packed 4-bit weight words, so the matmuls unpack codes) is compiled
for cpu and for webgpu twice: ``--kernels gpu`` (coalesced, K reduced inside a workgroup) and
``--kernels fallback``. In a module worker, a record naming both (``model_lib`` the gpu variant,
``model_lib_fallback`` the fallback one) loads the fallback variant on SwiftShader, a fallback
adapter; a record naming only ``model_lib`` loads the gpu variant. Each prefills a prompt and
decodes greedily (the on-device argmax: 4 bytes back per token), then samples with top-p from the
gpu variant's own probabilities (sort-free: 4 bytes back per token as well), then prefills prompts
of other lengths from an empty cache: the gpu variant's prefill matmuls take 8 prompt rows per
invocation (11 tokens: a whole tile and a padded one; 5: one padded tile; 16: two whole tiles; 19).
The tolerance is test_browser_runtime's: SwiftShader's sin/cos (RoPE) are accurate to ~2e-4. A
gpu-variant build with 32-lane subgroup reductions (``--subgroup-size 32``) is refused on
SwiftShader, whose subgroups have 4.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

import pyodide_util
from engine_util import native_greedy_steps

pytestmark = pytest.mark.browser

PROMPT = [5, 17, 42, 100, 7, 250, 3, 9, 64, 128, 11]
OTHER_PROMPTS = [PROMPT[:5], PROMPT + PROMPT[:5], PROMPT + PROMPT[:8]]  # 5, 16, 19 tokens
DECODE_STEPS = 6
LOGIT_ATOL = 2e-3
TEMPERATURE, TOP_P = 0.8, 0.9
UNIFORMS = [i / 23 + 0.01 for i in range(23)]


@pytest.fixture(scope="module")
def artifacts() -> Any:
    return pyodide_util.tiny_webgpu_artifacts("q4f32_1", ("cpu", "webgpu", "webgpu-gpu", "webgpu-sg32"))


BROWSER_RUN = r"""
import asyncio, json
from webrt.engine.config import ModelRecord
from webrt.engine.model_runner import ModelRunner, WindowConfig
from webrt.wasm.loader import WebGPUModelLoader

PROMPT, STEPS, OTHER_PROMPTS = %(prompt)s, %(steps)d, %(other_prompts)s
BOTH = ModelRecord(model="/models/tiny", model_id="both", model_lib="/lib/%(gpu)s", model_lib_fallback="/lib/%(fallback)s")
GPU_ONLY = ModelRecord(model="/models/tiny", model_id="gpu", model_lib="/lib/%(gpu)s")
SUBGROUPS_32 = ModelRecord(model="/models/tiny", model_id="sg32", model_lib="/lib/%(sg32)s",
                           model_lib_cpu="/lib/tiny-cpu.wasm", device="webgpu")

class Counted:
    '''Records the size of every download of the backend it wraps.'''
    def __init__(self, backend):
        self.backend, self.sizes = backend, []
    def __getattr__(self, name):
        return getattr(self.backend, name)
    def download(self, tensor, nbytes=None):
        data = self.backend.download(tensor, nbytes)
        self.sizes.append(len(data))
        return data

async def run(record):
    loader = WebGPUModelLoader(use_kernel_list=False)
    cfg = json.loads(await loader.read_text(record, "mlc-chat-config.json"))
    backend = await loader.load(record, cfg, None)
    window = WindowConfig(cfg["context_window_size"], cfg["sliding_window_size"], cfg["attention_sink_size"],
                          cfg["prefill_chunk_size"])
    counted = Counted(backend)
    runner = ModelRunner(counted, window, cfg["vocab_size"])
    logits = runner.prefill(PROMPT)
    out = {"logits": [runner.logits_to_list(logits)], "tokens": [runner.argmax(logits)]}
    for _ in range(STEPS):
        logits = runner.decode(out["tokens"][-1])
        out["logits"].append(runner.logits_to_list(logits))
        out["tokens"].append(runner.argmax(logits))
    counted.sizes.clear()
    out["argmax_again"] = runner.argmax(logits)
    out["sampled"] = [runner.sample(logits, %(temperature)r, %(top_p)r, u) for u in %(uniforms)r]
    out["readback_sizes"] = sorted(set(counted.sizes))
    out["other_prefills"] = []
    for prompt in OTHER_PROMPTS:
        runner.reset()
        out["other_prefills"].append(runner.logits_to_list(runner.prefill(prompt)))
    out["load"] = {k: loader.last_load[k] for k in ("library", "library_field", "kernels", "reason")}
    out["errors"] = list(backend.runtime.gpu.errors)
    backend.runtime.dispose()
    return out

async def refusal(record):
    loader = WebGPUModelLoader(use_kernel_list=False)
    cfg = json.loads(await loader.read_text(record, "mlc-chat-config.json"))
    try:
        await loader.load(record, cfg, None)
    except Exception as exc:
        return {"type": type(exc).__name__, "message": str(exc)}
    return None

async def main():
    return {"both": await run(BOTH), "gpu_only": await run(GPU_ONLY), "sg32_refused": await refusal(SUBGROUPS_32)}

await asyncio.create_task(main())
"""


@pytest.fixture(scope="module")
def browser_run(artifacts: Any) -> dict[str, Any]:
    gpu, fallback = artifacts.libs["webgpu-gpu"], artifacts.libs["webgpu"]
    code = BROWSER_RUN % {"prompt": json.dumps(PROMPT), "steps": DECODE_STEPS, "gpu": gpu.name,
                          "other_prompts": json.dumps(OTHER_PROMPTS), "fallback": fallback.name,
                          "sg32": artifacts.libs["webgpu-sg32"].name, "temperature": TEMPERATURE, "top_p": TOP_P,
                          "uniforms": UNIFORMS}
    routes = {"/models/tiny/resolve/main/": artifacts.model_dir, "/lib/": gpu.parent}
    with pyodide_util.PyodidePage(routes, worker=True) as page:
        return page.run(code, timeout_s=300)


def test_loader_picks_the_variant_by_adapter(browser_run: dict[str, Any]) -> None:
    """SwiftShader is a fallback adapter: the record's model_lib_fallback; without one, model_lib."""
    both, gpu_only = browser_run["both"]["load"], browser_run["gpu_only"]["load"]
    assert both["library_field"] == "model_lib_fallback" and both["kernels"] == "fallback", both
    assert "fallback adapter" in both["reason"]
    assert gpu_only["library_field"] == "model_lib" and gpu_only["kernels"] == "gpu", gpu_only


@pytest.mark.parametrize("run", ["both", "gpu_only"])
def test_each_variant_matches_the_native_cpu_library(artifacts: Any, browser_run: dict[str, Any], run: str) -> None:
    """Prefill logits and greedy decode steps match the CPU library; greedy tokens are identical."""
    ref = native_greedy_steps(artifacts, PROMPT, DECODE_STEPS)
    got = browser_run[run]
    assert got["errors"] == []
    assert got["tokens"] == ref["tokens"]
    for step, (a, b) in enumerate(zip(got["logits"], ref["logits"], strict=True)):
        assert len(a) == len(b) == artifacts.chat_config["vocab_size"]
        err = max(abs(x - y) for x, y in zip(a, b, strict=True))
        assert err <= LOGIT_ATOL, f"{run} step {step}: max |logit diff| {err:.3g} > {LOGIT_ATOL}"


@pytest.mark.parametrize("run", ["both", "gpu_only"])
def test_prefills_of_other_lengths_match_the_native_cpu_library(artifacts: Any, browser_run: dict[str, Any],
                                                                run: str) -> None:
    """Prompts shorter than, a multiple of and longer than the gpu variant's 8-row prefill tile."""
    got = browser_run[run]["other_prefills"]
    for prompt, logits in zip(OTHER_PROMPTS, got, strict=True):
        ref = native_greedy_steps(artifacts, prompt, 0)["logits"][0]
        err = max(abs(x - y) for x, y in zip(logits, ref, strict=True))
        assert err <= LOGIT_ATOL, f"{run}, {len(prompt)} tokens: max |logit diff| {err:.3g} > {LOGIT_ATOL}"


def top_p_reference(logits: list[float], uniform: float) -> int | None:
    """sample_top_p_from_probs's choice by the float64 inverse CDF (None near a boundary)."""
    top = max(logits)
    weights = [math.exp((x - top) / TEMPERATURE) for x in logits]
    total = sum(weights)
    probs = [w / total for w in weights]
    by_mass = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    mass = 0.0
    for cut in by_mass:
        mass += probs[cut]
        if mass >= TOP_P:
            break
    kept = [i for i in range(len(probs)) if probs[i] >= probs[cut]]
    kept_total = sum(probs[i] for i in kept)
    running = 0.0
    for i in kept:
        running += probs[i] / kept_total
        if abs(running - uniform) < 1e-4 or abs(mass - TOP_P) < 1e-4:
            return None  # float rounding decides
        if uniform < running:
            return i
    return kept[-1]


@pytest.mark.parametrize("run", ["both", "gpu_only"])
def test_greedy_and_top_p_read_back_one_token_id(browser_run: dict[str, Any], run: str) -> None:
    """Greedy and sort-free top-p sampling download 4 bytes a token, and pick what the host
    inverse CDF picks from the same logits."""
    got = browser_run[run]
    assert got["readback_sizes"] == [4]
    assert got["argmax_again"] == got["tokens"][-1]
    checked = 0
    for uniform, token in zip(UNIFORMS, got["sampled"], strict=True):
        expected = top_p_reference(got["logits"][-1], uniform)
        if expected is not None:
            assert token == expected, (uniform, token, expected)
            checked += 1
    assert checked >= len(UNIFORMS) - 3


def test_a_subgroup_build_is_refused_where_subgroups_are_smaller(browser_run: dict[str, Any]) -> None:
    """SwiftShader's subgroups have 4 lanes: a 32-lane build would reduce wrongly there, so it is refused
    before any weight is read, naming both sizes and the record's other library."""
    refused = browser_run["sg32_refused"]
    assert refused is not None and refused["type"] == "FeatureNotSupportedError", refused
    message = refused["message"]
    assert "subgroups of 32 lanes" in message and "subgroups of 4" in message, message
    assert "model_lib_cpu" in message, message
