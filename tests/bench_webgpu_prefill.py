"""Prefill time and per-kernel pipeline creation time of WebGPU libraries on SwiftShader.

Each library runs in its own fresh headless Chromium (webrt's Pyodide runtime in a module worker,
no pipeline cache shared between them):
1. every compute pipeline of the library created one at a time (``Runtime.load_pipelines([name],
   concurrency=1)``), each timed;
2. the model loaded by ``WebGPUModelLoader`` and prompts of each length prefilled from an empty
   cache (``ModelRunner.prefill`` then the on-device argmax: 4 bytes read back), each ``REPEATS``
   times (the GPU wait bound raised to 30 min).

Not a test (pytest collects ``test_*.py`` only): the measurement behind BENCHMARKS.md's WebGPU
prefill table, built on the tests' page harness. Run from the checkout's root:
  PYTHONPATH=$PWD:$PWD/tests .venv/bin/python tests/bench_webgpu_prefill.py MODEL_DIR \
      label=lib.wasm [label=lib.wasm ...] [--prompt-lens 8,64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyodide_util

REPEATS = 1

CODE = r"""
import asyncio, json, time
from js import fetch
from webrt.engine.config import ModelRecord
from webrt.engine.model_runner import ModelRunner, WindowConfig
from webrt.wasm.loader import WebGPUModelLoader
from webrt.wasm.runtime import Runtime

RECORD = ModelRecord(model="/models/m", model_id="m", model_lib="/libs/%(lib)s")
PROMPT_LENS, REPEATS = %(prompt_lens)s, %(repeats)d

async def main():
    loader = WebGPUModelLoader(use_kernel_list=False)
    gpu = await loader.gpu_device()
    gpu.wait_timeout_s = 1800  # an untiled 64-token prefill takes minutes on a loaded SwiftShader
    wasm = await (await fetch("/libs/%(lib)s")).arrayBuffer()
    runtime = await Runtime.load(wasm, gpu, check=False)
    pipelines = {}
    for name in runtime.kernel_infos():
        t = time.perf_counter()
        await runtime.load_pipelines([name], concurrency=1)
        pipelines[name] = time.perf_counter() - t
    runtime.dispose()
    cfg = json.loads(await loader.read_text(RECORD, "mlc-chat-config.json"))
    backend = await loader.load(RECORD, cfg, None)
    window = WindowConfig(cfg["context_window_size"], cfg["sliding_window_size"], cfg["attention_sink_size"],
                          cfg["prefill_chunk_size"])
    runner = ModelRunner(backend, window, cfg["vocab_size"])
    prefill = {}
    for n in PROMPT_LENS:
        prompt = [(17 * i + 5) %% 1000 + 100 for i in range(n)]
        times = []
        for _ in range(REPEATS):
            runner.reset()
            t = time.perf_counter()
            token = runner.argmax(runner.prefill(prompt))
            times.append(time.perf_counter() - t)
        prefill[n] = {"seconds": times, "token": token}
    return {"kernels": loader.last_load["kernels"], "pipelines": pipelines, "prefill": prefill,
            "errors": list(backend.runtime.gpu.errors)}

await asyncio.create_task(main())
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("libs", nargs="+", help="label=path.wasm")
    parser.add_argument("--prompt-lens", default="8,64")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lens = [int(n) for n in args.prompt_lens.split(",")]
    results = {}
    for item in args.libs:
        label, lib = item.split("=", 1)
        lib = Path(lib).resolve()
        routes = {"/models/m/resolve/main/": args.model, "/libs/": lib.parent}
        code = CODE % {"lib": lib.name, "prompt_lens": json.dumps(lens), "repeats": REPEATS}
        t = time.perf_counter()
        with pyodide_util.PyodidePage(routes, worker=True) as page:
            results[label] = got = page.run(code, timeout_s=3600)
        got["wall_s"] = time.perf_counter() - t
        slowest = sorted(got["pipelines"].items(), key=lambda kv: -kv[1])[:3]
        print(f"{label} ({got['kernels']}): {len(got['pipelines'])} pipelines, "
              f"total {sum(got['pipelines'].values()):.2f} s, slowest "
              + ", ".join(f"{k} {v:.2f} s" for k, v in slowest))
        for n, row in got["prefill"].items():
            print(f"  prefill {n} tokens: " + ", ".join(f"{s:.2f} s" for s in row["seconds"])
                  + f" (token {row['token']})")
        if got["errors"]:
            print("  errors:", got["errors"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
