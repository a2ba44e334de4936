"""The native benchmark: the CPU library on TVM's runtime beside HF transformers, one machine, one run.

Both decode greedily after the same prompt, one token per step with a KV cache, timed per step
after warm-up steps: webrt through `ModelRunner` (what the Engine runs per token, argmax on the
"device"), transformers with ``past_key_values`` on the fp32 model it builds from the GGUF
(``gguf_file=``, ``local_files_only=True``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class NativeModel:
    """A model folder and its CPU library, benchmarked under `label`."""

    label: str
    model_dir: Path
    lib: Path


def _prompt(vocab: int, n: int) -> list[int]:
    return [(17 + 7919 * i) % vocab for i in range(n)]


def bench_webrt_cpu(model: NativeModel, steps: int = 16, warmup: int = 2, prompt_len: int = 8) -> dict[str, Any]:
    """Decode ms/token of the CPU library (TVM's runtime)."""
    from webrt.chat_config import CHAT_CONFIG_FILE
    from webrt.engine.model_runner import ModelRunner, WindowConfig
    from webrt.native.backend import NativeBackend

    config = json.loads((Path(model.model_dir) / CHAT_CONFIG_FILE).read_text())
    t0 = time.perf_counter()
    runner = ModelRunner(NativeBackend(Path(model.model_dir), Path(model.lib)),
                         WindowConfig(int(config["context_window_size"]), -1, -1,
                                      int(config.get("prefill_chunk_size") or 128)))
    load_s = time.perf_counter() - t0
    prompt = _prompt(int(config["vocab_size"]), prompt_len)
    t = time.perf_counter()
    token = runner.argmax(runner.prefill(prompt))
    prefill_ms = (time.perf_counter() - t) * 1e3
    step_ms, tokens = [], [token]
    for i in range(warmup + steps):
        t = time.perf_counter()
        token = runner.argmax(runner.decode(token))
        if i >= warmup:
            step_ms.append((time.perf_counter() - t) * 1e3)
        tokens.append(token)
    return {"label": model.label, "runtime": "webrt CPU library (TVM runtime)", "load_s": load_s,
            "prefill_ms": prefill_ms, "step_ms": step_ms, "median_ms": statistics.median(step_ms),
            "quantization": config.get("quantization"), "tokens": tokens, "prompt_len": prompt_len,
            "threads": os.environ.get("TVM_NUM_THREADS", f"default ({os.cpu_count()} cores)")}


def bench_transformers(gguf: Path, steps: int = 16, warmup: int = 2, prompt_len: int = 8,
                       threads: int = 2) -> dict[str, Any]:
    """Decode ms/token of HF transformers (fp32, `threads` intra-op threads) on a GGUF."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    gguf = Path(gguf)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True,
                                                 dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    prompt = torch.tensor([_prompt(int(model.config.vocab_size), prompt_len)])
    with torch.no_grad():
        t = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        prefill_ms = (time.perf_counter() - t) * 1e3
        cache = out.past_key_values
        token = int(out.logits[0, -1].argmax())
        step_ms, tokens = [], [token]
        for i in range(warmup + steps):
            t = time.perf_counter()
            out = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            if i >= warmup:
                step_ms.append((time.perf_counter() - t) * 1e3)
            tokens.append(token)
    return {"label": f"{gguf.stem} (dequantized to fp32)", "runtime": f"HF transformers, {threads} threads",
            "load_s": load_s,
            "prefill_ms": prefill_ms, "step_ms": step_ms, "median_ms": statistics.median(step_ms),
            "tokens": tokens, "threads": threads, "prompt_len": prompt_len}
