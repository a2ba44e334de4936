"""Shared test set-up: each test folder says where its tests run, as a marker.

    tests/unit/     pure Python: no model build, no browser (seconds)
    tests/native/   tiny models built with TVM, run on TVM's native runtime (and Pyodide in Node)
    tests/browser/  headless Chromium with WebGPU (SwiftShader here): marked `slow` too
    tests/model/    the real SmolLM2-135M GGUF: marked `slow` too

``pytest -m "not slow"`` runs unit + native; ``pytest -m browser`` only the browser tests. The
helpers shared by the folders (`model_factory`, `browser_util`, `pyodide_util`) live beside
this file, which pytest puts on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: folder -> the markers its tests get
GROUP_MARKERS: dict[str, tuple[str, ...]] = {
    "unit": ("unit",),
    "native": ("native",),
    "browser": ("browser", "slow"),
    "model": ("model", "slow"),
}
TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = Path(str(item.fspath)).resolve().relative_to(TESTS_DIR).parts[0]
        for name in GROUP_MARKERS.get(group, ()):
            item.add_marker(name)


@pytest.fixture(scope="session")
def tiny_llama() -> object:
    """The tiny Llama-2-style model's artifacts (CPU library; built once, cached on disk)."""
    import model_factory

    return model_factory.tiny_artifacts("llama2")
