"""``webrt bench``: measured speed of webrt against references, side by side in one run.

- `browser_bench`: the same WebGPU library (.wasm) and weights driven by TVM's own JS runtime
  (npm ``@mlc-ai/web-runtime``, WebLLM's call sequence; `tvmjs_bench.js`) and by webrt's Python
  runtime (`page_bench.py`, run by Pyodide), each in a fresh headless Chromium profile: time to
  ready (cold and warm cache), prefill, decode ms/token, webrt's host time per step.
- `native_bench`: the CPU library on TVM's runtime beside HF transformers (fp32, same GGUF).
- `memory_bench`: the memory plan of real model shapes (config.json only, no code generation)
  beside WebLLM's ``vram_required_MB``.
- `report`: the Markdown tables.
"""
