#!/usr/bin/env python3
"""Build (or find cached) TVM web runtime objects for webrt's WebGPU model libraries.

Usage: python build_web.py [--force] [--jobs N]
Prints the directory that holds wasm_runtime.o, tvmjs_support.o and webgpu_runtime.o.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from webrt.compiler.linking.web_runtime import ensure_web_runtime
from webrt.errors import ToolchainError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--jobs", type=int, default=None, help="parallel emcc processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    try:
        out = ensure_web_runtime(force=args.force, jobs=args.jobs)
    except ToolchainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    logging.info("done in %.1f s", time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
