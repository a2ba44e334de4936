"""The WebGPU ``gpu`` kernel variant reads weights as real GPUs need, checked on the scheduled TIR.

No GPU here: for Llama-3.1-8B- and Mistral-7B-shaped q4f16_1 models (configs built in the test, one
decoder layer: every layer has the same kernels) the matmul kernels are scheduled as `webrt compile
--device webgpu` schedules them, then every weight load is evaluated for adjacent ``threadIdx.x``
values: the packed weight word index must step by exactly one word of the same row (the scale index
by zero or one), and every GEMV must launch at least 64 invocations per output row or 65536 in all.
A prefill matmul must load each packed weight word at most once per ``PREFILL_TILE_ROWS`` prompt
rows (counted by executing the loop nest's extents for a 64-row prompt: every load of the packed
weights, times the extents of the loops and launch axes around it), and compute nothing behind an
``if_then_else`` (a padded prompt row's read behind a branch made SwiftShader's shader compiler run
for minutes). The fallback variant (one thread per weight row, one prompt row per workgroup) fails
the first three, which checks the checker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import tvm
from tvm import s_tir, tirx

from webrt.compiler.build import export_model, fusion_passes, make_target, schedule_passes
from webrt.compiler.quantization import get_quantization
from webrt.models.config import TransformerConfig

MIN_LANES_PER_ROW = 64
MIN_INVOCATIONS = 65536
PROMPT_ROWS = 16  # a value for the symbolic prompt length when evaluating indices
PREFILL_TILE_ROWS = 8  # prompt rows each weight word load must serve in a prefill matmul
COUNTED_PROMPT_ROWS = 64  # the prompt length for which weight word loads are counted
LOAD = tvm.ir.expr.TensorLoad  # the class of TIR buffer loads (``tirx.BufferLoad`` builds one)


def buffer_of(access: Any) -> tirx.Buffer:
    """The buffer a load (``.source``) or a store (``.buffer``) accesses."""
    return access.source if isinstance(access, LOAD) else access.buffer


def shaped_config(architecture: str, model_type: str, vocab_size: int) -> TransformerConfig:
    """An 8B/7B-shaped decoder (hidden 4096, intermediate 14336, 32 heads / 8 KV heads), one layer."""
    return TransformerConfig(
        architecture=architecture, model_type=model_type, vocab_size=vocab_size, hidden_size=4096,
        intermediate_size=14336, num_hidden_layers=1, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500000.0, context_window_size=4096, prefill_chunk_size=1024)


SHAPES = {
    "Llama-3.1-8B": shaped_config("LlamaForCausalLM", "llama", 128256),
    "Mistral-7B-v0.3": shaped_config("MistralForCausalLM", "mistral", 32768),
}


def scheduled_matmuls(config: TransformerConfig, kernels: str) -> dict[str, tirx.PrimFunc]:
    """The model's ``NT_matmul`` kernels as the WebGPU build schedules them (q4f16_1)."""
    target = make_target("webgpu")
    exported = export_model(config, get_quantization("q4f16_1"), target)
    passes = [*fusion_passes(config), *schedule_passes(target, kernels)]
    with target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(passes)(exported.mod)
    return {gv.name_hint: f for gv, f in mod.functions_items()
            if isinstance(f, tirx.PrimFunc) and "NT_matmul" in f.script()}


_BINARY = {tirx.Add: lambda a, b: a + b, tirx.Sub: lambda a, b: a - b, tirx.Mul: lambda a, b: a * b,
           tirx.FloorDiv: lambda a, b: a // b, tirx.FloorMod: lambda a, b: a % b,
           tirx.Min: min, tirx.Max: max}
_CHILDREN = ("a", "b", "value", "args", "condition", "true_value", "false_value", "indices")


def evaluate(expr: Any, env: dict[tirx.Var, int]) -> int:
    """An integer index expression's value for the given variable values."""
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    if isinstance(expr, tirx.Var):
        return env[expr]
    if isinstance(expr, tirx.Cast):
        return evaluate(expr.value, env)
    for kind, op in _BINARY.items():
        if isinstance(expr, kind):
            return op(evaluate(expr.a, env), evaluate(expr.b, env))
    raise AssertionError(f"cannot evaluate index {expr!r}")


def expr_nodes(expr: Any) -> list[Any]:
    """``expr`` and every expression inside it."""
    out, todo = [], [expr]
    while todo:
        node = todo.pop()
        out.append(node)
        for name in _CHILDREN:
            child = getattr(node, name, None)
            if child is None:
                continue
            todo.extend(child if isinstance(child, tvm.ir.Array) else [child])
    return out


