"""``webrt bench memory``: webrt's memory plan for real model shapes beside WebLLM's figures.

For each prebuilt model of WebLLM 0.2.86 that webrt has an architecture for, the model's own HF
``config.json`` (no weights, no tokenizer) goes through ``gen_config`` with WebLLM's record
(its ``context_window_size`` override, prefill chunk 1024 as its ``_cs1k`` libraries, the same
quantization) and then through webrt's Relax pipeline up to static memory planning (no code
generation), and the plan of :mod:`webrt.compiler.memory_plan` is set beside the record's
``vram_required_MB``.

WebLLM's figures were read from npm ``@mlc-ai/web-llm`` 0.2.86 (``lib/index.js``,
``prebuiltAppConfig``; tarball sha256 b104049691e1926c689109831887a3e7b2443df48ecb1e0f1a697e53564b5d4e);
``src/config.ts`` of ``mlc-ai/web-llm`` at c51c9c0b1b4a2e01432362606f79fda42380dc7b (0.2.83 + one
commit) lists the same numbers. Its Qwen2.5-1.5B record uses the Qwen2-1.5B library (same shape).

Two totals are shown. ``total`` is what webrt's plan says the runtime allocates: its KV cache
is TVM's paged cache as created (one page more than the window, the attention workspace of a
prefill chunk, index arrays). ``MLC-style`` counts the KV cache as MLC-LLM's compile-time
report did (``kv_cache_bytes``: context window x bytes per token), which is how WebLLM's
``vram_required_MB`` relates to a library's parameters and temporary buffers.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webrt.compiler.memory_plan import MB, MemoryPlan

#: Where the models' HF config.json files live (one folder per model, config.json only).
DEFAULT_CONFIGS = Path("tests/data/hf_configs")
WEBLLM_VERSION = "0.2.86"
#: WebLLM's prebuilt libraries are built with this prefill chunk (``_cs1k`` in their names).
WEBLLM_PREFILL_CHUNK = 1024
#: Any template: the chat template does not change the memory plan.
CONV_TEMPLATE = "chatml"


@dataclass(frozen=True)
class WebLLMRecord:
    """One prebuilt model of WebLLM's ``prebuiltAppConfig``."""

    model_id: str
    config_dir: str  # folder under the configs root holding the model's HF config.json
    quantization: str
    context_window_size: int  # the record's ``overrides.context_window_size``
    vram_required_mb: float


WEBLLM_RECORDS = (
    WebLLMRecord("Llama-3.1-8B-Instruct-q4f16_1-MLC", "Llama-3.1-8B-Instruct", "q4f16_1", 4096, 5001.0),
    WebLLMRecord("Mistral-7B-Instruct-v0.3-q4f16_1-MLC", "Mistral-7B-Instruct-v0.3", "q4f16_1", 4096, 4573.39),
    WebLLMRecord("Qwen2.5-1.5B-Instruct-q4f16_1-MLC", "Qwen2.5-1.5B-Instruct", "q4f16_1", 4096, 1629.75),
    WebLLMRecord("TinyLlama-1.1B-Chat-v1.0-q4f16_1-MLC", "TinyLlama-1.1B-Chat-v1.0", "q4f16_1", 2048, 697.24),
    WebLLMRecord("SmolLM2-135M-Instruct-q0f32-MLC", "SmolLM2-135M-Instruct", "q0f32", 4096, 719.38),
    WebLLMRecord("SmolLM2-135M-Instruct-q0f16-MLC", "SmolLM2-135M-Instruct", "q0f16", 4096, 359.69),
)


def plan_record(record: WebLLMRecord, configs: Path = DEFAULT_CONFIGS, device: str = "webgpu") -> MemoryPlan:
    """webrt's memory plan for ``record``'s model, from its config.json alone."""
    from webrt.compiler.compile import model_config_for
    from webrt.compiler.gen_config import TokenizerMissingWarning, gen_config
    from webrt.compiler.memory_plan import plan_model
    from webrt.compiler.quantization import get_quantization

    with tempfile.TemporaryDirectory(prefix="webrt-memory-") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenizerMissingWarning)  # the configs come without tokenizers
        chat_config = gen_config(configs / record.config_dir, record.quantization, CONV_TEMPLATE, Path(out) / "model",
                                 context_window_size=record.context_window_size,
                                 prefill_chunk_size=WEBLLM_PREFILL_CHUNK)
    return plan_model(model_config_for(chat_config, {}), get_quantization(record.quantization), device)


def mlc_style_total_bytes(plan: MemoryPlan) -> int:
    """Parameters + temporary buffer + window x KV bytes per token (MLC's compile-time report)."""
    kv = plan.kv_cache
    return plan.params_bytes + plan.temp_buffer_bytes + (kv.capacity * kv.bytes_per_token if kv else 0)


def bench_memory(configs: Path = DEFAULT_CONFIGS, device: str = "webgpu",
                 records: tuple[WebLLMRecord, ...] = WEBLLM_RECORDS) -> list[dict[str, Any]]:
    """One result per record: webrt's plan (bytes) and WebLLM's figure (MB)."""
    results = []
    for record in records:
        plan = plan_record(record, configs, device)
        results.append({"model_id": record.model_id, "quantization": record.quantization,
                        "context_window_size": record.context_window_size, "prefill_chunk_size": WEBLLM_PREFILL_CHUNK,
                        "device": device, **plan.to_json(), "mlc_style_total_bytes": mlc_style_total_bytes(plan),
                        "webllm_vram_required_mb": record.vram_required_mb})
    return results


def memory_table(results: list[dict[str, Any]]) -> str:
    """Markdown: webrt's plan (MB = 2**20 bytes) beside WebLLM's ``vram_required_MB``."""
    lines = [f"| model (WebLLM {WEBLLM_VERSION} id) | context | parameters | KV cache | temporary buffer | "
             "**total** | MLC-style total | WebLLM vram_required_MB |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        def mb(key: str) -> str:
            return f"{r[key] / MB:.2f}"

        over = " (over)" if r["total_bytes"] / MB > r["webllm_vram_required_mb"] else ""
        lines.append(f"| {r['model_id']} | {r['context_window_size']} | {mb('params_bytes')} | {mb('kv_cache_bytes')} | "
                     f"{mb('temp_buffer_bytes')} | **{mb('total_bytes')}**{over} | {mb('mlc_style_total_bytes')} | "
                     f"{r['webllm_vram_required_mb']:.2f} |")
    return "\n".join(lines)
