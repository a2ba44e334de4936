"""The two q4 encoders write MLC's layout: MLC-LLM's formula (scale = max|w| / 7, codes 0..14,
what MLC's own conversion writes) and webrt's search over scales (all 16 codes), which never has
more squared error on a group than the formula, since the formula's scale is one it tries."""

from __future__ import annotations

import numpy as np
import pytest

from webrt.compiler.quantization import QUANTIZATIONS, quantize_grouped
from webrt.errors import UnsupportedQuantizationError


def decode(packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    codes = (packed[..., None] >> (np.arange(8, dtype=np.uint32) * 4)) & 0xF
    codes = codes.reshape(*packed.shape[:-1], -1).astype(np.float32) - 7
    return codes * np.repeat(scale.astype(np.float32), 32, axis=-1)


@pytest.mark.parametrize("name", ["q4f32_1", "q4f16_1"])
def test_mlc_formula_and_search(name: str) -> None:
    quant = QUANTIZATIONS[name]
    w = (np.random.default_rng(0).standard_normal((16, 256)) * np.linspace(0.01, 2, 256)).astype(np.float32)
    packed, scale = quantize_grouped(w, quant, "mlc")
    groups = w.reshape(16, 8, 32)
    expected_scale = (np.abs(groups).max(axis=-1) / 7).astype(quant.model_dtype)
    np.testing.assert_array_equal(scale, expected_scale)
    codes = ((packed[..., None] >> (np.arange(8, dtype=np.uint32) * 4)) & 0xF)
    assert codes.max() <= 14
    mlc_err = np.square(decode(packed, scale) - w).reshape(16, 8, 32).sum(-1)
    search_err = np.square(decode(*quantize_grouped(w, quant)) - w).reshape(16, 8, 32).sum(-1)
    assert np.all(search_err <= mlc_err * (1 + 1e-6)) and search_err.sum() < mlc_err.sum()
    with pytest.raises(UnsupportedQuantizationError, match="q4 encoder"):
        quantize_grouped(w, quant, "awq")
