"""Shared test set-up: each test folder says where its tests run, as a marker.

    tests/unit/     pure Python: no model build, no browser (seconds)
    tests/native/   tiny models built with TVM, run on TVM's native runtime (and Pyodide in Node)
    tests/browser/  headless Chromium with WebGPU (SwiftShader here): marked `slow` too
    tests/model/    the real SmolLM2-135M GGUF: marked `slow` too

``pytest -m "not slow"`` runs unit + native (and leaves out the few browser tests that live in
native files); ``pytest -m browser`` only the browser tests. The helpers the folders share
(`model_factory`, `engine_util`, `browser_util`, `pyodide_util`) live beside this file.
"""

from __future__ import annotations

import sys
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
#: Native tests that take long on 2 cores (fuzzing, the soak, whole-library links, Pyodide in
#: Node): the full suite runs them; the quick ``-m "not slow"`` answer leaves them out.
SLOW_NATIVE = (
    "native/test_input_fuzz.py", "native/test_request_properties.py", "native/test_wasm_cpu_library.py",
    "native/test_gguf_model.py", "native/test_chat_template_engine_pyodide.py", "native/test_engine_pyodide.py",
    "native/test_soak.py", "native/test_cli.py::test_cli_end_to_end",
    "native/test_wasm_ffi.py::test_model_library_needs_no_asyncify",
)


# Test files import the shared helpers beside this file and, now and then, each other's fixtures
# across folders: every folder is importable whatever order pytest collects them in.
for _folder in (TESTS_DIR, *(TESTS_DIR / group for group in GROUP_MARKERS)):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = Path(str(item.fspath)).resolve().relative_to(TESTS_DIR).parts[0]
        for name in GROUP_MARKERS.get(group, ()):
            item.add_marker(name)
        if item.get_closest_marker("slow") is None and (
                item.get_closest_marker("browser") is not None  # a browser test in a native file
                or any(item.nodeid.startswith(f"tests/{slow}") for slow in SLOW_NATIVE)):
            item.add_marker("slow")



@pytest.fixture(scope="session")
def hf_dir() -> Path:
    """A tiny Llama-2-style Hugging Face folder (seeded, cached) for the compiler CLI tests."""
    from model_factory import cache_root, make_tiny_hf

    path = cache_root() / "hf-cli-llama-v1"
    if not (path / "config.json").is_file():
        make_tiny_hf("llama2", path, seed=3)
    return path