@dataclass
class WeightLoad:
    buffer: tirx.Buffer
    indices: list[Any]  # in terms of the block variables of ``bindings``
    loops: list[tirx.For]  # enclosing loops, outermost first
    bindings: list[tuple[tirx.Var, Any]]  # enclosing blocks' variables and their values, outermost first

    def index(self, loop_values: dict[tirx.Var, int]) -> list[int]:
        env = dict(loop_values)
        for var, value in self.bindings:
            env[var] = evaluate(value, env)
        return [evaluate(i, env) for i in self.indices]


def buffer_accesses(func: tirx.PrimFunc) -> list[tuple[Any, list[tirx.For], list[tuple[tirx.Var, Any]]]]:
    """Every buffer load and store of ``func`` with its enclosing loops and block bindings."""
    found: list[tuple[Any, list[tirx.For], list[tuple[tirx.Var, Any]]]] = []

    def exprs(node: Any, loops: list[tirx.For], bindings: list[tuple[tirx.Var, Any]], *roots: Any) -> None:
        for root in roots:
            found.extend((n, loops, bindings) for n in expr_nodes(root)
                         if isinstance(n, (LOAD, tirx.BufferStore)))

    def walk(stmt: Any, loops: list[tirx.For], bindings: list[tuple[tirx.Var, Any]]) -> None:
        if isinstance(stmt, tirx.For):
            walk(stmt.body, [*loops, stmt], bindings)
        elif isinstance(stmt, s_tir.SBlockRealize):
            inner = [*bindings, *zip((iv.var for iv in stmt.block.iter_vars), stmt.iter_values)]
            if stmt.block.init is not None:
                walk(stmt.block.init, loops, inner)
            walk(stmt.block.body, loops, inner)
        elif isinstance(stmt, tirx.SeqStmt):
            for part in stmt.seq:
                walk(part, loops, bindings)
        elif isinstance(stmt, tirx.IfThenElse):
            exprs(stmt, loops, bindings, stmt.condition)
            walk(stmt.then_case, loops, bindings)
            if stmt.else_case is not None:
                walk(stmt.else_case, loops, bindings)
        elif isinstance(stmt, tirx.BufferStore):
            found.append((stmt, loops, bindings))
            exprs(stmt, loops, bindings, stmt.value, *stmt.indices)
        elif isinstance(stmt, tirx.Evaluate):
            exprs(stmt, loops, bindings, stmt.value)
        elif isinstance(getattr(stmt, "body", None), tirx.Stmt):  # attributes, lets, declarations
            walk(stmt.body, loops, bindings)

    walk(func.body, [], [])
    return found


def param_buffers(func: tirx.PrimFunc) -> list[tirx.Buffer]:
    """The buffers of ``func``'s parameters, as its loads and stores name them."""
    params = {p.name for p in func.params}  # a parameter's buffer has its name
    found: dict[str, tirx.Buffer] = {}
    for node, _, _ in buffer_accesses(func):
        buffer = buffer_of(node)
        if buffer.name in params:
            found.setdefault(buffer.name, buffer)
    return list(found.values())


def weight_buffers(func: tirx.PrimFunc) -> list[tirx.Buffer]:
    """The weight parameters: 2-D (packed words first, then group scales; activations are 3-D)."""
    return sorted((b for b in param_buffers(func) if len(b.shape) == 2), key=lambda b: b.dtype != "uint32")


def shape_vars(func: tirx.PrimFunc) -> list[tirx.Var]:
    """The symbolic extents of ``func``'s parameters (``seq_len``, ``batch_size``)."""
    out: list[tirx.Var] = []
    for buffer in param_buffers(func):
        for dim in buffer.shape:
            out.extend(n for n in expr_nodes(dim) if isinstance(n, tirx.Var) and not any(n.same_as(v) for v in out))
    return out


def weight_loads(func: tirx.PrimFunc) -> list[WeightLoad]:
    weights = weight_buffers(func)
    return [WeightLoad(buffer_of(node), list(node.indices), loops, bindings)
            for node, loops, bindings in buffer_accesses(func)
            if isinstance(node, LOAD) and any(buffer_of(node).same_as(w) for w in weights)]


def _thread_tag(loop: tirx.For) -> str | None:
    return loop.thread_binding.thread_tag if loop.thread_binding is not None else None


def uncoalesced_loads(func: tirx.PrimFunc) -> list[str]:
    """Why each weight load of ``func`` is not contiguous across adjacent ``threadIdx.x`` (empty: all are)."""
    problems = []
    symbols = {v: PROMPT_ROWS for v in shape_vars(func)}
    for load in weight_loads(func):
        name = load.buffer.name
        lanes = [loop for loop in load.loops if _thread_tag(loop) == "threadIdx.x"]
        if not lanes:
            problems.append(f"{name}: read outside any threadIdx.x loop")
            continue
        lane = lanes[-1]
        extent = evaluate(lane.extent, symbols)
        if extent < 2:
            problems.append(f"{name}: threadIdx.x has extent {extent}")
            continue
        packed = load.buffer.dtype == "uint32"
        for others in (0, 1):
            base = {**symbols, **{loop.loop_var: min(others, evaluate(loop.extent, symbols) - 1)
                                  for loop in load.loops if not loop.same_as(lane)}}
            for t in range(min(extent, 64) - 1):
                here = load.index({**base, lane.loop_var: t})
                there = load.index({**base, lane.loop_var: t + 1})
                step = there[-1] - here[-1]
                if here[:-1] != there[:-1] or step not in ((1,) if packed else (0, 1)):
                    problems.append(f"{name}: threadIdx.x {t} -> {t + 1} reads {here} then {there}")
                    break
            else:
                continue
            break
    return problems


