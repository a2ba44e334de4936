"""``webrt compile --subgroup-size N``: WebGPU reductions with subgroup shuffles, checked in the WGSL.

A small Llama-shaped decoder (q4f16_1, one layer) is built for WebGPU twice, without subgroups and
with 32-lane subgroups (what NVIDIA, Apple and AMD adapters report), and the shaders TVM generates
are compared kernel by kernel: every weight matmul of the subgroup build reduces K with
``subgroupShuffleDown`` and needs fewer workgroup barriers than the same kernel without subgroups,
which uses none. The library's metadata asks for the ``subgroups`` feature and names the size, which
the browser's loader checks against the adapter (tests/browser/test_browser_kernel_variants.py runs
a 4-lane build on SwiftShader and sees the 32-lane one refused there).
"""

from __future__ import annotations

import re

import pytest

from webrt.compiler.build import (
    SUBGROUP_SIZES,
    build_executable,
    check_subgroup_size,
    export_model,
    library_metadata,
    make_target,
)
from webrt.compiler.quantization import get_quantization
from webrt.errors import ModelConfigError
from webrt.models.config import TransformerConfig

CONFIG = TransformerConfig(
    architecture="LlamaForCausalLM", model_type="llama", vocab_size=1024, hidden_size=512, intermediate_size=1536,
    num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5,
    rope_theta=10000.0, context_window_size=512, prefill_chunk_size=128)
_FUNCTION = re.compile(r"^// Function: (\S+)$", re.M)


def kernels_wgsl(subgroup_size: int) -> tuple[dict[str, str], dict]:
    """name -> WGSL of each kernel of the WebGPU build, and the library's ``_metadata`` webrt block."""
    exported = export_model(CONFIG, get_quantization("q4f16_1"), make_target("webgpu", subgroup_size))
    executable = build_executable(exported, "webgpu", "gpu")
    (host,) = executable.mod.imports
    (device,) = [m for m in host.imports if m.kind == "webgpu"]
    source = device.inspect_source()
    parts = _FUNCTION.split(source)
    kernels: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        kernels[name] = kernels.get(name, "") + body
    return kernels, library_metadata(exported, "webgpu", {}, "gpu")["webrt"]


@pytest.fixture(scope="module")
def builds() -> dict[int, tuple[dict[str, str], dict]]:
    return {0: kernels_wgsl(0), 32: kernels_wgsl(32)}


def test_matmuls_reduce_with_subgroup_shuffles(builds: dict[int, tuple[dict[str, str], dict]]) -> None:
    plain, _ = builds[0]
    shuffled, _ = builds[32]
    matmuls = sorted(name for name, body in shuffled.items() if "NT_matmul" in body)
    assert len(matmuls) >= 6, sorted(shuffled)  # qkv, o, gate_up, down (decode and prefill), the LM head
    assert set(matmuls) <= set(plain)
    for name in matmuls:
        with_sg, without = shuffled[name], plain[name]
        assert "subgroupShuffleDown" in with_sg and "enable subgroups;" in with_sg, name
        assert "subgroup" not in without, name
        assert with_sg.count("workgroupBarrier") < without.count("workgroupBarrier"), name


def test_metadata_names_the_subgroup_size_and_feature(builds: dict[int, tuple[dict[str, str], dict]]) -> None:
    assert builds[0][1]["subgroup_size"] == 0
    assert builds[0][1]["required_features"] == ["shader-f16"]
    assert builds[32][1]["subgroup_size"] == 32
    assert builds[32][1]["required_features"] == ["shader-f16", "subgroups"]


@pytest.mark.parametrize("device, size, says", [
    ("webgpu", 4, "builds subgroups of 32 lanes only"),
    ("webgpu", 64, "builds subgroups of 32 lanes only"),
    ("wasm", 32, "drop it for --device wasm"),
    ("cpu", 4, "drop it for --device cpu"),
])
def test_bad_subgroup_sizes_are_refused(device: str, size: int, says: str) -> None:
    with pytest.raises(ModelConfigError, match=says):
        check_subgroup_size(device, size)
    assert [check_subgroup_size("webgpu", n) for n in SUBGROUP_SIZES] == list(SUBGROUP_SIZES)
    assert check_subgroup_size(device, 0) == 0
