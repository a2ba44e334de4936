"""The library's on-device sampling and logit-processing functions against numpy.

Run through the CPU library of a tiny model (vocab 320: not a power of two, so the bitonic
argsort pads). The same TIR is compiled for WebGPU; the browser tests cover that build.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from model_factory import tiny_artifacts
from webrt.native.backend import NativeBackend

RNG = np.random.RandomState(11)


@pytest.fixture(scope="module")
def lib() -> NativeBackend:
    art = tiny_artifacts("llama2")
    return NativeBackend(art.model_dir, art.libs["cpu"])


def t(a: np.ndarray) -> tvm.runtime.Tensor:
    return tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu())


def logits_like(lib: NativeBackend) -> np.ndarray:
    vocab = lib.metadata["webrt"]["vocab_size"]
    return (RNG.randn(1, 1, vocab) * 3).astype("float32")


def softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    z = (x - x.max()) / temperature
    return np.exp(z) / np.exp(z).sum()


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_softmax_with_temperature(lib, temperature) -> None:
    x = logits_like(lib)
    probs = lib.function("softmax_with_temperature")(t(x), t(np.array([temperature], "float32"))).numpy()
    np.testing.assert_allclose(probs, softmax(x, temperature), rtol=1e-5, atol=1e-7)


def test_tiny_temperature_is_one_hot_argmax(lib) -> None:
    x = logits_like(lib)
    probs = lib.function("softmax_with_temperature")(t(x), t(np.array([1e-6], "float32"))).numpy()
    expected = np.zeros_like(x)
    expected[0, 0, x.argmax()] = 1
    np.testing.assert_array_equal(probs, expected)


def test_argmax_takes_the_first_of_ties(lib) -> None:
    x = logits_like(lib)
    top = x.max() + 1
    x[0, 0, [7, 3, 200]] = top
    assert int(lib.function("argmax_logits")(t(x)).numpy()[0]) == 3


def test_argsort_probs_descending_with_ties_by_id(lib) -> None:
    p = softmax(logits_like(lib), 1.0).reshape(1, -1)
    p[0, 10:20] = p[0, 5]  # ties
    sorted_p, ids = (x.numpy() for x in lib.function("argsort_probs")(t(p)))
    order = sorted(range(p.shape[1]), key=lambda i: (-p[0, i], i))
    np.testing.assert_array_equal(ids[0], order)
    np.testing.assert_array_equal(sorted_p[0], p[0, order])


@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95])
def test_sample_with_top_p(lib, top_p) -> None:
    p = softmax(logits_like(lib), 0.8).reshape(1, -1)
    sorted_p, ids = lib.function("argsort_probs")(t(p))
    order = ids.numpy()[0]
    cumulative = np.cumsum(sorted_p.numpy()[0])
    cut = int(np.argmax(cumulative >= top_p))
    kept = cumulative[: cut + 1] / cumulative[cut]
    for u in RNG.rand(40).astype("float32"):
        if np.min(np.abs(kept - u)) < 1e-5:
            continue  # a draw on a boundary: float rounding decides
        got = lib.function("sample_with_top_p")(
            sorted_p, ids, t(np.array([u], "float32")), t(np.array([0], "int32")), t(np.array([top_p], "float32"))
        ).numpy()[0]
        assert got == order[int(np.argmax(u < kept))]


def nucleus_in_token_order(p: np.ndarray, top_p: float, u: float) -> tuple[int, float]:
    """numpy's answer for sample_top_p_from_probs, and the draw's distance from a boundary."""
    descending = np.sort(p)[::-1].astype("float64")
    mass = np.cumsum(descending)
    floor = descending[int(np.argmax(mass >= top_p * mass[-1]))]
    kept = np.where(p >= floor, p, 0).astype("float64")
    cumulative = np.cumsum(kept) / kept.sum()
    return int(np.argmax(u < cumulative)), float(np.min(np.abs(cumulative[kept > 0] - u)))


def test_sample_top_p_from_probs_needs_no_sort(lib) -> None:
    """Two rows (one with ties), several draws each: numpy's nucleus pick, in token order."""
    p = np.concatenate([softmax(logits_like(lib), 0.8).reshape(1, -1), softmax(logits_like(lib), 1.5).reshape(1, -1)])
    p[1, [3, 50, 77, 140]] = p[1].max()  # ties at the top of the second row
    p[1] /= p[1].sum()
    p = p.astype("float32")
    checked = 0
    for top_p in (0.05, 0.3, 0.8, 0.95, 0.999):
        draws = RNG.rand(6).astype("float32")
        rows = np.array([0, 1, 1, 0, 1, 0], "int32")
        got = lib.function("sample_top_p_from_probs")(
            t(p), t(draws), t(rows), t(np.array([top_p, top_p], "float32"))
        ).numpy()
        for j, (u, row) in enumerate(zip(draws, rows, strict=True)):
            expected, margin = nucleus_in_token_order(p[row], top_p, float(u))
            if margin > 1e-5:
                assert got[j] == expected, (top_p, u, row)
                checked += 1
    assert checked > 25


