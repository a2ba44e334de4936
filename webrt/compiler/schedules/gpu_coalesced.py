"""WebGPU schedule for webrt's ``x[rows, K] @ W[N, K]^T`` kernels on real GPUs: coalesced, split-K.

A GPU reads memory in whole segments per group of adjacent invocations (a warp / wavefront /
subgroup): a load is cheap when adjacent invocations read adjacent words. Here ``threadIdx.x``
(``lanes``, up to 64) splits each weight row's K axis: lane ``t`` reads packed word ``s * lanes +
t`` at step ``s``, so adjacent invocations read adjacent words of the same row, and the lanes'
partial sums are combined inside the workgroup (a shared-memory tree reduction, which TVM emits for
WebGPU without subgroup operations). ``threadIdx.y`` takes ``ROWS_PER_GROUP`` weight rows, so a
workgroup has up to 256 invocations and a ``N``-row GEMV launches ``N * lanes`` of them (262144 for
a 4096-row decode GEMV, against 4096 with one thread per row).

Each step loads a lane's packed words once into registers and unpacks their codes (8 for 4-bit
weights; a ``gguf_f32`` producer reading several planes steps by the widest word's span, so every
word of every plane is still loaded once, and a lane reads a few adjacent words of the narrower
planes: the lanes together still read one contiguous run); the dequantize producer is inlined and
epilogues (cast, bias, residual) follow in registers.

Input rows map to ``blockIdx.y``: one per workgroup for a decode (the sequences of a batched
decode); a prefill (any other symbolic row extent: the prompt) is tiled over ``PREFILL_TILE``
prompt rows, each invocation keeping the tile's partial sums in registers (the row loop unrolled,
constant indices) and applying every weight word it loads to all of them: the weights are read
once per 8 prompt tokens instead of once per token, and the lanes still read adjacent words. The
prompt is padded to whole tiles (``pad_einsum``); a padded row reads the last prompt row through a
clamped index (``min(row, seq_len - 1)``) rather than a branch, and only the final store is
bounded. (Reads behind an ``if`` inside the K loop, the first version, made SwiftShader's shader
compiler run for minutes on SmolLM2's K = 576 kernels and the GGUF-plane ones, losing the device.)
After the K loop the tile's sums go to workgroup memory (one barrier) and the tile's rows are
reduced across the lanes one at a time (a rolled loop: TVM cannot lower unrolled copies of one
workgroup reduction), each followed by its epilogues.

Why 8 rows: the weight traffic of a prefill falls 8x, the tile's sums take 8 registers per
invocation beside the loaded words, and the unrolled inner body (8 rows x one word's codes: 64
multiply-adds for 4-bit weights, 256 for a 1-bit GGUF plane's 32-code word) keeps the shader small;
a prompt of ``n`` tokens computes at most 7 padded rows. 16 rows would double the registers and the
unrolled body to halve a weight traffic that is no longer the larger one: per step a workgroup
loads 1 KB of 4-bit weight words and 8-16 KB of the tile's input rows (from the caches: every
workgroup reads the same rows).

On SwiftShader the workgroup barriers of the reduction cost more than the bandwidth they save
(see :mod:`webrt.compiler.schedules.gpu`, the barrier-free variant kept for fallback adapters).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target

from webrt.compiler.schedules.gpu import webgpu_nt_matmul
from webrt.compiler.schedules.util import static_extent

MAX_LANES = 64  # invocations along K per weight row (threadIdx.x)
ROWS_PER_GROUP = 4  # weight rows per workgroup (threadIdx.y)
PREFILL_TILE = 8  # prompt rows per invocation in a prefill matmul
GEMV_ROW_VARS = ("batch_size",)  # symbolic input-row extents that stay small (a batched decode)
WORD_CODES = 8  # codes per packed 4-bit word: the least step along K of a quantized weight
MAX_GROUPS_PER_DIMENSION = 65535  # WebGPU's default maxComputeWorkgroupsPerDimension


def _packed_word_spans(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, k_extent: int) -> list[int]:
    """Codes per packed (uint32) word of each weight plane ``block`` reads."""
    return [k_extent // int(region.source.shape[-1]) for region in sch.get(block).reads
            if region.source.dtype == "uint32"]


def _largest_power_of_two_dividing(n: int, limit: int) -> int:
    best = 1
    while best * 2 <= limit and n % (best * 2) == 0:
        best *= 2
    return best


class CoalescedMatmul(dl.ScheduleRule):
    """Schedule ``NT_matmul`` kernels with coalesced weight loads and a workgroup reduction of K.

    A symbolic input-row extent other than the batch of a batched decode (``GEMV_ROW_VARS``) is a
    prompt: its kernel is tiled over ``PREFILL_TILE`` prompt rows.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):  # noqa: D102
        if (found := webgpu_nt_matmul(func, target)) is None:
            return None
        sch, blocks = found
        main, epilogues = blocks.main, blocks.epilogues
        *spatial, k = sch.get_loops(main)
        k_extent, n_extent = static_extent(sch, k), static_extent(sch, spatial[-1])
        if k_extent is None or n_extent is None:
            return None
        prefill = _is_prompt(sch, spatial[:-1])
        if prefill:
            try:
                sch, main, epilogues = _pad_prompt_rows(sch, main, epilogues, len(spatial) - 1)
            except s_tir.schedule.ScheduleError:
                # pad_einsum takes plain einsum reads only: an unquantized weight read at a row
                # offset (a prompt's up rows of the fused gate_up weight) keeps one row per
                # workgroup, as a decode GEMV
                sch, blocks = webgpu_nt_matmul(func, target)
                main, epilogues, prefill = blocks.main, blocks.epilogues, False
            *spatial, k = sch.get_loops(main)
        if blocks.dequantize is not None:
            sch.compute_inline(sch.get_sblock("dequantize"))
        spans = _packed_word_spans(sch, main, k_extent)
        step = max([WORD_CODES, *spans]) if spans else 1
        if k_extent % step:
            return None
        lanes = _largest_power_of_two_dividing(k_extent // step, MAX_LANES)
        rows_per_group = _largest_power_of_two_dividing(n_extent, ROWS_PER_GROUP)
        if n_extent // rows_per_group > MAX_GROUPS_PER_DIMENSION:
            return None

        # split K: word index = k_steps * lanes + lane; the lanes' partial sums go to ``partial``
        k_steps, lane, k_codes = sch.split(k, [None, lanes, step])
        partial = sch.rfactor(lane, 0)
        *rows, n, k_steps, lane, k_codes = sch.get_loops(partial)
        rows = sch.fuse(*rows)
        group, n_in_group = sch.split(n, [None, rows_per_group])
        if prefill:
            row_tile, row_in_tile = sch.split(rows, [None, PREFILL_TILE])
            sch.reorder(group, row_tile, n_in_group, lane, k_steps, row_in_tile, k_codes)
        else:
            row_tile, row_in_tile = rows, None
            sch.reorder(group, row_tile, n_in_group, lane, k_steps, k_codes)
        sch.bind(group, "blockIdx.x")
        sch.bind(row_tile, "blockIdx.y")
        sch.bind(n_in_group, "threadIdx.y")
        sch.bind(lane, "threadIdx.x")
        if row_in_tile is None:
            sch.set_scope(partial, 0, "local")
        else:
            # the tile's sums stay registers (the row loop unrolled: a constant index each), then
            # go to workgroup memory (lanes x 4 weight rows x 8 prompt rows x 4 B <= 8 KB of
            # WebGPU's 16 KB), where the per-row reduction below indexes them by row: a private
            # array indexed by a loop variable would live in (slow) local memory on a GPU
            sch.set_scope(partial, 0, "shared")
            sums = sch.cache_write(partial, 0, "local")
            sch.reverse_compute_at(sums, lane)
            sch.unroll(sch.get_loops(sums)[-1])  # the loop over the tile's rows
            sch.transform_layout(sums, ("write", 0), lambda k, *rows_n: (*rows_n, k))  # lanes adjacent
            sch.unroll(row_in_tile)
        sch.unroll(k_codes)
        sch.decompose_reduction(partial, k_steps)
        # load each weight word once into a register (then unpack its codes, use it for every row)
        for index, region in enumerate(sch.get(partial).reads):
            if region.source.dtype == "uint32" or (prefill and len(region.source.shape) == 2):
                sch.compute_at(sch.cache_read(partial, index, "local"), k_steps)

        # the workgroup reduction of the lanes' sums, then the epilogues, per output element
        sch.reverse_compute_at(main, n_in_group)
        lane_sum, *tile_rows = sch.get_loops(main)[3:]  # the loops over ``partial``'s lanes (and rows)
        output_at = n_in_group
        if tile_rows:
            # per tile row: reduce, then the epilogues (a loop: TVM cannot lower unrolled copies
            # of one workgroup reduction)
            (output_at,) = tile_rows
            sch.reorder(output_at, lane_sum)
        sch.bind(lane_sum, "threadIdx.x")
        if epilogues:
            sch.set_scope(main, 0, "local")
        for block in epilogues[:-1]:
            sch.set_scope(block, 0, "local")
        for block in epilogues:
            sch.reverse_compute_at(block, output_at)
        return sch


def _is_prompt(sch: s_tir.Schedule, row_loops: list[s_tir.schedule.LoopRV]) -> bool:
    """Whether an input-row extent is symbolic in anything but a batched decode's batch size."""
    for loop in row_loops:
        extent = sch.get(loop).extent
        if not isinstance(extent, tirx.IntImm) and any(
                v.name not in GEMV_ROW_VARS for v in tirx.analysis.undefined_vars(extent)):
            return True
    return False


def _pad_prompt_rows(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV, epilogues: list[s_tir.schedule.SBlockRV],
                     row_axes: int) -> tuple[s_tir.Schedule, s_tir.schedule.SBlockRV, list[s_tir.schedule.SBlockRV]]:
    """Pad the prompt rows of ``main`` to whole tiles: the padded rows read the last prompt row
    (a clamped index, no branch), their sums are dropped by the final store's bound check.

    Returns a new schedule of the rewritten function and its main block and epilogues.
    """
    row_padding = [1 if isinstance(sch.get(loop).extent, tirx.IntImm) else PREFILL_TILE
                   for loop in sch.get_loops(main)[:row_axes]]
    sch.pad_einsum(main, [*row_padding, 1, 1])
    for producer in sch.get_producers(main):
        if sch.get(producer).name_hint != "dequantize":
            sch.compute_inline(producer)  # main reads ``if_then_else(row < seq_len, x[row], 0)``
    (unpad,) = sch.get_consumers(main)
    names = [sch.get(block).name_hint for block in epilogues]
    if epilogues:
        sch.compute_inline(unpad)  # the first epilogue reads the padded rows it keeps
    else:
        names = [sch.get(unpad).name_hint]
    sch = s_tir.Schedule(tvm_ffi.structural_map(sch.mod, [(tvm.ir.expr.Call, _clamp_padded_read)]))
    return sch, sch.get_sblock("NT_matmul"), [sch.get_sblock(name) for name in names]


def _clamp_padded_read(call: tvm.ir.expr.Call) -> tvm.ir.expr.Expr:
    """``pad_einsum``'s read of a padded prompt row, ``if_then_else(i < seq_len, x[.., i, ..], 0)``,
    becomes ``x[.., min(i, seq_len - 1), ..]`` (a padded row's sums are never stored); any other
    call stays as it is."""
    if call.op.name != "prim.if_then_else":
        return call
    condition, load, _ = call.args
    if not (isinstance(load, tvm.ir.expr.TensorLoad) and isinstance(condition, tirx.LT)
            and not isinstance(condition.b, tirx.IntImm)):
        return call
    bounded = [i.same_as(condition.a) and tvm_ffi.structural_equal(extent, condition.b)
               for i, extent in zip(load.indices, load.source.shape)]
    if bounded.count(True) != 1:
        return call
    indices = [tirx.Min(i, condition.b - 1) if bound else i for i, bound in zip(load.indices, bounded)]
    return tirx.BufferLoad(load.source, indices)
