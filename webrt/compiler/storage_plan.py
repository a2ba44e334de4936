"""Pack the tensors of Relax's static memory plan into fewer bytes of storage.

Relax's ``StaticPlanBlockMemory`` (TVM 0.27) hands storage out greedily in program order: a
tensor takes the smallest free storage at least as large (else the largest smaller one, grown),
so in a transformer prefill the ``[tokens, intermediate]`` tensors of the MLP land in a different
storage each layer and every storage grows to that size (SmolLM2-135M: three 6 MB storages where
two and two 2.4 MB ones do). Knowing every tensor's lifetime up front does better:
:class:`PackPlannedStorage` takes the plan's tensors largest first and puts each in a storage
whose other tensors' lifetimes do not overlap its own ("greedy by size"), opening a new storage
only when none is free; of the packings that pick the smallest and the largest free storage, the
smaller is kept. Each storage stays one buffer of one dtype on one device (the
planner's pools are per dtype too) and each tensor starts at its storage's offset 0, so the
runtime allocates exactly these storages; a function keeps its old plan where the new one is no
smaller, or where it holds anything this pass does not read (control flow, offsets, storages used
other than by ``alloc_tensor``).

A tensor lives from its ``alloc_tensor`` to the last binding that uses it or anything derived
from it: every binding whose value mentions a tensor is taken to alias it (views, reshapes,
tuples), which can only lengthen lifetimes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import tvm
from tvm import relax
from tvm.sym import Analyzer

_ALLOC_STORAGE = tvm.ir.Op.get("relax.memory.alloc_storage")
_ALLOC_TENSOR = tvm.ir.Op.get("relax.memory.alloc_tensor")


class _Unsupported(Exception):
    """The function holds something this pass does not read: its plan is kept."""


@dataclass
class _Tensor:
    var: relax.Var
    storage: relax.Var  # the planner's storage
    pool: tuple[str, str]  # the storage's dtype and device: tensors share storage within a pool
    nbytes: int  # at the upper bounds of the symbolic sizes
    begin: int  # index of the alloc_tensor binding
    end: int  # index of the last binding using it
    new_storage: int = -1


@dataclass
class _Storage:
    pool: tuple[str, str]
    nbytes: int
    tensors: list[_Tensor] = field(default_factory=list)

    def free_for(self, tensor: _Tensor) -> bool:
        return all(t.end < tensor.begin or tensor.end < t.begin for t in self.tensors)


def _is_call(expr: relax.Expr, op: tvm.ir.Op) -> bool:
    return isinstance(expr, relax.Call) and expr.op.same_as(op)


def _bytes_bound(shape: relax.Expr, dtype: str, bounds: dict[str, int]) -> int:
    """Bytes of a tensor of ``shape`` with every symbolic size at its upper bound."""
    if not isinstance(shape, relax.ShapeExpr):
        raise _Unsupported("a shape that is not a ShapeExpr")
    analyzer = Analyzer()
    for dim in shape.values:
        for var in tvm.tirx.analysis.undefined_vars(dim):
            if var.name not in bounds:
                raise _Unsupported(f"no upper bound for {var.name}")
            analyzer.bind(var, tvm.ir.Range(0, bounds[var.name] + 1), allow_override=True)
    sizes = [analyzer.const_int_bound(dim).max_value for dim in shape.values]
    t = tvm.DataType(dtype)
    return math.prod(sizes) * ((t.bits * t.lanes + 7) // 8)


def _read_plan(func: relax.Function) -> tuple[dict[relax.Var, relax.Call], list[_Tensor]]:
    """The planner's storages in ``func`` and the tensors placed in them."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        raise _Unsupported("a body that is not a SeqExpr")
    bounds = {str(k): int(v) for k, v in (func.attrs or {}).get("tir_var_upper_bound", {}).items()}
    bindings = [b for block in body.blocks for b in block.bindings]
    storages: dict[relax.Var, relax.Call] = {}
    tensors: dict[relax.Var, _Tensor] = {}
    roots: dict[relax.Var, set[relax.Var]] = {}  # var -> the planned tensors it may alias

    def use(expr: relax.Expr, index: int) -> set[relax.Var]:
        found: set[relax.Var] = set()
        for var in relax.analysis.free_vars(expr):
            if var in storages:
                raise _Unsupported("a storage used other than by alloc_tensor")
            for root in roots.get(var, ()):
                tensors[root].end = max(tensors[root].end, index)
                found.add(root)
        return found

    for index, binding in enumerate(bindings):
        value = binding.value
        if any(isinstance(e, (relax.If, relax.Function, relax.SeqExpr)) for e in _subexprs(value)):
            raise _Unsupported("control flow")
        if _is_call(value, _ALLOC_STORAGE):
            scope = value.args[2]
            if not isinstance(binding, relax.VarBinding) or not isinstance(value.args[0], relax.ShapeExpr) \
                    or str(getattr(scope, "value", "")) != "global":
                raise _Unsupported("a storage of another kind")
            storages[binding.var] = value
            continue
        if _is_call(value, _ALLOC_TENSOR) and value.args[0] in storages:
            storage_call = storages[value.args[0]]
            offset = value.args[1]
            if not isinstance(binding, relax.VarBinding) or int(getattr(offset, "value", -1)) != 0:
                raise _Unsupported("a tensor at an offset")
            pool = (str(storage_call.args[3].value), str(storage_call.args[1]))
            nbytes = _bytes_bound(value.args[2], str(value.args[3].value), bounds)
            if nbytes > int(storage_call.args[0].values[0]):
                raise _Unsupported("a tensor larger than its storage")
            tensors[binding.var] = _Tensor(binding.var, value.args[0], pool, nbytes, index, index)
            roots[binding.var] = {binding.var}
            continue
        roots[binding.var] = use(value, index)
    use(body.body, len(bindings))
    return storages, list(tensors.values())


