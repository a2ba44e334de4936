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

Input rows (the tokens of a prefill, the sequences of a batched decode) map to ``blockIdx.y``:
a prefill runs the decode GEMV once per prompt token, each workgroup reading its weight rows whole
(from the GPU's caches after the first token). Not tiled over prompt rows yet: a version that kept
8 rows' sums per invocation (the prompt padded to whole tiles, the padded rows' reads behind a
branch) gave the right results but hung SwiftShader's shader compiler for minutes on some kernels
(SmolLM2's K = 576 ones, the GGUF-plane ones), losing the device.

On SwiftShader the workgroup barriers of the reduction cost more than the bandwidth they save
(see :mod:`webrt.compiler.schedules.gpu`, the barrier-free variant kept for fallback adapters).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target

from webrt.compiler.schedules.gpu import webgpu_nt_matmul
from webrt.compiler.schedules.util import static_extent

MAX_LANES = 64  # invocations along K per weight row (threadIdx.x)
ROWS_PER_GROUP = 4  # weight rows per workgroup (threadIdx.y)
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
    """Schedule ``NT_matmul`` kernels with coalesced weight loads and a workgroup reduction of K."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):  # noqa: D102
        if (found := webgpu_nt_matmul(func, target)) is None:
            return None
        sch, blocks = found
        main, epilogues = blocks.main, blocks.epilogues
        *spatial, k = sch.get_loops(main)
        k_extent, n_extent = static_extent(sch, k), static_extent(sch, spatial[-1])
        if k_extent is None or n_extent is None:
            return None
        if blocks.dequantize is not None:
            sch.compute_inline(blocks.dequantize)
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
        sch.reorder(group, rows, n_in_group, lane, k_steps, k_codes)
        sch.bind(group, "blockIdx.x")
        sch.bind(rows, "blockIdx.y")
        sch.bind(n_in_group, "threadIdx.y")
        sch.bind(lane, "threadIdx.x")
        sch.set_scope(partial, 0, "local")
        sch.unroll(k_codes)
        sch.decompose_reduction(partial, k_steps)
        # load each packed weight word once into a register, then unpack its codes
        for index, region in enumerate(sch.get(partial).reads):
            if region.source.dtype == "uint32":
                sch.compute_at(sch.cache_read(partial, index, "local"), k_steps)

        # the workgroup reduction of the lanes' sums, then the epilogues, per output element
        sch.reverse_compute_at(main, n_in_group)
        sch.bind(sch.get_loops(main)[-1], "threadIdx.x")  # the loop over ``partial``'s lanes
        if epilogues:
            sch.set_scope(main, 0, "local")
        for block in epilogues[:-1]:
            sch.set_scope(block, 0, "local")
        for block in epilogues:
            sch.reverse_compute_at(block, n_in_group)
        return sch
