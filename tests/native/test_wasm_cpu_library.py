"""`webrt compile --device wasm`: the CPU model library for the browser.

The CPU pipeline and schedules with TVM's LLVM target for wasm32 + simd128 (host the same),
`relax.build(..., system_lib=True)`, linked by `export_wasm(..., webgpu=False)` against TVM's web
runtime objects `wasm_runtime` and `tvmjs_support` only. Checked here on the tiny Llama: the
target, the file name, the link (a WebGPU library's 11 imports plus its shared memory, which it
exports too, webrt's thread pool, no WebGPU runtime inside) and the device recorded in `_metadata`. Running it (logits against the native CPU
library, the loader's choice, the Engine) is tests/browser/test_browser_cpu_wasm.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from webrt.compiler.build import DEVICES, WASM_DEVICES, make_target
from webrt.compiler.compile import compile_model, default_library_name
from webrt.compiler.linking import web_runtime
from webrt.compiler.linking.wasm_export import wasm_exports, wasm_imports
from webrt.errors import ModelConfigError
from webrt.wasm.threads import POOL_EXPORTS

#: The devices the tiny model is built for by the CPU-library tests (one cached build).
TINY_DEVICES = ("cpu", "webgpu", "wasm")

#: Every import of a model library linked by export_wasm, WebGPU or CPU alike.
EXPECTED_IMPORTS = sorted([
    ("env", "TVMFFIWasmSafeCall"),
    ("env", "TVMFFIWasmFunctionDeleter"),
    ("env", "emscripten_notify_memory_growth"),
    *(("wasi_snapshot_preview1", name) for name in (
        "clock_time_get", "environ_get", "environ_sizes_get", "fd_close", "fd_read", "fd_seek", "fd_write",
        "proc_exit")),
])


def tiny_wasm_artifacts() -> Any:
    """The tiny Llama (q0f32) for cpu, webgpu and wasm; skips without emcc."""
    if shutil.which("emcc") is None:
        pytest.skip("emcc is not installed (apt-get install emscripten)")
    import model_factory

    return model_factory.tiny_artifacts("llama2", devices=TINY_DEVICES)


@pytest.fixture(scope="module")
def art() -> Any:
    return tiny_wasm_artifacts()


def test_wasm_target_is_wasm32_simd_with_the_same_host() -> None:
    target = make_target("wasm")
    assert target.kind.name == "llvm"
    assert str(target.attrs["mtriple"]) == "wasm32-unknown-unknown-wasm"
    assert "+simd128" in [str(a) for a in target.attrs["mattr"]]
    assert str(target.host.attrs["mtriple"]) == "wasm32-unknown-unknown-wasm"
    from tvm.target.codegen import llvm_get_vector_width

    assert llvm_get_vector_width(target) == 256  # two f32x4 accumulators per matmul row
    assert "wasm" in DEVICES and set(WASM_DEVICES) == {"webgpu", "wasm"}


def test_default_name_is_a_wasm_file() -> None:
    cfg = {"model_type": "llama", "quantization": "q4f32_1"}
    assert default_library_name(cfg, "wasm") == "llama-q4f32_1-wasm.wasm"
    assert default_library_name(cfg, "cpu").endswith(".so")


def test_unknown_device_lists_wasm(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="webgpu, cpu, wasm"):
        compile_model(tmp_path / "mlc-chat-config.json", "wasm-gpu", tmp_path)


def test_cpu_runtime_objects_leave_out_webgpu(tmp_path: Path) -> None:
    names = [p.name for p in web_runtime.object_paths(tmp_path, webgpu=False)]
    assert names == ["wasm_runtime.o", "tvmjs_support.o"]
    assert [p.name for p in web_runtime.object_paths(tmp_path)][-1] == "webgpu_runtime.o"


def test_links_with_the_webgpu_library_imports_and_no_webgpu_runtime(art: Any) -> None:
    cpu, gpu = art.libs["wasm"], art.libs["webgpu"]
    assert cpu.read_bytes()[:4] == b"\0asm"
    # the CPU library imports its (shared) memory for webrt.wasm.threads and exports it again
    assert sorted(wasm_imports(cpu)) == sorted([*EXPECTED_IMPORTS, ("env", "memory")])
    assert sorted(wasm_imports(gpu)) == EXPECTED_IMPORTS
    exports = set(wasm_exports(cpu))
    for name in ("memory", "TVMFFIFunctionCall", "TVMFFIFunctionGetGlobal", "TVMWasmAllocSpace",
                 "TVMFFIEnvModRegisterSystemLibSymbol", *POOL_EXPORTS, "stackRestore"):
        assert name in exports, name
    assert not set(POOL_EXPORTS) & set(wasm_exports(gpu))
    # webgpu_runtime.cc registers `device_api.webgpu`: in the WebGPU library only
    assert b"device_api.webgpu" in gpu.read_bytes()
    assert b"device_api.webgpu" not in cpu.read_bytes()


def test_metadata_records_the_device(art: Any) -> None:
    # `_metadata` returns a string constant of the library: its JSON is in the data section
    assert b'"device": "wasm"' in art.libs["wasm"].read_bytes()
    assert b'"device": "webgpu"' in art.libs["webgpu"].read_bytes()


# --- the record and the adapter, as the browser loader reads them (pure Python) -----------------


def test_model_record_names_both_libraries() -> None:
    from webrt.engine.config import ModelRecord

    record = ModelRecord.from_dict({"model": "/m", "model_id": "m", "model_lib": "/gpu.wasm",
                                    "model_lib_cpu": "/cpu.wasm"})
    assert (record.model_lib, record.model_lib_cpu, record.device) == ("/gpu.wasm", "/cpu.wasm", "auto")
    assert ModelRecord.from_dict({"model": "/m", "model_id": "m", "model_lib": "/gpu.wasm"}).model_lib_cpu is None
    with pytest.raises(ModelConfigError, match="names no model_lib_cpu"):
        ModelRecord.from_dict({"model": "/m", "model_id": "m", "model_lib": "/gpu.wasm", "device": "cpu"})
    with pytest.raises(ModelConfigError, match="device must be one of"):
        ModelRecord.from_dict({"model": "/m", "model_id": "m", "model_lib": "/gpu.wasm", "device": "gpu"})


def test_fallback_adapter_is_read_from_info_or_the_older_attribute() -> None:
    from webrt.wasm.webgpu.device import GPUInfo

    class OldAdapter:
        isFallbackAdapter = True

    assert GPUInfo(None, None, frozenset(), {}, {"isFallbackAdapter": True}).is_fallback
    assert GPUInfo(OldAdapter(), None, frozenset(), {}, {}).is_fallback
    real = GPUInfo(object(), None, frozenset(), {}, {"vendor": "nvidia", "isFallbackAdapter": False})
    assert not real.is_fallback and "fallback" not in real.description
