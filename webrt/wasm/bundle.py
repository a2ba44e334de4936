"""Pack webrt's pure-Python packages into a zip that the browser unpacks into Pyodide.

Runs on CPython (the dev server / tests build the zip on the fly); the browser side is
`site/runtime/boot.js`, which fetches the zip and calls `pyodide.unpackArchive` on it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

#: The modules and packages the browser runtime needs (no compiler, no native backend).
BROWSER_PARTS: tuple[str, ...] = (
    "webrt/__init__.py",
    "webrt/errors.py",
    "webrt/wasm",
    "webrt/engine",
    "webrt/tokenizer",
    "webrt/conversation",
    "webrt/ndarray_cache",
)
#: Files inside those packages that only the build side uses.
_SKIP = {"webrt/wasm/bundle.py", "webrt/wasm/serve.py", "webrt/tokenizer/gen_bert_tables.py",
         "webrt/tokenizer/bench.py"}


def bundle_files(repo_root: str | Path) -> list[Path]:
    """The .py (and .json) files of `BROWSER_PARTS` under `repo_root`, sorted."""
    root = Path(repo_root)
    files: list[Path] = []
    for part in BROWSER_PARTS:
        path = root / part
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.suffix in (".py", ".json") and "__pycache__" not in p.parts]
        else:
            raise FileNotFoundError(f"{path} is missing; is {root} a webrt checkout?")
    return sorted(p for p in files if p.relative_to(root).as_posix() not in _SKIP)


def build_bundle(repo_root: str | Path) -> bytes:
    """A deterministic zip of `bundle_files`, paths relative to `repo_root` (``webrt/...``)."""
    root = Path(repo_root)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in bundle_files(root):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return out.getvalue()
