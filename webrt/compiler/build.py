"""Turn a model config + quantization into a TVM relax IRModule and build it for a device.

The exported library follows MLC-LLM's ABI: ``embed``, ``prefill``, ``decode``,
``batch_prefill``, ``batch_decode`` take the parameters as one trailing packed array
(``param_mode: packed``); ``create_tir_paged_kv_cache`` builds the paged KV cache;
``_metadata`` returns a JSON string; sampling helpers come from
:mod:`webrt.compiler.schedules.sampling`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl
from tvm.target import Target

from webrt import __version__
from webrt.compiler.memory_plan import MemoryPlan, function_temp_bytes, plan_memory
from webrt.compiler.quantization import Quantization
from webrt.compiler.schedules.cpu import NTMatmulCPU
from webrt.compiler.schedules.gpu import RowPerThreadMatmul
from webrt.compiler.schedules.gpu_coalesced import CoalescedMatmul
from webrt.compiler.schedules.sampling import attach_sampling_functions
from webrt.compiler.storage_plan import PackPlannedStorage
from webrt.errors import ModelConfigError
from webrt.models.config import TransformerConfig
from webrt.models.registry import architecture_for_hf, model_class

DEVICES = ("webgpu", "cpu", "wasm")
#: Devices whose library is a .wasm for the browser (a system library linked with emcc).
WASM_DEVICES = ("webgpu", "wasm")
MAX_BATCH_SIZE = 4
#: WebGPU kernel variants (``webrt compile --kernels``): ``gpu`` for real GPUs (coalesced weight
#: loads, K reduced inside a workgroup, enough invocations for a large GPU, prefill matmuls tiled
#: over 8 prompt rows), ``fallback`` for software adapters such as SwiftShader (one thread per
#: output, no barriers). Both run on any adapter.
KERNEL_VARIANTS = ("gpu", "fallback")
DEFAULT_KERNELS = "gpu"
#: Subgroup sizes a WebGPU build may assume (``webrt compile --subgroup-size``). WGSL cannot ask for
#: a size: the adapter reports its range (NVIDIA and Apple 32; AMD 32-64; Intel 8-32; SwiftShader 4),
#: and a library built for N lanes is correct where the smallest subgroup has at least N lanes (TVM's
#: reductions shuffle down within the first N lanes; `webrt.wasm.webgpu.features` checks it at load).
#: TVM 0.27's WebGPU target builds 32 only (it sets thread_warp_size 32 whenever subgroups are on).
SUBGROUP_SIZES = (32,)


def make_target(device: str, subgroup_size: int = 0) -> Target:
    """The TVM target for a webrt device name (WebGPU: with ``subgroup_size`` > 0, cross-invocation
    reductions use subgroup shuffles of that many lanes instead of workgroup memory and barriers)."""
    if device == "webgpu":
        webgpu: dict[str, Any] = {"kind": "webgpu", "max_num_threads": 256}
        if subgroup_size:
            webgpu.update(thread_warp_size=subgroup_size, supports_subgroups=True)
        return Target(webgpu, host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"})
    if device == "cpu":
        # The CPU library runs where it is built (tests, the terminal chat): use the host's ISA
        # (AVX2/AVX-512, F16C) rather than LLVM's generic x86-64.
        from tvm.target.codegen import llvm_get_system_cpu

        return Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})
    if device == "wasm":
        # The browser's CPU: the same CPU pipeline and schedules, for wasm32 with 128-bit SIMD.
        # Measured on SmolLM2 q4f32_1 under TVM's JS runtime in headless Chromium 156, one
        # thread: 58 ms/token with +simd128, 87 without. "vector-width": 256 makes NTMatmulCPU
        # keep 8 float lanes per row, which LLVM splits into two independent f32x4 accumulators
        # (one f32x4 chain is latency-bound): 0.69-0.72x the decode step of the default 128 bits
        # in paired runs under TVM's JS runtime (BENCHMARKS.md), same tokens; 512 was no better.
        # Decode GEMVs over 4- and 8-bit codes get their own wasm kernel instead
        # (webrt.compiler.schedules.wasm: whole-vector unpacking), which NTMatmulCPU picks for
        # this target: 0.44-0.53x the CPU time per decode step on SmolLM2 gguf_f32 in Chromium.
        wasm32 = {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm", "mattr": ["+simd128"],
                  "vector-width": 256}
        return Target(wasm32, host=wasm32)
    raise ValueError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")


@dataclass
class ExportedModel:
    """The IRModule of one model plus the ordered parameter list the library expects."""

    mod: tvm.IRModule
    params: list[tuple[str, tuple[int, ...], str]]  # (name, shape, dtype) in call order
    config: TransformerConfig
    quant: Quantization
    target: Target
    memory_plan: MemoryPlan | None = None  # set by the pipeline, after static memory planning


def export_model(config: TransformerConfig, quant: Quantization, target: Target) -> ExportedModel:
    """Build the nn.Module for ``config`` and export it with the sampling functions attached."""
    model = model_class(config.architecture)(config, quant, target)
    mod, named_params = model.export_tvm(spec=model.get_default_spec())
    mod = attach_sampling_functions(mod, target, config.vocab_size)
    params = [(name, tuple(int(d) for d in p.shape), p.dtype) for name, p in named_params]
    return ExportedModel(mod, params, config, quant, target)


def _variable_bounds(config: TransformerConfig) -> dict[str, int]:
    return {
        "seq_len": config.prefill_chunk_size,
        "batch_size": MAX_BATCH_SIZE,
        "num_samples": MAX_BATCH_SIZE,
        "vocab_size": config.vocab_size,
    }


@tvm.transform.module_pass(opt_level=0, name="AttachVariableBounds")
class _AttachVariableBounds:
    """Give the memory planner upper bounds for the symbolic dimensions."""

    def __init__(self, bounds: dict[str, int]):
        self.bounds = bounds

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        out = mod.clone()
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                out[gv] = func.with_attr("tir_var_upper_bound", self.bounds).with_attr(
                    "tir_non_negative_var", ["vocab_size"]
                )
        return out


@tvm.transform.module_pass(opt_level=0, name="AttachMetadata")
class _AttachMetadata:
    """Add ``_metadata() -> str`` (JSON), measuring planned memory per function."""

    def __init__(self, exported: ExportedModel, device: str, kernels: str | None):
        self.exported, self.device, self.kernels = exported, device, kernels

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        usage = function_temp_bytes(mod)
        self.exported.memory_plan = plan_memory(mod, self.exported.params, self.exported.config, usage)
        meta = library_metadata(self.exported, self.device, usage, self.kernels)
        bb = relax.BlockBuilder(mod)
        with bb.function("_metadata", []):
            bb.emit_func_output(tvm.ir.StringImm(json.dumps(meta)))
        return bb.finalize()


def library_metadata(exported: ExportedModel, device: str, memory_usage: dict[str, int],
                     kernels: str | None = None) -> dict[str, Any]:
    """The JSON that ``_metadata()`` returns (MLC's keys plus webrt's ``webrt`` block; a WebGPU
    library's ``webrt.kernels`` names its kernel variant)."""
    c, q = exported.config, exported.quant
    webrt_block: dict[str, Any] = {
        "version": __version__,
        "device": device,
        "vocab_size": c.vocab_size,
        "model_dtype": q.model_dtype,
        "subgroup_size": subgroup_size_of(exported.target),
        "required_features": required_features(exported.target, q.model_dtype),
    }
    if kernels is not None:
        webrt_block["kernels"] = kernels
    return {
        "model_type": architecture_for_hf(c.architecture).model_type,
        "quantization": q.name,
        "context_window_size": c.context_window_size,
        "sliding_window_size": c.sliding_window_size,
        "attention_sink_size": 0 if c.sliding_window_size > 0 else -1,
        "prefill_chunk_size": c.prefill_chunk_size,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "max_batch_size": MAX_BATCH_SIZE,
        "kv_state_kind": "kv_cache",
        "memory_usage": memory_usage,
        **({"memory_plan": exported.memory_plan.to_json()} if exported.memory_plan else {}),
        "params": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in exported.params],
        "webrt": webrt_block,
    }


