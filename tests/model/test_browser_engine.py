"""The real SmolLM2-135M-Instruct (q4f32_1) through the Engine in the browser vs. natively.

The same artifacts (weights + mlc-chat-config.json + tokenizer) are loaded by the browser
Engine (WebGPUModelLoader: Cache Storage, the .wasm on Chromium's SwiftShader WebGPU, in a
module worker) and by the native Engine (NativeModelLoader: the CPU .so on TVM's runtime). Both
answer "What is the capital of France?" greedily; every step's logits (the prefill's, then each
decode step's through the paged KV cache) are recorded on both sides.

Tolerance: SwiftShader's WGSL sin/cos are accurate to ~2e-4 absolute (measured against numpy), everything
else to fp32 rounding. The rotary embedding feeds those errors into every query and key of 30
layers, which moves SmolLM2's logits (magnitudes ~10-30) by up to ~1e-2; a wrong kernel, binding
or KV-cache page moves them by O(1). We allow LOGIT_ATOL = 5e-2 (5x the expected sin/cos effect,
still 20x below a real bug) and require top-1 agreement on >= 95% of teacher-forced steps: if
the free-running greedy tokens ever differ, the browser is re-run teacher-forced on the native
tokens and compared step by step.

Then the page is reloaded (same profile): the second load fetches no weight shard and reaches
"ready" faster (it creates only the kernels the first session launched).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import pyodide_util

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_OPTS = {"conv_config": {"system_message": SYSTEM}}
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 24
LOGIT_ATOL = 5e-2
MIN_TOP1_AGREEMENT = 0.95

# Records every step's logits and greedy token, on the engine's own runner (native and browser).
RECORDER = r"""
def record_steps(model, logits_out, tokens_out):
    runner = model.runner
    prefill, decode, argmax = runner.prefill, runner.decode, runner.argmax
    def keep(out):
        logits_out.append(runner.logits_to_list(out))
        return out
    def greedy(logits):
        token = argmax(logits)
        tokens_out.append(token)
        return token
    runner.prefill = lambda tokens: keep(prefill(tokens))
    runner.decode = lambda token: keep(decode(token))
    runner.argmax = greedy

def teacher_forced(model, prompt, tokens):
    '''Logits after the prompt and after each of `tokens` (the other side's greedy choice).'''
    runner = model.runner
    model.reset()
    out = [runner.logits_to_list(runner.prefill(prompt))]
    for token in tokens[:-1]:
        out.append(runner.logits_to_list(runner.decode(token)))
    return out
"""

BROWSER = RECORDER + r"""
import asyncio, json, time
from webrt.engine import AppConfig, Engine
from webrt.wasm.loader import WebGPUModelLoader

CFG = AppConfig.from_dict({"model_list": [{"model": "/models/smollm2", "model_id": "smollm2",
                                           "model_lib": "/libs/%(lib)s"}]})

async def load():
    loader = WebGPUModelLoader(CFG)
    engine = Engine(CFG, loader=loader)
    t0 = time.perf_counter()
    await engine.reload("smollm2", %(chat_opts)s)
    return engine, loader, time.perf_counter() - t0

async def first_session():
    engine, loader, ready_s = await load()
    model = engine.get_model()
    logits, tokens = [], []
    record_steps(model, logits, tokens)
    t0 = time.perf_counter()
    reply = await engine.chat.completions.create(messages=%(messages)s, temperature=0, max_tokens=%(max_tokens)d)
    out = {"ready_s": ready_s, "chat_s": time.perf_counter() - t0, "last_load": loader.last_load,
           "text": reply.choices[0].message.content, "finish_reason": reply.choices[0].finish_reason,
           "prompt": model.chat_prompt_tokens(%(messages)s), "tokens": tokens, "logits": logits,
           "usage": dict(reply.usage), "saved_kernels": await model.runner.backend.saved()}
    stats = model.runner.backend.stats
    out["gpu_errors"] = list(model.runner.backend.runtime.gpu.errors)
    out["kernels_failed"] = dict(stats.kernels_failed)
    globals()["session"] = (engine, model)
    return out

async def second_session():
    engine, loader, ready_s = await load()
    return {"ready_s": ready_s, "last_load": loader.last_load}
