"""Pack webrt's browser packages into a zip that the page unpacks into Pyodide.

Runs on CPython (``webrt serve``, the benchmarks and the tests build the zip on the fly); the
browser side is ``webrt/wasm/js/boot.js``, which fetches the zip and calls
``pyodide.unpackArchive`` on it. The bundle is an allow-list: only the packages below run in the
browser (no compiler, no native host, no tools).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from webrt.tools.paths import PACKAGE_DIR

#: What runs in the browser, relative to the folder holding the ``webrt`` package.
BROWSER_PARTS: tuple[str, ...] = (
    "webrt/__init__.py",
    "webrt/errors.py",
    "webrt/chat_config.py",
    "webrt/wasm",
    "webrt/engine",
    "webrt/tokenizer",
    "webrt/conversation",
    "webrt/ndarray_cache",
)
#: The file kinds a browser package may hold.
BUNDLED_SUFFIXES = (".py", ".json")


def bundle_files(root: Path = PACKAGE_DIR.parent) -> list[Path]:
    """The .py and .json files of `BROWSER_PARTS` under `root`, sorted."""
    files: list[Path] = []
    for part in BROWSER_PARTS:
        path = root / part
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.suffix in BUNDLED_SUFFIXES and "__pycache__" not in p.parts]
        else:
            raise FileNotFoundError(f"{path} is missing; reinstall webrt.")
    return sorted(files)


def build_bundle(root: Path = PACKAGE_DIR.parent) -> bytes:
    """A deterministic zip of `bundle_files`, paths relative to `root` (``webrt/...``)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in bundle_files(root):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return out.getvalue()
