"""Where webrt's own files are, in a checkout and in an installed wheel (one place for the rule)."""

from __future__ import annotations

from pathlib import Path

import webrt

#: The installed ``webrt`` package folder.
PACKAGE_DIR = Path(webrt.__file__).resolve().parent
#: The page-side scripts that boot Pyodide and webrt (served at ``/runtime/``).
BOOT_DIR = PACKAGE_DIR / "wasm" / "js"
#: The checkout holding the package, when webrt runs from one (None in a wheel install).
CHECKOUT_DIR: Path | None = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file() else None


def default_site_dir() -> Path:
    """The chat demo: ``webrt/site``, a link to the checkout's ``site/`` that a wheel carries as files."""
    return PACKAGE_DIR / "site"


def find_node_package(name: str) -> Path:
    """An npm package folder: ``node_modules/<name>`` under the working folder, else the checkout's."""
    candidates = [Path.cwd() / "node_modules" / name]
    if CHECKOUT_DIR is not None:
        candidates.append(CHECKOUT_DIR / "node_modules" / name)
    return next((p.resolve() for p in candidates if p.is_dir()), candidates[-1])
