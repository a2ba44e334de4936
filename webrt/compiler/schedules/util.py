"""What webrt's CPU and GPU schedules share: finding the blocks of a fused ``x @ W^T`` kernel."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx


@dataclass
class NTMatmulBlocks:
    """The blocks of one of webrt's ``linear`` / ``lm_head`` kernels after fusion."""

    main: s_tir.schedule.SBlockRV  # the ``NT_matmul`` reduction
    dequantize: s_tir.schedule.SBlockRV | None  # grouped-quantization producer, if any
    epilogues: list[s_tir.schedule.SBlockRV]  # cast / bias / residual add, in order


def static_extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    """The loop's extent if it is a compile-time constant."""
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def find_nt_matmul(sch: s_tir.Schedule) -> NTMatmulBlocks | None:
    """The blocks of a fused ``NT_matmul`` kernel, or None for any other kind of function."""
    try:
        main = sch.get_sblock("NT_matmul")
    except Exception:  # noqa: BLE001 - TVM raises its own error: not one of ours
        return None
    try:
        dequantize = sch.get_sblock("dequantize")
    except Exception:  # noqa: BLE001 - unquantized weights
        dequantize = None
    epilogues = []
    tail = main
    while consumers := sch.get_consumers(tail):
        if len(consumers) != 1:
            return None
        tail = consumers[0]
        epilogues.append(tail)
    return NTMatmulBlocks(main, dequantize, epilogues)
