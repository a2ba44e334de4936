"""Pack webrt's browser packages into a zip that the page unpacks into Pyodide.

Runs on CPython (``webrt serve``, the benchmarks and the tests build the zip on the fly); the
browser side is ``webrt/wasm/js/boot.js``, which fetches the zip and calls
``pyodide.unpackArchive`` on it. The bundle is an allow-list: only the packages below run in the
browser (no compiler, no native host, no tools).
"""

from __future__ import annotations

import importlib.util
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
#: Pure-Python packages the browser parts import (Pyodide's npm runtime ships no wheels):
#: jinja2 renders models' own chat templates; markupsafe is its one dependency (without its
#: optional C speed-up, it uses its pure-Python twin).
THIRD_PARTY: tuple[str, ...] = ("jinja2", "markupsafe")
#: The file kinds a browser package may hold.
BUNDLED_SUFFIXES = (".py", ".json")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the browser bundle needs the {name} package: pip install {name}")
    return Path(list(spec.submodule_search_locations)[0])


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


def third_party_files() -> list[tuple[str, Path]]:
    """(zip path, file) for the .py files of `THIRD_PARTY`, sorted."""
    files = []
    for name in THIRD_PARTY:
        folder = _package_dir(name)
        files += [(f"{name}/{p.relative_to(folder).as_posix()}", p) for p in folder.rglob("*.py")
                  if "__pycache__" not in p.parts]
    return sorted(files)


def build_bundle(root: Path = PACKAGE_DIR.parent) -> bytes:
    """A deterministic zip of `bundle_files` (paths ``webrt/...`` relative to `root`) and the
    third-party packages (``jinja2/...``, ``markupsafe/...``)."""
    entries = [(path.relative_to(root).as_posix(), path) for path in bundle_files(root)] + third_party_files()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, path in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return out.getvalue()
