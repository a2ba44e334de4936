"""Markdown tables for `webrt bench` results."""

from __future__ import annotations

import statistics
from typing import Any


def _s(ms: float) -> str:
    return f"{ms / 1000:.1f} s"


def browser_table(results: list[dict[str, Any]]) -> str:
    """One row per model: TVM's JS runtime vs webrt, same .wasm, weights and browser."""
    lines = [
        "| model | runtime | ready, cold cache | ready, warm cache (pipelines) | prefill | decode ms/token | host ms/step (share) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["summary"]
        lines.append(f"| {r['label']} | TVM JS runtime (tvmjs) | {_s(s['tvmjs_ready_cold_ms'])} | "
                     f"{_s(s['tvmjs_ready_warm_ms'])} ({s['tvmjs_kernels']}) | {s['tvmjs_prefill_ms']:.0f} ms | "
                     f"{s['tvmjs_step_ms']:.1f} | {s['tvmjs_host_ms']:.1f} |")
        lines.append(f"| {r['label']} | webrt (Python on Pyodide) | {_s(s['webrt_ready_cold_ms'])} | "
                     f"{_s(s['webrt_ready_warm_ms'])} ({s['webrt_kernels_warm']}) | {s['webrt_prefill_ms']:.0f} ms | "
                     f"{s['webrt_step_ms']:.1f} (**{s['step_ratio']:.2f}x**) | "
                     f"{s['webrt_host_ms']:.1f} (**{100 * s['webrt_host_fraction']:.0f}%**) |")
    return "\n".join(lines)


def browser_notes(results: list[dict[str, Any]]) -> str:
    notes = []
    for r in results:
        s = r["summary"]
        notes.append(f"- {r['label']}: {s['steps']} timed decode steps, {s['dispatches_per_step']:.0f} dispatches per step; "
                     f"same tokens from both runtimes: {'yes' if s['tokens_equal'] else 'NO'}; webrt's Pyodide boot "
                     f"(not in 'ready'): {_s(s['webrt_boot_ms'])}.")
    return "\n".join(notes)


def sampling_table(results: list[dict[str, Any]]) -> str:
    """webrt's ways from the last logits to a token id, each ending in a 4-byte readback."""
    names = {"argmax": "greedy (argmax)", "sample": "sample, top_p = 1 (inverse CDF)",
             "top_p_0.9": "top_p = 0.9, no sort (webrt)", "top_p_0.9_sorted": "top_p = 0.9, argsort + sample_with_top_p (WebLLM's pair)"}
    rows = [r for r in results if r["summary"].get("webrt_sampling_ms")]
    lines = ["| model | " + " | ".join(names.values()) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        ms = r["summary"]["webrt_sampling_ms"]
        lines.append(f"| {r['label']} | " + " | ".join(f"{ms[k]:.1f} ms" for k in names) + " |")
    return "\n".join(lines) if rows else ""


def native_table(results: list[dict[str, Any]]) -> str:
    lines = ["| model | runtime | threads | prefill | decode ms/token |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['runtime']} | {r['threads']} | {r['prefill_ms']:.0f} ms "
                     f"({r['prompt_len']} tokens) | {r['median_ms']:.1f} |")
    return "\n".join(lines)


def quality_table(results: list[dict[str, Any]]) -> str:
    """One row per model: teacher-forced perplexity and KL against the reference model."""
    lines = ["| model | quantization | library | tokens | perplexity | reference perplexity | difference "
             "| mean KL (nats) | top-1 agreement |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['quantization']} | {r['where']} | {r['tokens']} | {r['ppl']:.3f} | "
                     f"{r['reference_ppl']:.3f} "
                     f"| {r['ppl_delta_pct']:+.2f}% | {r['mean_kl']:.4f} | {100 * r['top1_agreement']:.1f}% |")
    return "\n".join(lines)


def _median_ms(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def wllama_table(results: list[dict[str, Any]]) -> str:
    """The CPU in the browser: webrt's CPU library (wasm) and llama.cpp's wasm build (wllama) on
    the GGUF, beside webrt's WebGPU decode step."""
    rows = [r for r in results if r.get("wllama") or r.get("webrt_cpu")]
    lines = ["| model | runtime | threads | ready, cold cache | ready, warm cache | prefill | decode ms/token "
             "| webrt's step / this |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        webrt_step = r["summary"]["webrt_step_ms"]
        ref = r.get("tvmjs_cpu")
        if ref:
            cold, step = ref["cold"], _median_ms(ref["cold"]["stepMs"])
            lines.append(f"| {r['label']} | TVM JS runtime (tvmjs), webrt's CPU library | {ref['threads']} | "
                         f"{_s(cold['readyMs'])} | - | {cold['prefillMs']:.0f} ms | {step:.1f} | {webrt_step / step:.1f}x |")
        cpu = r.get("webrt_cpu")
        if cpu:
            cold, step = cpu["cold"], _median_ms(cpu["cold"]["stepMs"])
            same = "same tokens as WebGPU" if cold["tokens"] == r["webrt"]["cold"]["tokens"] else "tokens differ from WebGPU"
            lines.append(f"| {r['label']} | webrt CPU library (wasm32+simd128; {same}) | {cpu['threads']} | "
                         f"{_s(cold['readyMs'])} | {_s(cpu['warm']['readyMs'])} | {cold['prefillMs']:.0f} ms "
                         f"({cold['promptTokens']} tokens) | {step:.1f} | {webrt_step / step:.1f}x |")
        for w in r.get("wllama") or []:
            cold = w["cold"]
            lines.append(f"| {r['label']} | llama.cpp wasm (wllama), GGUF | {w['threads']} | {_s(cold['readyMs'])} | "
                         f"{_s(w['warm']['readyMs'])} | {cold['prefillMs']:.0f} ms ({cold['promptTokens']} tokens) | "
                         f"{cold['decodeMsPerToken']:.1f} | {webrt_step / cold['decodeMsPerToken']:.1f}x |")
    return "\n".join(lines) if rows else ""