def _subexprs(expr: relax.Expr) -> list[relax.Expr]:
    found: list[relax.Expr] = []
    relax.analysis.post_order_visit(expr, found.append)
    return found


def _pack(tensors: list[_Tensor], prefer_largest: bool) -> list[_Storage]:
    """Greedy by size: each tensor, largest first, into a storage free for its lifetime (the
    smallest such, or with ``prefer_largest`` the largest), a new one if none is."""
    storages: list[_Storage] = []
    for tensor in sorted(tensors, key=lambda t: (-t.nbytes, t.begin)):
        fitting = [s for s in storages if s.pool == tensor.pool and s.free_for(tensor)]
        if fitting:
            chosen = (max if prefer_largest else min)(fitting, key=lambda s: s.nbytes)
        else:
            chosen = _Storage(tensor.pool, tensor.nbytes)
            storages.append(chosen)
        chosen.tensors.append(tensor)
    return storages


def _best_packing(tensors: list[_Tensor]) -> list[_Storage]:
    """The smaller of the two packings. Preferring the largest free storage is what a transformer
    layer needs (its attention's short-lived tensors take the MLP's big storages, idle then, and
    leave the small ones to the residual stream); the smallest is the usual best fit."""
    packings = [_pack(tensors, prefer_largest) for prefer_largest in (True, False)]
    best = min(packings, key=lambda storages: sum(s.nbytes for s in storages))
    for index, storage in enumerate(best):
        for tensor in storage.tensors:
            tensor.new_storage = index
    return best


def pack_function(func: relax.Function) -> relax.Function:
    """``func`` with its planned tensors packed into fewer storage bytes (or unchanged)."""
    try:
        old_storages, tensors = _read_plan(func)
    except _Unsupported:
        return func
    if not tensors:
        return func
    packed = _best_packing(tensors)
    old_bytes = sum(int(call.args[0].values[0]) for call in old_storages.values())
    if sum(s.nbytes for s in packed) >= old_bytes:
        return func
    by_var = {t.var: t for t in tensors}
    new_vars: dict[int, relax.Var] = {}
    blocks = []
    for block in func.body.blocks:
        out: list[relax.Binding] = []
        for binding in block.bindings:
            if binding.var in old_storages:
                continue
            tensor = by_var.get(binding.var)
            if tensor is None:
                out.append(binding)
                continue
            if tensor.new_storage not in new_vars:  # the storage's first tensor: allocate it here
                template = old_storages[tensor.storage]
                var = relax.Var(f"storage{tensor.new_storage}", template.ty)
                size = relax.ShapeExpr([tvm.tirx.IntImm("int64", packed[tensor.new_storage].nbytes)])
                out.append(relax.VarBinding(var, relax.Call(template.op, [size, *template.args[1:]], template.attrs,
                                                            template.ty_args)))
                new_vars[tensor.new_storage] = var
            call = binding.value
            out.append(relax.VarBinding(binding.var, relax.Call(call.op, [new_vars[tensor.new_storage], *call.args[1:]],
                                                                call.attrs, call.ty_args)))
        blocks.append(relax.BindingBlock(out) if not isinstance(block, relax.DataflowBlock)
                      else relax.DataflowBlock(out))
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure,
                          func.attrs, func.span)


@tvm.transform.module_pass(opt_level=0, name="PackPlannedStorage")
class PackPlannedStorage:
    """Run after ``StaticPlanBlockMemory``: repack every Relax function's planned storage."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        out = mod.clone()
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                out[gv] = pack_function(func)
        return out
