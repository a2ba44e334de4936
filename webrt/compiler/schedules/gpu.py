"""WebGPU schedule for webrt's ``x[rows, K] @ W[N, K]^T`` kernels: one thread per output element.

TVM's default GPU GEMV gives each output element a workgroup that splits K across 64 threads and
combines them with a shared-memory tree: eight workgroup barriers per element; its matmul rule
stages tiles through shared memory, with barriers too. Without subgroup operations (SwiftShader
offers size 4, and a library cannot assume a size), barriers dominate: ~30-50 us per row on
SwiftShader whatever K is (SmolLM2's 49152x576 LM head alone took 1.47 s, against 91 ms for a
barrier-free GEMV), and a prefill cost more per token than a decode step.

Here each thread computes one output element and walks K alone, in steps of one packed weight
word (8 codes for 4-bit weights, unrolled), the word loaded once into a register. No barrier,
no shared memory; the 64 threads of a workgroup take 64 consecutive weight rows and read the
input row at the same addresses. Input rows map to ``blockIdx.y``. The dequantize producer is
inlined and epilogues (cast, bias, residual) follow in registers. A ``gguf_f32`` producer reads
several packed planes (a 4-bit low and a 1-bit high plane, say): the step is then the widest
word's span (32 codes for a 1-bit plane), so every word of every plane is still loaded once.

Measured on SwiftShader (SmolLM2-135M q4f32_1, 32-token prefill): 8.5 s, against 25-27 s for
tiles of 8 input rows per thread (which load each weight word once for 8 rows: SwiftShader runs
out of parallelism before it runs out of bandwidth) and far more for dlight's Matmul rule. On a
discrete GPU a long prompt would prefer tiled matmuls; these models are small.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target

from webrt.compiler.schedules.util import NTMatmulBlocks, find_nt_matmul, static_extent

ROWS_PER_GROUP = 64  # weight rows (threads) per workgroup
UNROLL = 8  # codes per packed 4-bit word: the least step along K


def _packed_word_counts(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> list[int]:
    """Words per row of each packed (uint32) weight plane ``block`` reads."""
    return [int(region.source.shape[-1]) for region in sch.get(block).reads if region.source.dtype == "uint32"]


def webgpu_nt_matmul(func: tirx.PrimFunc, target: Target) -> tuple[s_tir.Schedule, NTMatmulBlocks] | None:
    """A schedule of ``func`` and its ``NT_matmul`` blocks, if it is one of webrt's matmul kernels
    built for WebGPU (the start of both WebGPU matmul rules)."""
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "webgpu":
        return None
    sch = s_tir.Schedule(func)
    blocks = find_nt_matmul(sch)
    return None if blocks is None else (sch, blocks)


class RowPerThreadMatmul(dl.ScheduleRule):
    """Schedule ``NT_matmul`` kernels (decode GEMVs and prefill matmuls) without barriers."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):  # noqa: D102
        if (found := webgpu_nt_matmul(func, target)) is None:
            return None
        sch, blocks = found
        main, epilogues = blocks.main, blocks.epilogues
        *spatial, k = sch.get_loops(main)
        k_extent = static_extent(sch, k)
        if k_extent is None:
            return None
        if blocks.dequantize is not None:
            sch.compute_inline(blocks.dequantize)
        unroll = max([UNROLL, *(k_extent // span for span in _packed_word_counts(sch, main))])
        if k_extent % unroll:
            return None
        rows = sch.fuse(*spatial[:-1])
        group, lane = sch.split(spatial[-1], [None, ROWS_PER_GROUP])
        k_outer, k_inner = sch.split(k, [None, unroll])
        sch.reorder(group, rows, lane, k_outer, k_inner)
        sch.bind(group, "blockIdx.x")
        sch.bind(rows, "blockIdx.y")
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
