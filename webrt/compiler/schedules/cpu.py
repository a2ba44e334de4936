"""CPU schedule for webrt's fused ``x @ W^T`` kernels (GEMV in decode, GEMM in prefill).

The reduction runs along K, which is contiguous in both ``x`` and the weight rows. The K loop is
split into SIMD-wide lanes and ``rfactor``-ed, so the lanes accumulate independent partial sums
in vector registers (a float reduction is not vectorized otherwise), and the output rows are
split across threads. In decode, a grouped-quantization ``dequantize`` producer is inlined, so
each packed weight word is loaded once and unpacked in registers; in prefill each task unpacks
its weight rows once into a float tile that every row of the input reuses. Epilogues (cast,
bias, residual add) run right after each output row. ``gguf_f32``'s producer (several packed
planes, float32 scales and minimums) is scheduled the same way; where one SIMD step unpacks more
than two words of a plane, those words are first loaded into registers together.

On wasm32 (``webrt compile --device wasm``) a decode GEMV over 4- or 8-bit codes gets its own kernel
instead (`webrt.compiler.schedules.wasm`): wasm SIMD cannot shift lanes by different amounts.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width

from webrt.compiler.schedules.util import find_nt_matmul, static_extent
from webrt.compiler.schedules.wasm import code_dot_function, is_wasm_target, schedule_code_dot

ROWS_PER_TASK = 16


def _stage_wide_word_loads(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, k_outer: s_tir.schedule.LoopRV,
                           lanes: int, k_extent: int) -> None:
    """In a decode GEMV, load the packed words one SIMD step unpacks into registers first when the
    step spans more than two words of a plane (8-bit codes under AVX-512): LLVM otherwise loads
    them lane by lane (SmolLM2's Q8_0 LM head: 50 ms against 9). Steps of one or two words (4-bit
    codes) are left as they are."""
    for index, region in enumerate(sch.get(block).reads):
        if region.source.dtype != "uint32":
            continue
        per_word = k_extent // int(region.source.shape[-1])
        if lanes // per_word <= 2:
            continue
        cache = sch.cache_read(block, index, "local")
        sch.compute_at(cache, k_outer)
        sch.vectorize(sch.get_loops(cache)[-1])


class NTMatmulCPU(dl.ScheduleRule):
    """Schedule functions whose main block is webrt's ``NT_matmul``."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = find_nt_matmul(sch)
        if blocks is None:
            return None
        if is_wasm_target(target):  # the browser's CPU: its own decode GEMV for 4- and 8-bit codes
            rebuilt = code_dot_function(func, sch, blocks)
            if rebuilt is not None:
                return schedule_code_dot(rebuilt)
        main, dequantize, epilogues = blocks.main, blocks.dequantize, blocks.epilogues
        lanes = max(4, llvm_get_vector_width(target) // 32)  # float32 SIMD width
        *spatial, k = sch.get_loops(main)
        if dequantize is not None and all(static_extent(sch, loop) == 1 for loop in spatial[:-1]):
            sch.compute_inline(dequantize)  # decode: unpack in registers, each word read once
            dequantize = None
        k_extent = static_extent(sch, k)
        if k_extent is None or k_extent % lanes:
            return None
        # spatial = [batch..., rows-of-x..., n]; keep n outermost so a weight row is read once
        # and reused (from cache) by every row of x in a prefill.
        n = spatial[-1]
        rows = spatial[:-1]
        n_outer, n_inner = sch.split(n, [None, ROWS_PER_TASK])
        sch.reorder(n_outer, *rows, n_inner, k)
        k_outer, k_lane = sch.split(k, [None, lanes])
        partial = sch.rfactor(k_lane, factor_axis=len(spatial))
        partial_loops = sch.get_loops(partial)  # n_outer, rows..., n_inner, k_outer, lane
        sch.reverse_compute_at(main, partial_loops[-3])  # sum the lanes right after each row
        for block in epilogues:
            sch.reverse_compute_at(block, partial_loops[-3])
        sch.parallel(partial_loops[0])
        sch.vectorize(partial_loops[-1])
        sch.decompose_reduction(partial, partial_loops[-2])
        _stage_wide_word_loads(sch, partial, partial_loops[-2], lanes, k_extent)
        if dequantize is not None:
            # prefill: unpack this task's weight rows once into a float tile, reused by every row of x
            sch.compute_at(dequantize, partial_loops[0])
            *_, tile_k = sch.get_loops(dequantize)
            sch.vectorize(sch.split(tile_k, [None, lanes])[1])
        return sch