def subgroup_size_of(target: Target) -> int:
    """The subgroup size a WebGPU target's kernels assume (0: no subgroup operations)."""
    if target.kind.name != "webgpu" or not target.attrs.get("supports_subgroups"):
        return 0
    return int(target.attrs.get("thread_warp_size", 0))


def required_features(target: Target, model_dtype: str) -> list[str]:
    """The WebGPU features a library needs (the ModelRecord's ``required_features``)."""
    if target.kind.name != "webgpu":
        return []
    needs = ["shader-f16"] if model_dtype == "float16" else []
    return [*needs, "subgroups"] if subgroup_size_of(target) else needs


def check_subgroup_size(device: str, subgroup_size: int) -> int:
    """``subgroup_size`` if a build of ``device`` may assume it, else a clear error."""
    if not subgroup_size:
        return 0
    if device != "webgpu":
        raise ModelConfigError(f"--subgroup-size chooses WebGPU subgroup operations; drop it for --device {device}")
    if subgroup_size not in SUBGROUP_SIZES:
        raise ModelConfigError(f"--subgroup-size {subgroup_size} cannot be built: TVM's WebGPU target builds "
                               f"subgroups of {' or '.join(map(str, SUBGROUP_SIZES))} lanes only; pass "
                               f"{SUBGROUP_SIZES[-1]}, or 0 for no subgroup operations.")
    return subgroup_size


