"""GGUF quantized tensors kept exactly, in a layout GPU and CPU kernels read directly.

Every GGUF block type webrt keeps is an affine code per element: for each group of ``group``
consecutive elements along a row there is a float32 ``scale`` (and, for some types, a float32
``min``), and each element has an unsigned integer ``code``::

    value = (code - offset) * scale            (types without a minimum)
    value = (code - offset) * scale + min      (types with one)

which is exactly how llama.cpp (and ``gguf.quants.dequantize``) computes it in float32: the
f16 block scales become float32 without rounding, and the products of a k-quant's super-block
scale with its 6- or 8-bit sub-block scale are exact in float32 too, so ``scale`` holds them
already multiplied. Codes are split into a low plane of ``lo_bits`` (2, 4 or 8 bits, packed
into uint32 words, element ``i`` of a word at bits ``i * lo_bits``) and, for 3-, 5- and 6-bit
codes, a high plane of ``hi_bits`` (1 or 2) packed the same way: ``code = lo | hi << lo_bits``.

F32, F16 and BF16 tensors are kept as float32 (exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from webrt.errors import UnsupportedQuantizationError

QK_K = 256


@dataclass(frozen=True)
class PlaneFormat:
    """How one GGUF block type is stored exactly (see the module docstring)."""

    name: str
    group: int
    lo_bits: int
    hi_bits: int
    offset: int
    has_min: bool

    @property
    def bits(self) -> int:
        return self.lo_bits + self.hi_bits


T = GGMLQuantizationType
PLANE_FORMATS: dict[GGMLQuantizationType, PlaneFormat] = {
    T.Q4_0: PlaneFormat("Q4_0", 32, 4, 0, 8, False),
    T.Q4_1: PlaneFormat("Q4_1", 32, 4, 0, 0, True),
    T.Q5_0: PlaneFormat("Q5_0", 32, 4, 1, 16, False),
    T.Q5_1: PlaneFormat("Q5_1", 32, 4, 1, 0, True),
    T.Q8_0: PlaneFormat("Q8_0", 32, 8, 0, 128, False),
    T.Q2_K: PlaneFormat("Q2_K", 16, 2, 0, 0, True),
    T.Q3_K: PlaneFormat("Q3_K", 16, 2, 1, 4, False),
    T.Q4_K: PlaneFormat("Q4_K", 32, 4, 0, 0, True),
    T.Q5_K: PlaneFormat("Q5_K", 32, 4, 1, 0, True),
    T.Q6_K: PlaneFormat("Q6_K", 16, 4, 2, 32, False),
}
FLOAT_TYPES = (T.F32, T.F16, T.BF16)


@dataclass
class Planes:
    """One tensor in plane form: codes ``[rows, cols]`` (uint8), scale and min ``[rows, cols / group]``."""

    fmt: PlaneFormat
    codes: np.ndarray
    scale: np.ndarray
    min: np.ndarray | None

    def dequantize(self) -> np.ndarray:
        """float32 values, computed as the kernels do (the reference for them)."""
        g = self.fmt.group
        values = (self.codes.astype(np.int32) - self.fmt.offset).astype(np.float32) * np.repeat(self.scale, g, axis=-1)
        return values + np.repeat(self.min, g, axis=-1) if self.min is not None else values

    def packed(self) -> dict[str, np.ndarray]:
        """The stored tensors: ``lo`` (and ``hi``) uint32 planes, ``scale`` (and ``min``) float32."""
        out = {"lo": pack_bits(self.codes & ((1 << self.fmt.lo_bits) - 1), self.fmt.lo_bits), "scale": self.scale}
        if self.fmt.hi_bits:
            out["hi"] = pack_bits(self.codes >> self.fmt.lo_bits, self.fmt.hi_bits)
        if self.min is not None:
            out["min"] = self.min
        return out


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``[..., n]`` small unsigned values into uint32 ``[..., n * bits / 32]``, element i of a
    word at bits ``i * bits``."""
    per = 32 // bits
    v = values.astype(np.uint32).reshape(*values.shape[:-1], values.shape[-1] // per, per)
    return np.bitwise_or.reduce(v << (np.arange(per, dtype=np.uint32) * bits), axis=-1).astype(np.uint32)


def unpack_bits(words: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` (uint8 values)."""
    per = 32 // bits
    v = (words[..., None] >> (np.arange(per, dtype=np.uint32) * bits)) & np.uint32((1 << bits) - 1)
    return v.reshape(*words.shape[:-1], words.shape[-1] * per).astype(np.uint8)


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, n_blocks: int, span: int) -> np.ndarray:
    """Low nibbles of each ``span``-byte run first, then the high nibbles (llama.cpp's order)."""
    q = qs.reshape(n_blocks, -1, 1, span) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(n_blocks, -1)


def _bit_plane(raw: np.ndarray, n_blocks: int, span: int, bits: int) -> np.ndarray:
    """``bits``-wide fields of each byte, field k of byte j giving element ``k * span + j``."""
    shifts = np.arange(0, 8, bits, dtype=np.uint8).reshape(1, 1, -1, 1)
    q = raw.reshape(n_blocks, -1, 1, span) >> shifts
    return (q & ((1 << bits) - 1)).reshape(n_blocks, -1)


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: eight 6-bit sub-block scales and eight 6-bit minimums from 12 bytes."""
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    lo_d, lo_m, rest = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([lo_d & 0x3F, (rest & 0x0F) | ((lo_d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([lo_m & 0x3F, (rest >> 4) | ((lo_m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _decode_blocks(kind: GGMLQuantizationType, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(codes [n, block], scale [n, groups], min [n, groups] or None) of raw blocks ``b`` [n, bytes]."""
    n = b.shape[0]
    if kind == T.Q4_0:
        return _nibbles(b[:, 2:], n, 16), _f16(b[:, :2]), None
    if kind == T.Q4_1:
        return _nibbles(b[:, 4:], n, 16), _f16(b[:, :2]), _f16(b[:, 2:4])
    if kind in (T.Q5_0, T.Q5_1):
        head = 2 if kind == T.Q5_0 else 4
        qh = np.ascontiguousarray(b[:, head:head + 4]).view(np.uint32)
        high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        codes = _nibbles(b[:, head + 4:], n, 16) | (high << 4)
        return codes, _f16(b[:, :2]), (_f16(b[:, 2:4]) if kind == T.Q5_1 else None)
    if kind == T.Q8_0:
        return (b[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8), _f16(b[:, :2]), None
    if kind == T.Q2_K:
        scales, qs, d, dmin = b[:, :16], b[:, 16:80], _f16(b[:, 80:82]), _f16(b[:, 82:84])
        codes = _bit_plane(qs, n, 32, 2)
        return codes, d * (scales & 0x0F).astype(np.float32), -(dmin * (scales >> 4).astype(np.float32))
    if kind == T.Q3_K:
        hmask, qs, packed, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
        lo = np.concatenate([packed[:, :8] & 0x0F, packed[:, :8] >> 4], axis=-1)
        hi = _bit_plane(packed[:, 8:12], n, 4, 2)
        sc = ((lo | (hi << 4)).astype(np.int16) - 32).astype(np.float32)
        codes = _bit_plane(qs, n, 32, 2) | (_bit_plane(hmask, n, 32, 1) << 2)
        return codes, d * sc, None
    if kind in (T.Q4_K, T.Q5_K):
        d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
        sc, mn = _k_scale_min(b[:, 4:16])
        if kind == T.Q4_K:
            codes = _nibbles(b[:, 16:], n, 32)
        else:
            codes = _nibbles(b[:, 48:], n, 32) | (_bit_plane(b[:, 16:48], n, 32, 1) << 4)
        return codes, d * sc, -(dmin * mn)
    if kind == T.Q6_K:
        ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
        low = np.concatenate([_nibbles(ql[:, :64], n, 64), _nibbles(ql[:, 64:], n, 64)], axis=-1)
        high = np.concatenate([_bit_plane(qh[:, :32], n, 32, 2), _bit_plane(qh[:, 32:], n, 32, 2)], axis=-1)
        return low | (high << 4), d * sc.view(np.int8).astype(np.float32), None
    raise AssertionError(kind)


def plane_format(type_name: str, name: str = "tensor") -> PlaneFormat:
    """The plane layout of GGUF type ``type_name`` (``"Q4_K"``); a typed error for one webrt cannot keep."""
    for fmt in PLANE_FORMATS.values():
        if fmt.name == type_name:
            return fmt
    raise UnsupportedQuantizationError(
        f"{name} is stored as GGUF {type_name}, which webrt cannot keep exactly; keepable types: "
        f"{', '.join(f.name for f in PLANE_FORMATS.values())}, F32, F16, BF16. Convert with a re-quantizing "
        "mode (q4f16_1, q4f32_1, q0f16, q0f32) instead.")


def to_planes(kind: GGMLQuantizationType, raw: np.ndarray, shape: tuple[int, ...], name: str = "tensor") -> Planes:
    """A quantized GGUF tensor (``raw`` bytes, logical ``shape`` ``[..., cols]``) in plane form."""
    fmt = plane_format(kind.name, name)
    block, type_size = GGML_QUANT_SIZES[kind]
    *lead, cols = shape
    rows = int(np.prod(lead)) if lead else 1
    if cols % block:
        raise UnsupportedQuantizationError(f"{name}: rows of {cols} are not whole {kind.name} blocks of {block}.")
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, type_size)
    codes, scale, minimum = _decode_blocks(kind, blocks)
    groups = cols // fmt.group
    return Planes(fmt, codes.reshape(rows, cols), scale.astype(np.float32).reshape(rows, groups),
                  None if minimum is None else minimum.astype(np.float32).reshape(rows, groups))
