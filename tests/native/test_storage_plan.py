"""PackPlannedStorage: the tensors of Relax's static memory plan packed into fewer storage bytes,
with the same results (checked against numpy on TVM's CPU runtime)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from webrt.compiler.memory_plan import function_temp_bytes
from webrt.compiler.storage_plan import PackPlannedStorage

LAYERS, HIDDEN, ATTN, INTER, MAX_TOKENS = 3, 8, 16, 32, 16
WEIGHTS = (("wq", (HIDDEN, ATTN)), ("wo", (ATTN, HIDDEN)), ("wg", (HIDDEN, INTER)), ("wu", (HIDDEN, INTER)),
           ("wd", (INTER, HIDDEN)))


def transformer_like() -> tvm.IRModule:
    """Layers shaped like a prefill: ``x + a(x)``, then ``x + down(sigmoid(norm(x) @ wg) * (norm(x) @ wu))``,
    over a symbolic number of tokens."""
    bb = relax.BlockBuilder()
    n = tvm.tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType((n, HIDDEN), "float32"))
    weights = [relax.Var(f"{name}{layer}", relax.TensorType(shape, "float32"))
               for layer in range(LAYERS) for name, shape in WEIGHTS]
    with bb.function("main", [x, *weights], attrs={"tir_var_upper_bound": {"n": MAX_TOKENS}}):
        with bb.dataflow():
            h = x
            for layer in range(LAYERS):
                wq, wo, wg, wu, wd = weights[layer * len(WEIGHTS):(layer + 1) * len(WEIGHTS)]
                a = bb.emit(relax.op.matmul(bb.emit(relax.op.multiply(h, relax.const(0.5, "float32"))), wq))
                h = bb.emit(relax.op.add(h, relax.op.matmul(a, wo)))
                norm = bb.emit(relax.op.multiply(h, relax.const(0.25, "float32")))
                gate = bb.emit(relax.op.sigmoid(relax.op.matmul(norm, wg)))
                act = bb.emit(relax.op.multiply(relax.op.matmul(norm, wu), gate))
                h = bb.emit(relax.op.add(h, relax.op.matmul(act, wd)))
            out = bb.emit_output(h)
        bb.emit_func_output(out)
    return bb.finalize()


def reference(x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    h = x
    for layer in range(LAYERS):
        wq, wo, wg, wu, wd = weights[layer * len(WEIGHTS):(layer + 1) * len(WEIGHTS)]
        h = h + (h * 0.5) @ wq @ wo
        norm = h * 0.25
        h = h + ((norm @ wu) * (1 / (1 + np.exp(-(norm @ wg))))) @ wd
    return h


def planning_passes(pack: bool) -> list[tvm.transform.Pass]:
    return [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(),
            relax.transform.FuseTIR(), relax.transform.DeadCodeElimination(), relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(), *([PackPlannedStorage()] if pack else [])]


def build(pack: bool) -> tuple[int, relax.VirtualMachine]:
    """(planned temporary bytes of ``main``, a CPU VM) with or without the packing."""
    mod = transformer_like()
    planned = tvm.transform.Sequential(planning_passes(pack))(mod)
    lowering = [relax.transform.LowerAllocTensor(), relax.transform.KillAfterLastUse(),
                relax.transform.LowerRuntimeBuiltin(), relax.transform.ComputePrimValue(),
                relax.transform.VMShapeLower(), relax.transform.AttachGlobalSymbol()]
    ex = relax.build(mod, target="llvm", relax_pipeline=tvm.transform.Sequential(planning_passes(pack) + lowering))
    return function_temp_bytes(planned)["main"], relax.VirtualMachine(ex, tvm.cpu())


@pytest.fixture(scope="module")
def packed() -> tuple[int, relax.VirtualMachine]:
    return build(pack=True)


@pytest.mark.parametrize("tokens", [MAX_TOKENS, 5])
def test_packed_plan_is_smaller_and_computes_the_same(packed, tokens: int) -> None:
    unpacked_bytes = function_temp_bytes(tvm.transform.Sequential(planning_passes(False))(transformer_like()))["main"]
    packed_bytes, vm = packed
    # While the last layer's gated product is computed, the residual stream, its normed copy,
    # norm @ wu and the product are live: two [n, HIDDEN] and two [n, INTER] float32 tensors
    # (the output is not planned). That is the least any plan can hold; TVM's greedy one holds more.
    least = 2 * MAX_TOKENS * (HIDDEN + INTER) * 4
    assert packed_bytes == least < unpacked_bytes
    rng = np.random.default_rng(0)
    x = rng.standard_normal((tokens, HIDDEN)).astype("float32")
    weights = [rng.standard_normal(shape).astype("float32") * 0.3 for _ in range(LAYERS) for _, shape in WEIGHTS]
    got = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(w) for w in weights]).numpy()
    np.testing.assert_allclose(got, reference(x, weights), rtol=1e-5, atol=1e-5)


def test_a_function_it_cannot_read_keeps_its_plan() -> None:
    """A function whose storage is used other than through alloc_tensor is left as planned."""
    from webrt.compiler.storage_plan import pack_function

    mod = tvm.transform.Sequential(planning_passes(pack=False))(transformer_like())
    func = mod["main"]
    storage = next(b.var for block in func.body.blocks for b in block.bindings
                   if isinstance(b.value, relax.Call) and b.value.op.same_as(tvm.ir.Op.get("relax.memory.alloc_storage")))
    body = relax.BlockBuilder().normalize(relax.SeqExpr(func.body.blocks, relax.Tuple([func.body.body, storage])))
    odd = relax.Function(func.params, body, None, func.is_pure, func.attrs)
    assert pack_function(odd).same_as(odd)
