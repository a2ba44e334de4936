"""WebGPU schedule for webrt's decode GEMVs (``x[1, 1, K] @ W[N, K]^T``): one thread per row.

TVM's default GPU GEMV gives each output row a workgroup that splits K across 64 threads and
combines them with a shared-memory tree: eight workgroup barriers per row. Without subgroup
operations (SwiftShader offers size 4, and a library cannot assume a size), barriers dominate:
~30-50 us per row on SwiftShader whatever K is (PLATFORM.md). Here each thread owns a row and
walks K alone, in steps of one packed weight word (8 codes for 4-bit weights, unrolled): no
barrier, no shared memory, and the input vector is read by all threads of a workgroup at the
same address. The dequantize producer is inlined and epilogues (cast, bias, residual) follow
each row. Prefill matmuls keep dlight's Matmul rule.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target

from webrt.compiler.schedule_util import find_nt_matmul, static_extent

ROWS_PER_GROUP = 64
UNROLL = 8


class RowPerThreadGEMV(dl.ScheduleRule):
    """Schedule ``NT_matmul`` kernels whose only non-unit spatial axis is the output row."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "webgpu":
            return None
        sch = s_tir.Schedule(func)
        blocks = find_nt_matmul(sch)
        if blocks is None:
            return None
        main, epilogues = blocks.main, blocks.epilogues
        *spatial, k = sch.get_loops(main)
        if any(static_extent(sch, loop) != 1 for loop in spatial[:-1]):
            return None  # more than one input row: a matmul (prefill), not a GEMV
        k_extent = static_extent(sch, k)
        if k_extent is None or k_extent % UNROLL:
            return None
        if blocks.dequantize is not None:
            sch.compute_inline(blocks.dequantize)
        row = sch.fuse(*spatial)
        group, lane = sch.split(row, [None, ROWS_PER_GROUP])
        k_outer, k_inner = sch.split(k, [None, UNROLL])
        sch.bind(group, "blockIdx.x")
        sch.bind(lane, "threadIdx.x")
        if epilogues:
            # the product and every intermediate epilogue value live in the thread's registers
            for block in (main, *epilogues[:-1]):
                sch.set_scope(block, 0, "local")
            for block in epilogues:
                sch.reverse_compute_at(block, lane)
        else:
            sch.reverse_compute_at(sch.cache_write(main, 0, "local"), lane)
        sch.unroll(k_inner)
        sch.decompose_reduction(main, k_outer)
        # load each packed weight word once into a register, then unpack its codes
        for index, region in enumerate(sch.get(main).reads):
            if region.source.dtype == "uint32":
                sch.compute_at(sch.cache_read(main, index, "local"), k_outer)
        return sch
