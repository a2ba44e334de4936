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
- webrt's own ``argmax_logits(logits f32[b,1,V]) -> i32[b]`` for greedy decoding.
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, te, tirx
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
    """First index of the row maximum (ties go to the lowest id, like numpy/torch argmax)."""
    b, _, v = logits.shape

    def combine(x, y):
        take_y = tirx.any(y[1] > x[1], tirx.all(y[1] == x[1], y[0] < x[0]))
        return tirx.Select(take_y, y[0], x[0]), tirx.Select(take_y, y[1], x[1])

    def identity(t0, t1):
        return tirx.const(-1, t0), tirx.min_value(t1)

    reducer = te.comm_reducer(combine, identity, name="argmax")
    k = te.reduce_axis((0, v), "k")
    idx, _ = te.compute(
        (b,), lambda i: reducer((k.var.astype("int32"), logits[i, 0, k]), axis=k), name="argmax"
    )
    return idx


@T.prim_func(private=True, s_tir=True)
def _apply_logit_bias(var_logits: T.handle, var_pos2seq: T.handle, var_tokens: T.handle, var_bias: T.handle):
    T.func_attr({"tirx.noalias": True})
    batch, vocab, n = T.int32(), T.int32(), T.int32()
    logits = T.match_buffer(var_logits, (batch, vocab), "float32")
    pos2seq = T.match_buffer(var_pos2seq, (n,), "int32")
    tokens = T.match_buffer(var_tokens, (n,), "int32")
    bias = T.match_buffer(var_bias, (n,), "float32")
    for p in T.serial(n):
        with T.sblock("bias"):
            vp = T.axis.spatial(n, p)
            logits[pos2seq[vp], tokens[vp]] = logits[pos2seq[vp], tokens[vp]] + bias[vp]


@T.prim_func(private=True, s_tir=True)
def _apply_penalty(
    var_logits: T.handle,
    var_seq_ids: T.handle,
    var_pos2seq: T.handle,
    var_tokens: T.handle,
    var_counts: T.handle,
    var_penalties: T.handle,
):
    T.func_attr({"tirx.noalias": True})
    batch, vocab = T.int32(), T.int32()
    n, num_seq = T.int32(), T.int32()
    logits = T.match_buffer(var_logits, (batch, vocab), "float32")
    seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
    pos2seq = T.match_buffer(var_pos2seq, (n,), "int32")
    tokens = T.match_buffer(var_tokens, (n,), "int32")
    counts = T.match_buffer(var_counts, (n,), "int32")
    penalties = T.match_buffer(var_penalties, (num_seq, 3), "float32")  # presence, frequency, repetition
    for p in T.serial(n):
        with T.sblock("penalty"):
            vp = T.axis.spatial(n, p)
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
def _apply_bitmask(var_logits: T.handle, var_seq_ids: T.handle, var_bitmask: T.handle):
    T.func_attr({"tirx.noalias": True})
    batch, vocab, num_seq = T.int32(), T.int32(), T.int32()
    logits = T.match_buffer(var_logits, (batch, vocab), "float32")
    seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
    bitmask = T.match_buffer(var_bitmask, (batch, (vocab + 31) // 32), "int32")
    for p in T.serial(num_seq * vocab):
        with T.sblock("mask"):
            vp = T.axis.spatial(num_seq * vocab, p)
            logits[seq_ids[vp // vocab], vp % vocab] = T.if_then_else(
                (bitmask[seq_ids[vp // vocab], (vp % vocab) // 32] >> ((vp % vocab) % 32)) & 1 == 1,
                logits[seq_ids[vp // vocab], vp % vocab],
                T.min_value("float32"),
            )


def _parallelize(func: tirx.PrimFunc, block: str, target: Target) -> tirx.PrimFunc:
    """Bind the single flat loop of an in-place kernel to GPU threads (left serial on CPU)."""
    if target.kind.name == "llvm":
        return func
    sch = s_tir.Schedule(func)
    (loop,) = sch.get_loops(sch.get_sblock(block))
    outer, inner = sch.split(loop, [None, THREADS_PER_GROUP])
    sch.bind(outer, "blockIdx.x")
    sch.bind(inner, "threadIdx.x")
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _add_in_place(mod: tvm.IRModule, name: str, func: tirx.PrimFunc, block: str, target: Target) -> None:
    mod[name] = _parallelize(func, block, target).with_attr("global_symbol", name)


def attach_sampling_functions(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
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

    logits3 = relax.Var("logits", relax.TensorType((b, 1, v), "float32"))
    with bb.function("argmax_logits", [logits3]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit_te(_argmax, logits3, primfunc_name_hint="argmax_logits"))
        bb.emit_func_output(out)

    probs2 = relax.Var("probs", relax.TensorType((b, v), "float32"))
    with bb.function("argsort_probs", [probs2]):
        with bb.dataflow():
            order = bb.emit(relax.op.argsort(probs2, descending=True, dtype="int32"))
            sorted_probs = bb.emit_te(
                lambda p, o: te.compute((b, v), lambda i, j: p[i, o[i, j]], name="take_sorted"),
                probs2,
                order,
                primfunc_name_hint="take_sorted_probs",
            )
            out = bb.emit_output(relax.Tuple([sorted_probs, order]))
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
    _add_in_place(mod, "apply_logit_bias_inplace", _apply_logit_bias, "bias", target)
    _add_in_place(mod, "apply_penalty_inplace", _apply_penalty, "penalty", target)
    _add_in_place(mod, "apply_bitmask_inplace", _apply_bitmask, "mask", target)
    return mod


SAMPLING_FUNCTIONS = (
    "softmax_with_temperature",
    "argmax_logits",
    "argsort_probs",
    "sample_with_top_p",
    "apply_logit_bias_inplace",
    "apply_penalty_inplace",
    "apply_bitmask_inplace",
)