def check_kernels(device: str, kernels: str | None) -> str | None:
    """The kernel variant a build of ``device`` uses (None off WebGPU), or a clear error."""
    if kernels is None:
        return DEFAULT_KERNELS if device == "webgpu" else None
    if device != "webgpu":
        raise ModelConfigError(f"--kernels chooses WebGPU kernels; drop it for --device {device}")
    if kernels not in KERNEL_VARIANTS:
        raise ModelConfigError(f"unknown kernel variant {kernels!r}; choose one of: {', '.join(KERNEL_VARIANTS)}")
    return kernels


def schedule_passes(target: Target, kernels: str | None = DEFAULT_KERNELS) -> list[tvm.transform.Pass]:
    """The dlight scheduling of every kernel: webrt's matmul rule for the device (and, on WebGPU,
    the kernel variant), then TVM's rules for the rest."""
    if target.kind.name == "llvm":
        # dlight's CPU Reduction rule recomputes a whole row per element when the leading axes
        # are 1 (decode): O(n^2). Unscheduled norms and softmaxes are O(n) and cheap.
        return [dl.ApplyDefaultSchedule(NTMatmulCPU())]
    matmul = RowPerThreadMatmul() if kernels == "fallback" else CoalescedMatmul()
    return [
        dl.ApplyDefaultSchedule(
            matmul,
            dl.gpu.Matmul(),
            dl.gpu.GEMV(),
            dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )
    ]


def fusion_passes(config: TransformerConfig) -> list[tvm.transform.Pass]:
    """The pipeline up to scheduling: legalize and fuse into the kernels the schedules see."""
    return [
        _AttachVariableBounds(_variable_bounds(config)),
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def relax_pipeline(exported: ExportedModel, device: str, kernels: str | None = None) -> tvm.transform.Pass:
    """webrt's lowering pipeline: legalize, fuse, schedule, plan memory, attach metadata."""
    target = exported.target
    passes = [
        *fusion_passes(exported.config),
        *schedule_passes(target, kernels),
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        PackPlannedStorage(),
        _AttachMetadata(exported, device, kernels),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]

    @tvm.transform.module_pass(opt_level=0, name="WebrtPipeline")
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def _pass_config(exported: ExportedModel) -> dict[str, Any]:
    # TVM 0.27's TIR common-subexpression elimination breaks the GPU tree-attention kernel of a KV
    # cache with llama3 RoPE scaling, whose inline RoPE binds the scaled frequencies with Let
    # ("variable cse_v21 has been used before definition" on Llama-3.1-8B): those builds skip it.
    gpu = exported.target.kind.name != "llvm"
    return {"tirx.disable_cse_tir": True} if gpu and exported.config.rope_scaling else {}


def build_executable(exported: ExportedModel, device: str, kernels: str | None = None) -> relax.VMExecutable:
    """Compile the exported module for ``device`` (WebGPU: in kernel variant ``kernels``, default
    ``gpu``) into a relax VM executable."""
    kernels = check_kernels(device, kernels)
    with tvm.transform.PassContext(opt_level=3, config=_pass_config(exported)):
        return relax.build(
            exported.mod,
            target=exported.target,
            relax_pipeline=relax_pipeline(exported, device, kernels),
            system_lib=(device in WASM_DEVICES),
        )