"""


def _artifacts() -> Any:
    return pyodide_util.smollm2_webgpu_artifacts(("cpu", "webgpu"))


def native_session(art: Any) -> dict[str, Any]:
    from webrt.engine import AppConfig, Engine

    scope: dict[str, Any] = {}
    exec(RECORDER, scope)

    async def main() -> dict[str, Any]:
        cfg = AppConfig([{"model": str(art.model_dir), "model_id": "smollm2", "model_lib": str(art.libs["cpu"])}])
        engine = Engine(cfg)
        await engine.reload("smollm2", CHAT_OPTS)
        model = engine.get_model()
        logits: list[list[float]] = []
        tokens: list[int] = []
        scope["record_steps"](model, logits, tokens)
        reply = await engine.chat.completions.create(messages=FRANCE, temperature=0, max_tokens=MAX_TOKENS)
        return {"text": reply.choices[0].message.content, "prompt": model.chat_prompt_tokens(FRANCE),
                "tokens": tokens, "logits": logits}

    return asyncio.run(main())


@pytest.fixture(scope="module")
def sessions() -> dict[str, Any]:
    art = _artifacts()
    lib = art.libs["webgpu"]
    native = native_session(art)
    code = BROWSER % {"lib": lib.name, "chat_opts": json.dumps(CHAT_OPTS), "messages": json.dumps(FRANCE),
                      "max_tokens": MAX_TOKENS}
    routes = {"/models/smollm2/resolve/main/": art.model_dir, "/libs/": lib.parent}
    with pyodide_util.PyodidePage(routes, worker=True) as page:
        page.run(code)
        browser = page.run("await asyncio.create_task(first_session())", timeout_s=420)
        if browser["tokens"] != native["tokens"]:  # teacher-force the native greedy continuation
            browser["forced_logits"] = page.run(
                f"engine, model = session\nteacher_forced(model, {native['prompt']!r}, {native['tokens']!r})",
                timeout_s=300)
        page.reload()  # same profile: Cache Storage and the saved kernel list persist
        page.run(code)
        n0 = len(page.server.requests)
        second = page.run("await asyncio.create_task(second_session())", timeout_s=300)
        second["shard_requests"] = [p for p in page.server.requests[n0:] if "params_shard" in p]
        second["network"] = [p for p in page.server.requests[n0:] if p.startswith(("/models/", "/libs/"))]
    return {"native": native, "browser": browser, "second": second}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def test_prompt_tokens_are_identical(sessions: dict[str, Any]) -> None:
    assert sessions["browser"]["prompt"] == sessions["native"]["prompt"]


def test_logits_match_native_with_teacher_forcing(sessions: dict[str, Any]) -> None:
    native, browser = sessions["native"], sessions["browser"]
    forced = browser.get("forced_logits", browser["logits"])
    steps = min(len(forced), len(native["logits"]))
    assert steps >= 2
    agree = sum(_argmax(forced[i]) == _argmax(native["logits"][i]) for i in range(steps))
    errors = [max(abs(a - b) for a, b in zip(forced[i], native["logits"][i], strict=True)) for i in range(steps)]
    print(f"\nSmolLM2 q4f32_1, browser vs CPU over {steps} teacher-forced steps (prefill + decode): "
          f"max |logit diff| per step {[round(e, 4) for e in errors]}, top-1 agreement {agree}/{steps}"
          f"{' (free-running tokens diverged; teacher-forced on the native tokens)' if 'forced_logits' in browser else ''}")
    assert agree / steps >= MIN_TOP1_AGREEMENT
    assert max(errors) <= LOGIT_ATOL


def test_greedy_chat_gives_the_same_text_and_says_paris(sessions: dict[str, Any]) -> None:
    native, browser = sessions["native"], sessions["browser"]
    print(f"\nnative: {native['text']!r}\nbrowser: {browser['text']!r} (ready {browser['ready_s']:.1f} s, "
          f"chat {browser['chat_s']:.1f} s, {browser['usage']['completion_tokens']} tokens)")
    assert "Paris" in native["text"] and "Paris" in browser["text"]
    if browser["text"] != native["text"]:  # allowed only when the sin/cos imprecision explains it
        assert "forced_logits" in browser


def test_no_webgpu_errors(sessions: dict[str, Any]) -> None:
    assert sessions["browser"]["kernels_failed"] == {}
    assert sessions["browser"]["gpu_errors"] == []


def test_second_load_fetches_no_shard_and_is_faster(sessions: dict[str, Any]) -> None:
    first, second = sessions["browser"], sessions["second"]
    assert second["shard_requests"] == [] and second["network"] == []
    assert second["last_load"]["kernel_list"] is True
    assert second["last_load"]["pipelines_n"] < first["last_load"]["pipelines_n"]
    assert second["ready_s"] < first["ready_s"]
    f, s = first["last_load"], second["last_load"]
    print(f"\nSmolLM2 q4f32_1 time to ready: first {first['ready_s']:.1f} s ({f['pipelines_n']} pipelines in "
          f"{f['pipelines_s']:.1f} s, weights {f['weights_s']:.1f} s, {len(f['fetch']['network'])} downloads), "
          f"second {second['ready_s']:.1f} s ({s['pipelines_n']} pipelines in {s['pipelines_s']:.1f} s, "
          f"weights {s['weights_s']:.1f} s, nothing downloaded): {first['ready_s'] / second['ready_s']:.1f}x faster")
