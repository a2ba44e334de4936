"""Llama-3 RoPE scaling from a GGUF's ``rope_freqs`` tensor.

llama.cpp stores Llama-3.1/3.2 RoPE scaling as one divisor per rotary frequency (``rope_freqs``:
``inv_freq / divisor`` is the frequency used) instead of the ``rope_scaling`` parameters. The
Llama-3 rule that produced them is piecewise in the wavelength ``w = 2 pi / inv_freq``:

- ``w < L / high``: divisor 1;  ``w > L / low``: divisor ``factor``;
- in between: ``1 / divisor = (1 - s) / factor + s`` with ``s = (L / w - low) / (high - low)``.

Every Llama-3.x release uses ``low = 1`` and ``high = 4``; with those fixed, ``factor`` is the
largest divisor and ``L`` (original_max_position_embeddings) follows from any in-between
frequency, or from the edge of the scaled band when there is none. The parameters found are
checked by recomputing every divisor, so a file made by another rule is refused, not misread.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from webrt.errors import ModelConfigError

LOW_FREQ_FACTOR = 1.0
HIGH_FREQ_FACTOR = 4.0
TOLERANCE = 1e-4  # relative, on each divisor (the file holds them as float32)


def _tidy(value: float) -> float:
    """``value`` rounded to 3 decimals when float32 storage is all that separates them (8.000001 -> 8)."""
    rounded = round(value, 3)
    return float(rounded) if abs(value - rounded) <= 1e-5 * max(1.0, abs(value)) else value


def llama3_divisors(inv_freq: np.ndarray, factor: float, original_max: float,
                    low: float = LOW_FREQ_FACTOR, high: float = HIGH_FREQ_FACTOR) -> np.ndarray:
    """The per-frequency divisors of Llama-3 RoPE scaling."""
    wavelen = 2 * math.pi / inv_freq
    smooth = np.clip((original_max / wavelen - low) / (high - low), 0.0, 1.0)
    return 1.0 / ((1 - smooth) / factor + smooth)


def llama3_scaling_from_divisors(divisors: np.ndarray, theta: float, rotary_dim: int) -> dict[str, Any] | None:
    """The ``rope_scaling`` dict (HF's Llama-3 form) that reproduces ``divisors``; None if all are 1."""
    divisors = np.asarray(divisors, dtype=np.float64).reshape(-1)
    if divisors.shape[0] != rotary_dim // 2:
        raise ModelConfigError(
            f"rope_freqs has {divisors.shape[0]} entries but the rotary dimension {rotary_dim} needs "
            f"{rotary_dim // 2}; the GGUF is inconsistent."
        )
    if np.allclose(divisors, 1.0, rtol=0, atol=TOLERANCE):
        return None
    inv_freq = theta ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    wavelen = 2 * math.pi / inv_freq
    factor = _tidy(float(divisors.max()))
    smooth = (1 / divisors - 1 / factor) / (1 - 1 / factor)
    between = (smooth > TOLERANCE) & (smooth < 1 - TOLERANCE)
    span = HIGH_FREQ_FACTOR - LOW_FREQ_FACTOR
    if between.any():  # s = (L / w - low) / span, so L = w (s span + low)
        original_max = float(np.median(wavelen[between] * (smooth[between] * span + LOW_FREQ_FACTOR)))
    else:  # any L with the unscaled band below L / high and the scaled band above L / low
        original_max = float(wavelen[smooth <= TOLERANCE].min()) * LOW_FREQ_FACTOR
    original_max = _tidy(original_max)
    expected = llama3_divisors(inv_freq, factor, original_max)
    if not np.allclose(expected, divisors, rtol=TOLERANCE, atol=0):
        raise ModelConfigError(
            "this GGUF's rope_freqs do not follow Llama-3 RoPE scaling (low_freq_factor 1, high_freq_factor 4); "
            "convert from the Hugging Face safetensors, whose config.json names the scaling."
        )
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": LOW_FREQ_FACTOR,
        "high_freq_factor": HIGH_FREQ_FACTOR,
        "original_max_position_embeddings": int(original_max) if original_max.is_integer() else original_max,
    }
