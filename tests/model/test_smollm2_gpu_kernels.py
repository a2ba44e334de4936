"""The real SmolLM2-135M-Instruct (q4f32_1) in the ``gpu`` kernel variant on SwiftShader vs the
native CPU library.

SmolLM2's shapes (K = 576: 72 packed words a row, so 8 lanes and 9 steps; K = 1536: 64 lanes; a
49152-row LM head) differ from the tiny model's; SwiftShader once took minutes to compile one of
these kernels and lost the device (a prefill tiled over prompt rows with the padded rows' reads
behind a branch; they are clamped now). The prefill's last-token logits (12 prompt tokens: one
whole 8-row tile and one padded one) and three greedy decode steps must match the CPU library
within test_browser_engine's tolerance (RoPE's sin/cos on SwiftShader: ~1e-2 on these logits),
with the same greedy tokens.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import pyodide_util
from engine_util import native_greedy_steps

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TEXT = "The capital of France is Paris. The capital of Germany is"
DECODE_STEPS = 3
LOGIT_ATOL = 5e-2

BROWSER_RUN = r"""
import asyncio, json
from webrt.engine.config import ModelRecord
from webrt.engine.model_runner import ModelRunner, WindowConfig
from webrt.wasm.loader import WebGPUModelLoader

RECORD = ModelRecord(model="/models/smollm2", model_id="smollm2", model_lib="/libs/%(lib)s")

async def main():
    loader = WebGPUModelLoader(use_kernel_list=False)
    cfg = json.loads(await loader.read_text(RECORD, "mlc-chat-config.json"))
    backend = await loader.load(RECORD, cfg, None)
    window = WindowConfig(cfg["context_window_size"], cfg["sliding_window_size"], cfg["attention_sink_size"],
                          cfg["prefill_chunk_size"])
    runner = ModelRunner(backend, window, cfg["vocab_size"])
    logits = runner.prefill(%(prompt)s)
    out = {"logits": [runner.logits_to_list(logits)], "tokens": [runner.argmax(logits)]}
    for _ in range(%(steps)d):
        logits = runner.decode(out["tokens"][-1])
        out["logits"].append(runner.logits_to_list(logits))
        out["tokens"].append(runner.argmax(logits))
    out["kernels"] = loader.last_load["kernels"]
    out["errors"] = list(backend.runtime.gpu.errors)
    return out

await asyncio.create_task(main())
"""


@pytest.fixture(scope="module")
def artifacts() -> Any:
    return pyodide_util.smollm2_webgpu_artifacts(("cpu", "webgpu-gpu"))


def test_gpu_variant_matches_the_native_cpu_library(artifacts: Any) -> None:
    from tokenizers import Tokenizer

    prompt = Tokenizer.from_file(str(artifacts.model_dir / "tokenizer.json")).encode(TEXT).ids
    assert len(prompt) == 12
    lib = artifacts.libs["webgpu-gpu"]
    routes = {"/models/smollm2/resolve/main/": artifacts.model_dir, "/libs/": lib.parent}
    code = BROWSER_RUN % {"lib": lib.name, "prompt": json.dumps(prompt), "steps": DECODE_STEPS}
    with pyodide_util.PyodidePage(routes, worker=True) as page:
        got = page.run(code, timeout_s=600)
    ref = native_greedy_steps(artifacts, prompt, DECODE_STEPS)
    assert got["kernels"] == "gpu" and got["errors"] == []
    assert got["tokens"] == ref["tokens"]
    errors = [max(abs(a - b) for a, b in zip(x, y, strict=True)) for x, y in zip(got["logits"], ref["logits"],
                                                                                  strict=True)]
    print(f"\nSmolLM2 gpu variant vs CPU: max |logit diff| per step {[round(e, 4) for e in errors]}")
    assert max(errors) <= LOGIT_ATOL
