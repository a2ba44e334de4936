#!/usr/bin/env bash
# Install what is missing, then run the whole test suite (native, browser and real-model tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
