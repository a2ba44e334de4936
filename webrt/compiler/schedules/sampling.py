"""On-device sampling and logit processing functions attached to every model library.

Names and signatures follow what MLC-LLM libraries export and WebLLM calls, so a decode step can
end on the device and read back one token id instead of the whole vocabulary:

- ``softmax_with_temperature(logits f32[b,1,V], temperature f32[b]) -> probs f32[b,1,V]``
  (``temperature <= 1e-5`` gives the one-hot argmax distribution);
- ``argsort_probs(probs f32[b,V]) -> (sorted_probs f32[b,V], sorted_indices i32[b,V])``, descending;
- ``sample_with_top_p(sorted_probs, sorted_indices, uniform f32[n], sample_indices i32[n],
  top_p f32[b]) -> i32[n]``;
- in place on logits viewed ``[b,V]``: ``apply_logit_bias_inplace``, ``apply_penalty_inplace``
  (presence, frequency, repetition), ``apply_bitmask_inplace``;
- webrt's own ``argmax_logits(logits f32[1,1,V]) -> i32[1]`` for greedy decoding,
  ``sample_from_probs(probs f32[1,V], uniform f32[1]) -> i32[1]`` (inverse CDF, no sort) for
  sampling without a top-p cut, and ``sample_top_p_from_probs(probs f32[b,V], uniform f32[n],
  sample_indices i32[n], top_p f32[b]) -> i32[n]`` for sampling with one (no sort either).
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.script import tirx as T
from tvm.target import Target

GREEDY_TEMPERATURE = 1e-5
THREADS_PER_GROUP = 256


def _softmax_with_temperature(logits: te.Tensor, temperature: te.Tensor) -> te.Tensor:
    b, one, v = logits.shape
    k = te.reduce_axis((0, v), "k")
    row_max = te.compute((b, one), lambda i, j: te.max(logits[i, j, k], axis=k), name="row_max")

    def weight(i, j, x):
        greedy = temperature[i] <= tirx.const(GREEDY_TEMPERATURE, "float32")
        hot = tirx.Select(logits[i, j, x] == row_max[i, j], tirx.const(1.0, "float32"), tirx.const(0.0, "float32"))
        scaled = tirx.exp((logits[i, j, x] - row_max[i, j]) / tirx.max(temperature[i], tirx.const(GREEDY_TEMPERATURE, "float32")))
        return tirx.Select(greedy, hot, scaled)

    weights = te.compute((b, one, v), weight, name="weights")
    k2 = te.reduce_axis((0, v), "k2")
    total = te.compute((b, one), lambda i, j: te.sum(weights[i, j, k2], axis=k2), name="total")
    return te.compute((b, one, v), lambda i, j, x: weights[i, j, x] / total[i, j], name="probs")


def _thread_loops(target: Target, *axes: str):
    """Loop constructors bound to GPU thread axes, or plain serial loops on the CPU.

    The kernels below are written with their loops already bound (schedule primitives refuse
    kernels that read and write one buffer, and these are small); the same text compiles for
    both kinds of target.
    """
    if target.kind.name == "llvm":
        return tuple(T.serial for _ in axes)
    return tuple(functools.partial(T.thread_binding, thread=axis) for axis in axes)


SAMPLE_CHUNKS = 256


def _inverse_cdf_sample(vocab_size: int, target: Target, through_indices: bool) -> tirx.PrimFunc:
    """Inverse-CDF sampling with an optional top-p cut, over probabilities in the given order.

    For each sample ``j`` (row ``rows[j]``): ``cut`` is the first position whose cumulative
    probability reaches ``top_p * total`` (the last position when ``top_p >= 1``); the answer is
    the first position whose cumulative probability exceeds ``u * cdf[cut]``, at most ``cut``,
    mapped through ``indices`` when ``through_indices`` (the probabilities were sorted; otherwise
    ``indices`` is a [1, 1] placeholder). That is the rule of WebLLM's ``sample_with_top_p``.

    Two launches, neither with a barrier: ``SAMPLE_CHUNKS`` threads per row each sum one
    contiguous chunk; then one thread per sample walks the chunk sums and, inside the chunk
    found, the probabilities (at most ``SAMPLE_CHUNKS + V / SAMPLE_CHUNKS`` additions per walk).
    The summation order is fixed, so results are deterministic. (TVM's GPU multinomial kernel
    uses int8, which WGSL lacks, and its GPU scan returns wrong sums on SwiftShader.)
    """
    V = vocab_size
    chunks = SAMPLE_CHUNKS
    size = (V + chunks - 1) // chunks
    row_loop, chunk_loop = _thread_loops(target, "blockIdx.x", "threadIdx.x")
    (sample_loop,) = _thread_loops(target, "blockIdx.x")  # one single-thread group per sample

    @T.macro
    def walk(probs, sums, row, goal, strict, running, chunk, result):
        """result[0] = first position whose cumulative sum passes goal (> if strict, else >=)."""
        running[0] = T.float32(0)
        chunk[0] = -1
        for c in range(chunks):
            if chunk[0] < 0:
                if strict:
                    if T.Or(goal < running[0] + sums[row, c], c == chunks - 1):
                        chunk[0] = c
                    else:
                        running[0] = running[0] + sums[row, c]
                else:
                    if T.Or(goal <= running[0] + sums[row, c], c == chunks - 1):
                        chunk[0] = c
                    else:
                        running[0] = running[0] + sums[row, c]
        result[0] = V - 1
        for i in range(size):
            if T.And(result[0] == V - 1, chunk[0] * size + i < V - 1):
                running[0] = running[0] + probs[row, chunk[0] * size + i]
                if strict:
                    if goal < running[0]:
                        result[0] = chunk[0] * size + i
                else:
                    if goal <= running[0]:
                        result[0] = chunk[0] * size + i

    @T.prim_func(private=True, s_tir=True)
    def inverse_cdf_sample(
        var_probs: T.handle,
        var_indices: T.handle,
        var_uniform: T.handle,
        var_rows: T.handle,
        var_top_p: T.handle,
        var_sums: T.handle,
        var_out: T.handle,
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        b, n = T.int64(), T.int64()
        probs = T.match_buffer(var_probs, (b, V), "float32")
        indices = T.match_buffer(var_indices, (b, V) if through_indices else (1, 1), "int32")
        uniform = T.match_buffer(var_uniform, (n,), "float32")
        rows = T.match_buffer(var_rows, (n,), "int32")
        top_p = T.match_buffer(var_top_p, (b,), "float32")
        sums = T.match_buffer(var_sums, (b, chunks), "float32")
        out = T.match_buffer(var_out, (n,), "int32")
        for r in row_loop(0, b):
            for c in chunk_loop(0, chunks):
                with T.sblock("chunk_sums"):
                    T.reads(probs[r, 0:V])
                    T.writes(sums[r, c])
                    acc = T.alloc_buffer((1,), "float32", scope="local")
                    acc[0] = T.float32(0)
                    for i in range(size):
                        if c * size + i < V:
                            acc[0] = acc[0] + probs[r, c * size + i]
                    sums[r, c] = acc[0]
        for j in sample_loop(0, n):
            with T.sblock("walk"):
                T.reads(probs[0:b, 0:V], sums[0:b, 0:chunks], uniform[j], rows[j], top_p[0:b])
                T.writes(out[j])
                total = T.alloc_buffer((1,), "float32", scope="local")
                running = T.alloc_buffer((1,), "float32", scope="local")
                chunk = T.alloc_buffer((1,), "int32", scope="local")
                cut = T.alloc_buffer((1,), "int32", scope="local")
                pick = T.alloc_buffer((1,), "int32", scope="local")
                kept = T.alloc_buffer((1,), "float32", scope="local")
                total[0] = T.float32(0)
                for c in range(chunks):
                    total[0] = total[0] + sums[rows[j], c]
                kept[0] = total[0]
                cut[0] = V - 1
                if top_p[rows[j]] < T.float32(1):
                    walk(probs, sums, rows[j], top_p[rows[j]] * total[0], False, running, chunk, cut)
                    kept[0] = T.if_then_else(cut[0] == V - 1, total[0], running[0])
                walk(probs, sums, rows[j], uniform[j] * kept[0], True, running, chunk, pick)
                if through_indices:
                    out[j] = indices[rows[j], T.min(pick[0], cut[0])]
                else:
                    out[j] = T.min(pick[0], cut[0])

    return inverse_cdf_sample


def _argmax_kernel(vocab_size: int, target: Target) -> tirx.PrimFunc:
    """``out[0]`` = the first index of the largest logit (ties to the lowest id, as numpy).

    Two launches without barriers, as :func:`_inverse_cdf_sample`: ``SAMPLE_CHUNKS`` threads
    each find the first maximum of one contiguous chunk; one thread combines the chunks in order
    (a later chunk wins only with a strictly larger value). dlight leaves a single-output argmax
    over a symbolic vocabulary to its fallback: one thread looping over global memory.
    """
    V = vocab_size
    chunks = SAMPLE_CHUNKS
    size = (V + chunks - 1) // chunks
    (chunk_loop,) = _thread_loops(target, "threadIdx.x")
    (one,) = _thread_loops(target, "blockIdx.x")

    @T.prim_func(private=True, s_tir=True)
    def argmax_chunks(var_logits: T.handle, var_best: T.handle, var_where: T.handle, var_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        logits = T.match_buffer(var_logits, (1, 1, V), "float32")
        best = T.match_buffer(var_best, (chunks,), "float32")
        where = T.match_buffer(var_where, (chunks,), "int32")
        out = T.match_buffer(var_out, (1,), "int32")
        for c in chunk_loop(0, chunks):
            with T.sblock("chunk_argmax"):
                T.reads(logits[0, 0, 0:V])
                T.writes(best[c], where[c])
                value = T.alloc_buffer((1,), "float32", scope="local")
                index = T.alloc_buffer((1,), "int32", scope="local")
                value[0] = T.min_value("float32")
                index[0] = V
                for i in range(size):
                    if c * size + i < V:
                        if T.Or(logits[0, 0, c * size + i] > value[0], index[0] == V):
                            value[0] = logits[0, 0, c * size + i]
                            index[0] = c * size + i
                best[c] = value[0]
                where[c] = index[0]
        for _ in one(0, 1):
            with T.sblock("combine"):
                T.reads(best[0:chunks], where[0:chunks])
                T.writes(out[0])
                value = T.alloc_buffer((1,), "float32", scope="local")
                index = T.alloc_buffer((1,), "int32", scope="local")
                value[0] = best[0]
                index[0] = where[0]
                for c in range(1, chunks):
                    if T.And(where[c] < V, best[c] > value[0]):
                        value[0] = best[c]
                        index[0] = where[c]
                out[0] = index[0]

    return argmax_chunks


TOP_P_THREADS = 128
ABOVE_ALL = 0x7F800000  # the bit pattern of +inf: no probability reaches it
SEARCH_STEPS = 31  # halvings of [0, ABOVE_ALL) down to one bit pattern


def _top_p_sample(vocab_size: int, target: Target) -> tirx.PrimFunc:
    """Top-p (nucleus) sampling without sorting: one workgroup per sample.

    The kept set is every token whose probability reaches a floor: the largest floor whose
    kept mass is still at least ``top_p * total``. That is the set a descending sort keeps,
    up to ties at the edge, which all stay. The floor is found by bisecting its float32 bit
    pattern (ordered like the value for non-negative floats) over [0, +inf): 31 halvings,
    each a masked sum across the workgroup, so the floor is exact. Then the draw
    ``u * kept mass`` is located by the inverse CDF over the kept probabilities in token
    order. A bitonic sort of a 49k vocabulary is 136 launches; this is one, with no scratch.
    The CPU build runs the same text with a single thread.
    """
    V = vocab_size
    gpu = target.kind.name != "llvm"
    threads = TOP_P_THREADS if gpu else 1
    scope = "shared" if gpu else "local"
    per_thread = (V + threads - 1) // threads
    sample_loop, thread_loop = _thread_loops(target, "blockIdx.x", "threadIdx.x")

    @T.macro
    def barrier():
        if gpu:
            T.tvm_storage_sync("shared")

    @T.macro
    def mass_at_least(probs, row, tx, floor, partial, acc):
        """acc[0] = the mass of the probabilities >= floor (the same sum in every thread)."""
        acc[0] = T.float32(0)
        for k in range(per_thread):
            if tx + k * threads < V:
                if probs[row, tx + k * threads] >= floor:
                    acc[0] = acc[0] + probs[row, tx + k * threads]
        partial[tx] = acc[0]
        barrier()
        acc[0] = T.float32(0)
        for c in range(threads):
            acc[0] = acc[0] + partial[c]
        barrier()

    @T.prim_func(private=True, s_tir=True)
    def top_p_sample(
        var_probs: T.handle, var_uniform: T.handle, var_rows: T.handle, var_top_p: T.handle, var_out: T.handle
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        b, n = T.int64(), T.int64()
        probs = T.match_buffer(var_probs, (b, V), "float32")
        uniform = T.match_buffer(var_uniform, (n,), "float32")
        rows = T.match_buffer(var_rows, (n,), "int32")
        top_p = T.match_buffer(var_top_p, (b,), "float32")
        out = T.match_buffer(var_out, (n,), "int32")
        for j in sample_loop(0, n):
            with T.sblock("workgroup"):
                T.reads(probs[0:b, 0:V], uniform[j], rows[j], top_p[0:b])
                T.writes(out[j])
                partial = T.alloc_buffer((threads,), "float32", scope=scope)
                for tx in thread_loop(0, threads):
                    with T.sblock("top_p_sample"):
                        T.reads(probs[0:b, 0:V], uniform[j], rows[j], top_p[0:b], partial[0:threads])
                        T.writes(out[j], partial[0:threads])
                        acc = T.alloc_buffer((1,), "float32", scope="local")
                        goal = T.alloc_buffer((1,), "float32", scope="local")
                        kept = T.alloc_buffer((1,), "float32", scope="local")
                        bits = T.alloc_buffer((3,), "int32", scope="local")  # lo, hi, mid
                        floor = T.alloc_buffer((1,), "float32", scope="local")
                        row = rows[j]
                        # Find the largest floor whose mass still reaches top_p * total, by
                        # bisecting its float bit pattern (ordered like the value for p >= 0).
                        mass_at_least(probs, row, tx, T.float32(0), partial, acc)
                        goal[0] = top_p[row] * acc[0]
                        kept[0] = acc[0]
                        bits[0] = 0
                        bits[1] = ABOVE_ALL
                        for halving in range(SEARCH_STEPS):  # named: WGSL rejects the "__1" an underscore becomes
                            bits[2] = bits[0] + (bits[1] - bits[0]) // 2
                            mass_at_least(probs, row, tx, T.reinterpret("float32", bits[2]), partial, acc)
                            if T.And(acc[0] >= goal[0], acc[0] > T.float32(0)):
                                bits[0] = bits[2]
                                kept[0] = acc[0]
                            else:
                                bits[1] = bits[2]
                        # Inverse CDF in token order over the kept probabilities (p >= floor).
                        floor[0] = T.reinterpret("float32", bits[0])
                        acc[0] = T.float32(0)
                        for k in range(per_thread):
                            if tx * per_thread + k < V:
                                if probs[row, tx * per_thread + k] >= floor[0]:
                                    acc[0] = acc[0] + probs[row, tx * per_thread + k]
                        partial[tx] = acc[0]
                        barrier()
                        if tx == 0:
                            chunk = T.alloc_buffer((2,), "int32", scope="local")  # holding the draw; last with mass
                            pick = T.alloc_buffer((2,), "int32", scope="local")  # the draw; the last kept token
                            running = T.alloc_buffer((1,), "float32", scope="local")
                            goal[0] = uniform[j] * kept[0]
                            running[0] = T.float32(0)
                            chunk[0] = -1
                            chunk[1] = -1
                            for c in range(threads):
                                acc[0] = partial[c]
                                if acc[0] > T.float32(0):
                                    chunk[1] = c
                                if chunk[0] < 0:
                                    if goal[0] < running[0] + acc[0]:
                                        chunk[0] = c
                                    else:
                                        running[0] = running[0] + acc[0]
                            if chunk[0] < 0:  # rounding put the draw past the end: take the last kept token
                                chunk[0] = chunk[1]
                                goal[0] = T.max_value("float32")
                            pick[0] = -1
                            pick[1] = 0
                            for k in range(per_thread):
                                if T.And(chunk[0] >= 0, chunk[0] * per_thread + k < V):
                                    acc[0] = probs[row, chunk[0] * per_thread + k]
                                    if T.And(acc[0] >= floor[0], acc[0] > T.float32(0)):
                                        pick[1] = chunk[0] * per_thread + k
                                        running[0] = running[0] + acc[0]
                                        if T.And(pick[0] < 0, goal[0] < running[0]):
                                            pick[0] = chunk[0] * per_thread + k
                            out[j] = T.if_then_else(pick[0] >= 0, pick[0], pick[1])
    return top_p_sample


def _in_place_kernels(target: Target) -> dict[str, tirx.PrimFunc]:
    """The three logit-processing kernels, one thread per updated element on GPUs."""
    tx = THREADS_PER_GROUP
    outer, inner = _thread_loops(target, "blockIdx.x", "threadIdx.x")

    @T.prim_func(private=True, s_tir=True)
    def apply_logit_bias(var_logits: T.handle, var_pos2seq: T.handle, var_tokens: T.handle, var_bias: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        batch, vocab, n = T.int32(), T.int32(), T.int32()
        logits = T.match_buffer(var_logits, (batch, vocab), "float32")
        pos2seq = T.match_buffer(var_pos2seq, (n,), "int32")
        tokens = T.match_buffer(var_tokens, (n,), "int32")
        bias = T.match_buffer(var_bias, (n,), "float32")
        for p0 in outer(0, (n + tx - 1) // tx):
            for p1 in inner(0, tx):
                with T.sblock("bias"):
                    vp = T.axis.spatial(n, p0 * tx + p1)
                    T.where(p0 * tx + p1 < n)
                    logits[pos2seq[vp], tokens[vp]] = logits[pos2seq[vp], tokens[vp]] + bias[vp]

    @T.prim_func(private=True, s_tir=True)
    def apply_penalty(
        var_logits: T.handle,
        var_seq_ids: T.handle,
        var_pos2seq: T.handle,
        var_tokens: T.handle,
        var_counts: T.handle,
        var_penalties: T.handle,
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        batch, vocab, n, num_seq = T.int32(), T.int32(), T.int32(), T.int32()
        logits = T.match_buffer(var_logits, (batch, vocab), "float32")
        seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
        pos2seq = T.match_buffer(var_pos2seq, (n,), "int32")
        tokens = T.match_buffer(var_tokens, (n,), "int32")
        counts = T.match_buffer(var_counts, (n,), "int32")
        penalties = T.match_buffer(var_penalties, (num_seq, 3), "float32")  # presence, frequency, repetition
        for p0 in outer(0, (n + tx - 1) // tx):
            for p1 in inner(0, tx):
                with T.sblock("penalty"):
                    vp = T.axis.spatial(n, p0 * tx + p1)
                    T.where(p0 * tx + p1 < n)
                    logits[seq_ids[pos2seq[vp]], tokens[vp]] = (
                        logits[seq_ids[pos2seq[vp]], tokens[vp]]
                        - penalties[pos2seq[vp], 0]
                        - T.Cast("float32", counts[vp]) * penalties[pos2seq[vp], 1]
                    )
                    logits[seq_ids[pos2seq[vp]], tokens[vp]] = T.if_then_else(
                        logits[seq_ids[pos2seq[vp]], tokens[vp]] < T.float32(0),
                        logits[seq_ids[pos2seq[vp]], tokens[vp]] * penalties[pos2seq[vp], 2],
                        logits[seq_ids[pos2seq[vp]], tokens[vp]] / penalties[pos2seq[vp], 2],
                    )

    @T.prim_func(private=True, s_tir=True)
    def apply_bitmask(var_logits: T.handle, var_seq_ids: T.handle, var_bitmask: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        batch, vocab, num_seq = T.int32(), T.int32(), T.int32()
        logits = T.match_buffer(var_logits, (batch, vocab), "float32")
        seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
        bitmask = T.match_buffer(var_bitmask, (batch, (vocab + 31) // 32), "int32")
        for p0 in outer(0, (num_seq * vocab + tx - 1) // tx):
            for p1 in inner(0, tx):
                with T.sblock("mask"):
                    vp = T.axis.spatial(num_seq * vocab, p0 * tx + p1)
                    T.where(p0 * tx + p1 < num_seq * vocab)
                    logits[seq_ids[vp // vocab], vp % vocab] = T.if_then_else(
                        (bitmask[seq_ids[vp // vocab], (vp % vocab) // 32] >> ((vp % vocab) % 32)) & 1 == 1,
                        logits[seq_ids[vp // vocab], vp % vocab],
                        T.min_value("float32"),
                    )

    return {
        "apply_logit_bias_inplace": apply_logit_bias,
        "apply_penalty_inplace": apply_penalty,
        "apply_bitmask_inplace": apply_bitmask,
    }


def _bitonic_argsort(vocab_size: int, target: Target) -> tirx.PrimFunc:
    """Descending argsort of each row of ``probs [b, V]`` by a bitonic network.

    TVM's GPU sort launches on ``blockIdx.z``, which WebGPU code generation refuses, so GPUs use
    this one. Rows are padded to a power of two ``P`` with ``-inf``; ``log2(P)(log2(P)+1)/2``
    compare-exchange passes follow, one launch each (host loops), each thread owning one pair.
    Ties break towards the lower token id, so the order is total and deterministic. The two
    ``[b, P]`` scratch rows come in as arguments so the function allocates nothing itself.
    """
    tx = THREADS_PER_GROUP
    padded = max(2 * tx, 1 << (vocab_size - 1).bit_length())
    log_p = padded.bit_length() - 1
    by_loop, bx_loop, tx_loop = _thread_loops(target, "blockIdx.y", "blockIdx.x", "threadIdx.x")
    V, P = vocab_size, padded

    @T.prim_func(private=True, s_tir=True)
    def argsort_bitonic(
        var_probs: T.handle, var_keys: T.handle, var_ids: T.handle, var_sorted: T.handle, var_sorted_ids: T.handle
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        b = T.int64()
        probs = T.match_buffer(var_probs, (b, V), "float32")
        keys = T.match_buffer(var_keys, (b, P), "float32")
        ids = T.match_buffer(var_ids, (b, P), "int32")
        sorted_probs = T.match_buffer(var_sorted, (b, V), "float32")
        sorted_ids = T.match_buffer(var_sorted_ids, (b, V), "int32")
        for row in by_loop(0, b):
            for g in bx_loop(0, P // tx):
                for t in tx_loop(0, tx):
                    with T.sblock("pad"):
                        T.reads(probs[row, g * tx + t])
                        T.writes(keys[row, g * tx + t], ids[row, g * tx + t])
                        keys[row, g * tx + t] = T.if_then_else(
                            g * tx + t < V, probs[row, T.min(g * tx + t, V - 1)], T.min_value("float32")
                        )
                        ids[row, g * tx + t] = T.Cast("int32", g * tx + t)
        for stage in T.serial(0, log_p):
            for step in T.serial(0, stage + 1):
                for row in by_loop(0, b):
                    for g in bx_loop(0, P // 2 // tx):
                        for t in tx_loop(0, tx):
                            with T.sblock("compare_exchange"):
                                T.reads(keys[row, 0:P], ids[row, 0:P])
                                T.writes(keys[row, 0:P], ids[row, 0:P])
                                # pair (lo, lo + half); blocks of size 2 << stage alternate order
                                half = T.shift_left(T.int32(1), stage - step)
                                lo = (g * tx + t) // half * 2 * half + (g * tx + t) % half
                                hi = lo + half
                                descending = T.bitwise_and(lo, T.shift_left(T.int32(2), stage)) == T.int32(0)
                                hi_first = T.Or(
                                    keys[row, hi] > keys[row, lo],
                                    T.And(keys[row, hi] == keys[row, lo], ids[row, hi] < ids[row, lo]),
                                )
                                if T.Or(T.And(hi_first, descending), T.And(T.Not(hi_first), T.Not(descending))):
                                    key_lo = T.float32(0)
                                    id_lo = T.int32(0)
                                    key_lo = keys[row, lo]
                                    id_lo = ids[row, lo]
                                    keys[row, lo] = keys[row, hi]
                                    ids[row, lo] = ids[row, hi]
                                    keys[row, hi] = key_lo
                                    ids[row, hi] = id_lo
        for row in by_loop(0, b):
            for g in bx_loop(0, (V + tx - 1) // tx):
                for t in tx_loop(0, tx):
                    with T.sblock("take"):
                        if g * tx + t < V:
                            sorted_probs[row, g * tx + t] = keys[row, g * tx + t]
                            sorted_ids[row, g * tx + t] = ids[row, g * tx + t]

    return argsort_bitonic, padded


def attach_sampling_functions(mod: tvm.IRModule, target: Target, vocab_size: int) -> tvm.IRModule:
    """Return ``mod`` with the sampling / logit-processing entry points added."""
    bb = relax.BlockBuilder(mod)
    b, v, n = tirx.Var("batch_size", "int64"), tirx.Var("vocab_size", "int64"), tirx.Var("num_samples", "int64")

    logits3 = relax.Var("logits", relax.TensorType((b, 1, v), "float32"))
    temperature = relax.Var("temperature", relax.TensorType((b,), "float32"))
    with bb.function("softmax_with_temperature", [logits3, temperature]):
        with bb.dataflow():
            probs = bb.emit_te(_softmax_with_temperature, logits3, temperature, primfunc_name_hint="softmax_with_temperature")
            out = bb.emit_output(probs)
        bb.emit_func_output(out)

    logits_one = relax.Var("logits", relax.TensorType((1, 1, vocab_size), "float32"))
    argmax_gv = bb.add_func(_argmax_kernel(vocab_size, target), "argmax_chunks")
    with bb.function("argmax_logits", [logits_one]):
        with bb.dataflow():
            outs = bb.emit(
                relax.call_tir(
                    argmax_gv,
                    [logits_one],
                    out_ty=[
                        relax.TensorType((SAMPLE_CHUNKS,), "float32"),
                        relax.TensorType((SAMPLE_CHUNKS,), "int32"),
                        relax.TensorType((1,), "int32"),
                    ],
                )
            )
            out = bb.emit_output(relax.TupleGetItem(outs, 2))
        bb.emit_func_output(out)

    probs_row = relax.Var("probs", relax.TensorType((1, vocab_size), "float32"))
    uniform_one = relax.Var("uniform", relax.TensorType((1,), "float32"))
    in_order = bb.add_func(_inverse_cdf_sample(vocab_size, target, through_indices=False), "inverse_cdf_sample")
    with bb.function("sample_from_probs", [probs_row, uniform_one]):
        with bb.dataflow():
            outs = bb.emit(
                relax.call_tir(
                    in_order,
                    [
                        probs_row,
                        relax.const(np.zeros((1, 1), "int32")),
                        uniform_one,
                        relax.const(np.zeros((1,), "int32")),
                        relax.const(np.ones((1,), "float32")),
                    ],
                    out_ty=[relax.TensorType((1, SAMPLE_CHUNKS), "float32"), relax.TensorType((1,), "int32")],
                )
            )
            out = bb.emit_output(relax.TupleGetItem(outs, 1))
        bb.emit_func_output(out)

    probs2 = relax.Var("probs", relax.TensorType((b, vocab_size), "float32"))
    kernel, padded = _bitonic_argsort(vocab_size, target)
    argsort_gv = bb.add_func(kernel, "argsort_bitonic")
    with bb.function("argsort_probs", [probs2]):
        with bb.dataflow():
            outs = bb.emit(
                relax.call_tir(
                    argsort_gv,
                    [probs2],
                    out_ty=[
                        relax.TensorType((b, padded), "float32"),
                        relax.TensorType((b, padded), "int32"),
                        relax.TensorType((b, vocab_size), "float32"),
                        relax.TensorType((b, vocab_size), "int32"),
                    ],
                )
            )
            out = bb.emit_output(relax.Tuple([relax.TupleGetItem(outs, 2), relax.TupleGetItem(outs, 3)]))
        bb.emit_func_output(out)

    sorted_probs = relax.Var("sorted_probs", relax.TensorType((b, vocab_size), "float32"))
    sorted_indices = relax.Var("sorted_indices", relax.TensorType((b, vocab_size), "int32"))
    uniform = relax.Var("uniform_samples", relax.TensorType((n,), "float32"))
    sample_indices = relax.Var("sample_indices", relax.TensorType((n,), "int32"))
    top_p = relax.Var("top_p", relax.TensorType((b,), "float32"))
    through_order = bb.add_func(_inverse_cdf_sample(vocab_size, target, through_indices=True), "inverse_cdf_sample_sorted")
    with bb.function("sample_with_top_p", [sorted_probs, sorted_indices, uniform, sample_indices, top_p]):
        with bb.dataflow():
            outs = bb.emit(
                relax.call_tir(
                    through_order,
                    [sorted_probs, sorted_indices, uniform, sample_indices, top_p],
                    out_ty=[relax.TensorType((b, SAMPLE_CHUNKS), "float32"), relax.TensorType((n,), "int32")],
                )
            )
            out = bb.emit_output(relax.TupleGetItem(outs, 1))
        bb.emit_func_output(out)

    top_p_gv = bb.add_func(_top_p_sample(vocab_size, target), "top_p_sample")
    args = [
        relax.Var("probs", relax.TensorType((b, vocab_size), "float32")),
        relax.Var("uniform_samples", relax.TensorType((n,), "float32")),
        relax.Var("sample_indices", relax.TensorType((n,), "int32")),
        relax.Var("top_p", relax.TensorType((b,), "float32")),
    ]
    with bb.function("sample_top_p_from_probs", args):
        with bb.dataflow():
            out = bb.emit_output(relax.call_tir(top_p_gv, args, out_ty=relax.TensorType((n,), "int32")))
        bb.emit_func_output(out)

    mod = bb.finalize()
    for name, kernel in _in_place_kernels(target).items():
        mod[name] = kernel.with_attr("global_symbol", name)
    return mod
