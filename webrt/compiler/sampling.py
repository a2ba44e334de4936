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
- webrt's own ``argmax_logits(logits f32[1,1,V]) -> i32[1]`` for greedy decoding and
  ``sample_from_probs(probs f32[1,V], uniform f32[1]) -> i32[1]`` (inverse CDF, no sort) for
  sampling without a top-p cut.
"""

from __future__ import annotations

import functools

import tvm
from tvm import relax, te, tirx
from tvm.relax.frontend import nn
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


def _argmax(logits: te.Tensor) -> te.Tensor:
    """First index of the row maximum (ties go to the lowest id, like numpy/torch argmax).

    Two plain reductions (the max, then the smallest index holding it) rather than one tuple
    reduction: the GPU reduction schedules handle single-output reductions.
    """
    b, _, v = logits.shape
    k = te.reduce_axis((0, v), "k")
    row_max = te.compute((b,), lambda i: te.max(logits[i, 0, k], axis=k), name="row_max")
    k2 = te.reduce_axis((0, v), "k2")
    first = te.compute(
        (b,),
        lambda i: te.min(tirx.Select(logits[i, 0, k2] == row_max[i], k2.var.astype("int32"), v.astype("int32")), axis=k2),
        name="argmax",
    )
    return first


def _in_place_kernels(target: Target) -> dict[str, tirx.PrimFunc]:
    """The three logit-processing kernels, one thread per updated element on GPUs.

    They read and write the logits in place, which schedule primitives refuse to bind, so the
    loops are written bound: ``blocks x threads`` on a GPU, the same two loops serial on CPU.
    """
    gpu = target.kind.name != "llvm"
    tx = THREADS_PER_GROUP
    outer = functools.partial(T.thread_binding, thread="blockIdx.x") if gpu else T.serial
    inner = functools.partial(T.thread_binding, thread="threadIdx.x") if gpu else T.serial

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
    gpu = target.kind.name != "llvm"
    tx = THREADS_PER_GROUP
    padded = max(2 * tx, 1 << (vocab_size - 1).bit_length())
    log_p = padded.bit_length() - 1
    by_loop = functools.partial(T.thread_binding, thread="blockIdx.y") if gpu else T.serial
    bx_loop = functools.partial(T.thread_binding, thread="blockIdx.x") if gpu else T.serial
    tx_loop = functools.partial(T.thread_binding, thread="threadIdx.x") if gpu else T.serial
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

    logits3 = relax.Var("logits", relax.TensorType((1, 1, v), "float32"))  # static batch: WebGPU needs
    with bb.function("argmax_logits", [logits3]):  # a compile-time bound for the reduction's scratch
        with bb.dataflow():
            out = bb.emit_output(bb.emit_te(_argmax, logits3, primfunc_name_hint="argmax_logits"))
        bb.emit_func_output(out)

    probs_row = relax.Var("probs", relax.TensorType((1, vocab_size), "float32"))
    uniform_one = relax.Var("uniform", relax.TensorType((1,), "float32"))
    with bb.function("sample_from_probs", [probs_row, uniform_one]):
        with bb.dataflow():
            column = relax.ShapeExpr([1, 1])
            chosen = bb.emit(
                relax.op.multinomial_from_uniform(
                    probs_row,
                    bb.emit(relax.op.reshape(uniform_one, column)),
                    bb.emit(relax.op.zeros(column, "int32")),
                    dtype="int32",
                )
            )
            out = bb.emit_output(relax.op.reshape(chosen, relax.ShapeExpr([1])))
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

    sorted_probs = relax.Var("sorted_probs", relax.TensorType((b, v), "float32"))
    sorted_indices = relax.Var("sorted_indices", relax.TensorType((b, v), "int32"))
    uniform = relax.Var("uniform_samples", relax.TensorType((n,), "float32"))
    sample_indices = relax.Var("sample_indices", relax.TensorType((n,), "int32"))
    top_p = relax.Var("top_p", relax.TensorType((b,), "float32"))
    with bb.function("sample_with_top_p", [sorted_probs, sorted_indices, uniform, sample_indices, top_p]):
        with bb.dataflow():
            as_column = lambda x, rows, dtype: nn.wrap_nested(  # noqa: E731
                bb.emit(relax.op.reshape(x, relax.ShapeExpr([rows, 1]))), name="column"
            )
            top_k = nn.wrap_nested(
                bb.emit_te(
                    lambda p: te.compute((p.shape[0], 1), lambda i, j: p.shape[1].astype("int32"), name="full_vocab"),
                    sorted_probs,
                    primfunc_name_hint="full_vocab",
                ),
                name="top_k",
            )
            chosen = nn.sample_top_p_top_k_from_sorted_prob(
                nn.wrap_nested(sorted_probs, name="sorted_probs"),
                nn.wrap_nested(sorted_indices, name="sorted_indices"),
                as_column(top_p, b, "float32"),
                top_k,
                as_column(uniform, n, "float32"),
                as_column(sample_indices, n, "int32"),
            )
            out = bb.emit_output(relax.op.reshape(chosen._expr, relax.ShapeExpr([n])))  # noqa: SLF001
        bb.emit_func_output(out)

    mod = bb.finalize()
    for name, kernel in _in_place_kernels(target).items():
        mod[name] = kernel.with_attr("global_symbol", name)
    return mod


SAMPLING_FUNCTIONS = (
    "softmax_with_temperature",
    "argmax_logits",
    "sample_from_probs",
    "argsort_probs",
    "sample_with_top_p",
    "apply_logit_bias_inplace",
    "apply_penalty_inplace",
    "apply_bitmask_inplace",
)