def test_top_p_keeps_the_ties_at_the_cut_and_the_top_token_at_zero(lib) -> None:
    p = np.full((1, lib.metadata["webrt"]["vocab_size"]), 1e-6, "float32")
    p[0, [9, 30, 31]] = [0.3, 0.2, 0.2]  # 0.2 tied at the cut for top_p = 0.5 (0.3 alone is 0.43)
    p /= p.sum()
    sample = lib.function("sample_top_p_from_probs")
    picks = {
        int(sample(t(p), t(np.array([u], "float32")), t(np.array([0], "int32")), t(np.array([0.5], "float32"))).numpy()[0])
        for u in np.linspace(0.01, 0.99, 25)
    }
    assert picks == {9, 30, 31}
    top = sample(t(p), t(np.array([0.9], "float32")), t(np.array([0], "int32")), t(np.array([0.0], "float32")))
    assert int(top.numpy()[0]) == 9


def test_sample_from_probs_is_the_inverse_cdf(lib) -> None:
    p = softmax(logits_like(lib), 1.0).reshape(1, -1)
    cumulative = np.cumsum(p[0])
    counts = np.zeros(p.shape[1])
    for u in RNG.rand(60).astype("float32"):
        if np.min(np.abs(cumulative - u)) < 1e-5:
            continue
        got = int(lib.function("sample_from_probs")(t(p), t(np.array([u], "float32"))).numpy()[0])
        assert got == int(np.argmax(u < cumulative))
        counts[got] += 1
    assert counts.sum() > 50


def test_penalties_in_place(lib) -> None:
    x = logits_like(lib).reshape(1, -1)
    ids = np.array([4, 9, 100, 250], "int32")
    counts = np.array([1, 3, 2, 5], "int32")
    presence, frequency, repetition = 0.5, 0.25, 1.3
    tensor = t(x)
    lib.function("apply_penalty_inplace")(
        tensor, t(np.array([0], "int32")), t(np.zeros(4, "int32")), t(ids), t(counts),
        t(np.array([[presence, frequency, repetition]], "float32")),
    )
    expected = x.copy()
    shifted = expected[0, ids] - presence - counts * frequency
    expected[0, ids] = np.where(shifted < 0, shifted * repetition, shifted / repetition)
    np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-6)


def test_logit_bias_and_bitmask_in_place(lib) -> None:
    x = logits_like(lib).reshape(1, -1)
    vocab = x.shape[1]
    tensor = t(x)
    lib.function("apply_logit_bias_inplace")(
        tensor, t(np.zeros(2, "int32")), t(np.array([1, 17], "int32")), t(np.array([5.0, -2.0], "float32"))
    )
    expected = x.copy()
    expected[0, [1, 17]] += [5.0, -2.0]
    np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-6)

    allowed = np.zeros(vocab, bool)
    allowed[[0, 31, 32, 63, 64, vocab - 1]] = True
    words = np.packbits(allowed.reshape(-1, 8)[:, ::-1], axis=-1).reshape(-1).view("<u4").view("int32")
    words = np.concatenate([words, np.zeros((-len(words)) % 1, "int32")])[: (vocab + 31) // 32]
    lib.function("apply_bitmask_inplace")(tensor, t(np.array([0], "int32")), t(words.reshape(1, -1)))
    masked = tensor.numpy()[0]
    np.testing.assert_allclose(masked[allowed], expected[0, allowed], rtol=1e-6)
    assert np.all(masked[~allowed] == np.finfo("float32").min)
