"""Which library the browser loader picks for what the adapter reports (``model_lib``,
``model_lib_fallback``, ``model_lib_cpu``), the refusals naming the library to use instead, and the
``--kernels`` / ``model_lib_fallback`` inputs (``webrt serve --model-lib-fallback``: test_serve). The adapter is a `GPUInfo` as `request_device`
builds it from ``GPUAdapter.info``; the loader's choice and `check_library` run unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from webrt.compiler.compile import compile_model, default_library_name
from webrt.engine.config import ModelRecord
from webrt.errors import FeatureNotSupportedError, ModelConfigError
from webrt.wasm.loader import CPU, WEBGPU, WebGPUModelLoader, refusal_naming_alternatives
from webrt.wasm.webgpu.device import GPUInfo
from webrt.wasm.webgpu.features import check_library

SOFTWARE = {"vendor": "google", "architecture": "swiftshader", "isFallbackAdapter": True}
HARDWARE = {"vendor": "nvidia", "architecture": "ada", "isFallbackAdapter": False}


def adapter(info: dict, features: frozenset[str] = frozenset(), subgroup: int = 32) -> GPUInfo:
    return GPUInfo(None, None, features, {}, info, subgroup, subgroup)


def record(**libs: str) -> ModelRecord:
    return ModelRecord(model="/m", model_id="m", model_lib="/gpu.wasm", **libs)


def choose(rec: ModelRecord, gpu: GPUInfo, device: str = "auto") -> tuple[str, str]:
    choice = asyncio.run(WebGPUModelLoader(gpu=gpu, device=device).choose_library(rec))
    return choice.library, choice.field


@pytest.mark.parametrize("libs, gpu, expected", [
    ({}, SOFTWARE, (WEBGPU, "model_lib")),
    ({}, HARDWARE, (WEBGPU, "model_lib")),
    ({"model_lib_fallback": "/fb.wasm"}, SOFTWARE, (WEBGPU, "model_lib_fallback")),
    ({"model_lib_fallback": "/fb.wasm"}, HARDWARE, (WEBGPU, "model_lib")),
    ({"model_lib_cpu": "/cpu.wasm"}, SOFTWARE, (CPU, "model_lib_cpu")),
    ({"model_lib_cpu": "/cpu.wasm", "model_lib_fallback": "/fb.wasm"}, SOFTWARE, (CPU, "model_lib_cpu")),
    ({"model_lib_cpu": "/cpu.wasm", "model_lib_fallback": "/fb.wasm"}, HARDWARE, (WEBGPU, "model_lib")),
])
def test_the_adapter_picks_the_library(libs: dict, gpu: dict, expected: tuple[str, str]) -> None:
    assert choose(record(**libs), adapter(gpu)) == expected


def test_asking_for_webgpu_on_a_fallback_adapter_takes_the_fallback_variant() -> None:
    both = record(model_lib_cpu="/cpu.wasm", model_lib_fallback="/fb.wasm")
    assert choose(both, adapter(SOFTWARE), device="webgpu") == (WEBGPU, "model_lib_fallback")
    assert choose(both, adapter(HARDWARE), device="webgpu") == (WEBGPU, "model_lib")
    assert choose(both, adapter(HARDWARE), device="cpu") == (CPU, "model_lib_cpu")


def test_a_library_needing_what_the_adapter_lacks_names_the_one_to_load() -> None:
    """A subgroup build on an adapter with smaller subgroups: the fallback variant (no subgroups) and
    the CPU library can run; a shader-f16 build on an adapter without it: only the CPU library."""
    rec = record(model_lib_cpu="/cpu.wasm", model_lib_fallback="/fb.wasm")
    subgroups = {"quantization": "q4f32_1", "webrt": {"device": "webgpu", "subgroup_size": 32}}
    with pytest.raises(FeatureNotSupportedError) as caught:
        check_library(subgroups, adapter(HARDWARE, frozenset({"subgroups"}), subgroup=16))
    message = str(refusal_naming_alternatives(caught.value, rec, "model_lib", subgroups))
    assert "subgroups of 32" in message and "'/fb.wasm'" in message and "'/cpu.wasm'" in message
    f16 = {"quantization": "q4f16_1", "webrt": {"device": "webgpu", "model_dtype": "float16",
                                                "required_features": ["shader-f16"], "subgroup_size": 0}}
    with pytest.raises(FeatureNotSupportedError) as caught:
        check_library(f16, adapter(HARDWARE))
    message = str(refusal_naming_alternatives(caught.value, rec, "model_lib", f16))
    assert "q4f32_1" in message and "'/cpu.wasm'" in message and "/fb.wasm" not in message
    alone = record()
    assert refusal_naming_alternatives(caught.value, alone, "model_lib", f16) is caught.value


def test_model_lib_fallback_is_checked() -> None:
    rec = ModelRecord.from_dict({"model": "/m", "model_id": "m", "model_lib": "/gpu.wasm",
                                 "model_lib_fallback": "/fb.wasm"})
    assert (rec.model_lib, rec.model_lib_fallback) == ("/gpu.wasm", "/fb.wasm")
    for bad in ("", 3):
        with pytest.raises(ModelConfigError, match="model_lib_fallback must be a non-empty string"):
            record(model_lib_fallback=bad)


def test_kernels_option_is_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="drop it for --device cpu"):
        compile_model(tmp_path / "missing.json", "cpu", tmp_path, kernels="gpu")
    with pytest.raises(ModelConfigError, match="unknown kernel variant 'fast'"):
        compile_model(tmp_path / "missing.json", "webgpu", tmp_path, kernels="fast")
    config = {"model_type": "llama", "quantization": "q4f32_1"}
    assert default_library_name(config, "webgpu") == "llama-q4f32_1-webgpu.wasm"
    assert default_library_name(config, "webgpu", "fallback") == "llama-q4f32_1-webgpu-fallback.wasm"
