"""The GPU memory plan of a model library (`webrt.wasm.webgpu.memory_plan`): the window it
suggests for a small device fits that device and is the largest that does; the compiler's own
``memory_plan`` figures win over the derived ones; an oversized weight is not blamed on the window.
(The derived KV cache and weight bytes are checked against a real device's allocations in
tests/browser/test_gpu_faults.py.)"""

from __future__ import annotations

import pytest

from webrt.errors import GPUOutOfMemoryError
from webrt.wasm.webgpu.memory_plan import check_plan, plan_memory

METADATA = {
    "params": [{"name": "embed", "shape": [32000, 576], "dtype": "float16"},
               {"name": "norm", "shape": [576], "dtype": "float32"}],
    "memory_usage": {"prefill": 9_000_000, "decode": 40_000},
    "context_window_size": 2048,
    "webrt": {"model_dtype": "float16"},
}
MODEL = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}


def chat(window: int, sliding: bool = False) -> dict:
    return {"model_config": MODEL, "context_window_size": -1 if sliding else window,
            "sliding_window_size": window if sliding else -1}


@pytest.mark.parametrize("sliding", [False, True])
@pytest.mark.parametrize("limit", [200_000, 1 << 20, 3_333_333])
def test_the_suggested_window_is_the_largest_that_fits(limit: int, sliding: bool) -> None:
    plan = plan_memory(METADATA, chat(8192, sliding))
    assert plan.kv_layer_bytes > limit
    fit = plan.largest_window_within(limit)
    assert fit > 0 and fit % 16 == 0
    assert plan_memory(METADATA, chat(fit, sliding)).kv_layer_bytes <= limit
    assert plan_memory(METADATA, chat(fit + 16, sliding)).kv_layer_bytes > limit


def test_derived_figures() -> None:
    plan = plan_memory(METADATA, chat(2048))
    assert plan.params_bytes == 32000 * 576 * 2 + 576 * 4 and plan.largest_param == ("embed", 32000 * 576 * 2)
    # TVM's paged cache: (ceil(window / 16) + 1) pages x 2 (K, V) x kv heads x 16 x head_dim, per layer
    assert plan.kv_layer_bytes == (2048 // 16 + 1) * 2 * 3 * 16 * 64 * 2
    # and two 256 x 256 int32 tree-attention masks (one sequence) whatever the window
    assert plan.kv_cache_bytes == 30 * plan.kv_layer_bytes + 2 * 256 * 256 * 4
    assert plan.temp_buffer_bytes == 9_000_000
    assert plan.total_bytes == plan.params_bytes + plan.kv_cache_bytes + plan.temp_buffer_bytes


def test_the_compilers_memory_plan_wins() -> None:
    recorded = {"params_bytes": 111, "kv_cache_bytes": 222, "temp_buffer_bytes": 333, "total_bytes": 666}
    plan = plan_memory({**METADATA, "memory_plan": recorded}, chat(2048))
    assert (plan.params_bytes, plan.kv_cache_bytes, plan.temp_buffer_bytes) == (111, 222, 333)
    # with another window than the library's, its KV figure no longer holds: derived again
    assert plan_memory({**METADATA, "memory_plan": recorded}, chat(1024)).kv_cache_bytes != 222


def test_check_plan_names_the_cause_and_the_ways_out() -> None:
    limits = {"maxBufferSize": 1 << 30, "maxStorageBufferBindingSize": 40_000_000}
    check_plan(plan_memory(METADATA, chat(2048)), limits, "test adapter")  # fits
    with pytest.raises(GPUOutOfMemoryError, match=r"KV cache \(65536 tokens\).*'context_window_size': \d+"):
        check_plan(plan_memory(METADATA, chat(65536)), limits, "test adapter")
    with pytest.raises(GPUOutOfMemoryError) as caught:
        check_plan(plan_memory(METADATA, chat(2048)), {"maxStorageBufferBindingSize": 1 << 20}, "test adapter")
    message = str(caught.value)
    assert "weight 'embed'" in message and "context_window_size" not in message
    assert "quantization" in message and "model_lib_cpu" in message