def gemv_launch_shortfall(func: tirx.PrimFunc) -> str | None:
    """For a decode GEMV (no prompt axis): why it launches too few invocations (None: enough)."""
    symbols = {v: 1 for v in shape_vars(func)}
    extents: dict[str, int] = {}
    for _, loops, _ in buffer_accesses(func):
        for loop in loops:
            if (tag := _thread_tag(loop)) is not None:
                extents[tag] = max(extents.get(tag, 1), evaluate(loop.extent, symbols))
    invocations = 1
    for extent in extents.values():
        invocations *= extent
    rows = int(weight_buffers(func)[0].shape[0])
    if invocations >= MIN_LANES_PER_ROW * rows or invocations >= MIN_INVOCATIONS:
        return None
    return f"{invocations} invocations for {rows} output rows ({extents})"


def prompt_rows_per_word_load(func: tirx.PrimFunc) -> float:
    """For a prefill matmul: prompt rows per load of a packed weight word (or unquantized weight)
    for a ``COUNTED_PROMPT_ROWS``-row prompt; every word is needed once per row, so the untiled
    kernel gets 1."""
    symbols = {v: COUNTED_PROMPT_ROWS for v in shape_vars(func)}
    words = weight_buffers(func)[0]
    loads = 0
    for load in weight_loads(func):
        if load.buffer.same_as(words):
            executions = 1
            for loop in load.loops:
                executions *= evaluate(loop.extent, symbols)
            loads += executions
    word_count = 1
    for dim in words.shape:
        word_count *= int(dim)
    return word_count * COUNTED_PROMPT_ROWS / loads


def branching_reads(func: tirx.PrimFunc) -> int:
    """How many values ``func`` computes with ``if_then_else`` (a padded prompt row's read behind a
    branch: SwiftShader's shader compiler took minutes on such kernels and lost the device)."""
    return sum(1 for node, _, _ in buffer_accesses(func) if isinstance(node, tirx.BufferStore)
               for n in expr_nodes(node.value) if isinstance(n, tvm.ir.expr.Call) and n.op.name == "prim.if_then_else")


def is_prompt_kernel(func: tirx.PrimFunc) -> bool:
    return any(v.name == "seq_len" for v in shape_vars(func))


def layout_report(config: TransformerConfig, kernels: str) -> dict[str, list[str]]:
    funcs = scheduled_matmuls(config, kernels)
    assert funcs, "no matmul kernels found"
    rows = {int(weight_buffers(f)[0].shape[0]) for f in funcs.values()}
    # q/k/v (6144), o (4096), gate/up (28672), down (4096), the LM head (vocab)
    assert {6144, 4096, 28672, config.vocab_size} <= rows, rows
    report: dict[str, list[str]] = {}
    for name, func in funcs.items():
        assert func.attrs and func.attrs.get("tirx.is_scheduled"), f"{name} was left unscheduled"
        assert weight_loads(func), f"{name}: no weight load found"
        problems = uncoalesced_loads(func)
        if not is_prompt_kernel(func) and (short := gemv_launch_shortfall(func)):
            problems.append(short)
        if is_prompt_kernel(func) and (reuse := prompt_rows_per_word_load(func)) < PREFILL_TILE_ROWS:
            problems.append(f"each weight word load serves {reuse:g} prompt rows (< {PREFILL_TILE_ROWS})")
        if branches := branching_reads(func):
            problems.append(f"{branches} values read behind if_then_else")
        if problems:
            report[name] = problems
    return report


@pytest.mark.parametrize("shape", list(SHAPES))
def test_gpu_variant_coalesces_every_weight_load(shape: str) -> None:
    assert layout_report(SHAPES[shape], "gpu") == {}


def test_fallback_variant_is_flagged() -> None:
    """One thread per weight row: adjacent invocations read a row apart, too few launch, and a
    prefill reads the weights once per prompt row."""
    report = layout_report(SHAPES["Mistral-7B-v0.3"], "fallback")
    assert report and all(any("threadIdx.x" in p for p in problems) for problems in report.values()), report
    assert any("invocations for" in p for problems in report.values() for p in problems), report
    assert any("serves 1 prompt rows" in p for problems in report.values() for p in problems), report
