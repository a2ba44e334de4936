"""GGUF block types kept exactly: random blocks decode to the same float32 bits as
``gguf.quants.dequantize`` (llama.cpp's reference in numpy), through a GGUF file written and
read back with the ``gguf`` package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize

from webrt.compiler.gguf_planes import PLANE_FORMATS, pack_bits, to_planes, unpack_bits
from webrt.errors import UnsupportedQuantizationError

#: byte ranges of each block's float16 fields (random bytes there could be NaN or infinity)
F16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
              "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(kind: GGMLQuantizationType, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    _, type_size = GGML_QUANT_SIZES[kind]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for start in F16_FIELDS[kind.name]:
        scales = (rng.standard_normal(n_blocks) * rng.choice([1e-4, 1e-2, 1.0], n_blocks)).astype(np.float16)
        raw[:, start:start + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("kind", list(PLANE_FORMATS), ids=lambda k: k.name)
def test_planes_decode_bit_exactly_like_gguf(kind: GGMLQuantizationType, tmp_path: Path) -> None:
    rng = np.random.default_rng(kind.value)
    block, _ = GGML_QUANT_SIZES[kind]
    rows, cols = 6, 2 * max(block, 256)
    raw = random_blocks(kind, rows * cols // block, rng)
    writer = GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    writer.add_tensor("w", raw.reshape(rows, -1), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensor = GGUFReader(str(tmp_path / "t.gguf")).tensors[0]
    planes = to_planes(tensor.tensor_type, np.asarray(tensor.data), (rows, cols), "w")
    expected = dequantize(np.asarray(tensor.data), kind).reshape(rows, cols).astype(np.float32)
    got = planes.dequantize()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    stored = planes.packed()
    fmt = planes.fmt
    assert stored["lo"].dtype == np.uint32 and stored["lo"].shape == (rows, cols * fmt.lo_bits // 32)
    codes = unpack_bits(stored["lo"], fmt.lo_bits)
    if fmt.hi_bits:
        codes = codes | (unpack_bits(stored["hi"], fmt.hi_bits) << fmt.lo_bits)
    np.testing.assert_array_equal(codes, planes.codes)
    assert int(planes.codes.max()) < 1 << fmt.bits


def test_pack_bits_round_trips() -> None:
    rng = np.random.default_rng(0)
    for bits in (1, 2, 4, 8):
        values = rng.integers(0, 1 << bits, size=(3, 64), dtype=np.uint8)
        packed = pack_bits(values, bits)
        assert packed.shape == (3, 64 * bits // 32)
        np.testing.assert_array_equal(unpack_bits(packed, bits), values)
    assert pack_bits(np.array([[1, 2, 3, 4, 5, 6, 7, 8]]), 4)[0, 0] == 0x87654321


def test_types_it_cannot_keep_name_the_tensor_and_the_ways_out() -> None:
    with pytest.raises(UnsupportedQuantizationError, match=r"blk\.0\.ffn_up\.weight .*IQ2_XXS.*q4f16_1"):
        to_planes(GGMLQuantizationType.IQ2_XXS, np.zeros(66, np.uint8), (1, 256), "blk.0.ffn_up.weight")
    with pytest.raises(UnsupportedQuantizationError, match="whole Q4_K blocks"):
        to_planes(GGMLQuantizationType.Q4_K, np.zeros(144, np.uint8), (1, 128), "w")
