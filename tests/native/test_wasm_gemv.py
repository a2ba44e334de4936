"""The browser CPU's decode GEMV (`webrt.compiler.schedules.wasm`) on every weight format it handles.

One module holds a decode ``x @ W^T`` (``[1, 1, K]`` input) per format: q4f32_1 and q4f16_1
(MLC's 4-bit layout, the latter with float16 activations and scales) and the GGUF types Q4_0,
Q4_1, Q4_K and Q8_0 of ``gguf_f32``, one with a residual add after it, plus formats the kernel
leaves to the generic CPU schedule (Q5_0 and Q6_K, which have a high bit plane; float32
weights). Checked:

- the wasm build gives each handled format the code-dot kernel and nothing else (the native CPU
  build never), and the kernel is whole-vector wasm SIMD: ``i32x4``/``v128`` unpacking, a signed
  ``f32x4`` convert, no lane-by-lane ``replace_lane``;
- the linked .wasm, run by TVM's JS runtime in node, gives every weight bit-exactly for one-hot
  inputs (numpy's dequantization of the same codes is the reference) and the native CPU
  library's outputs for random inputs, to float32 rounding (float16 rounding for q4f16_1);
- whole tiny Llamas, q4f32_1 and the GGUF holding every type webrt keeps (its Q4_0, Q4_1, Q4_K
  and Q8_0 matrices take the kernel, the others the generic schedule), compiled with
  ``--device wasm`` and run by TVM's JS runtime in node (`webrt/tools/bench/tvmjs_node.js`):
  prefill and greedy decode give the native CPU library's tokens and logits (within 1e-3, the
  browser CPU-library test's bound).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from tvm import relax
from tvm.relax.frontend import nn

from test_gguf_model import tiny_gguf  # noqa: F401 - the fixture of the GGUF of every type
from test_gguf_planes import random_blocks
from webrt.compiler.build import ExportedModel, build_executable, make_target, relax_pipeline
from webrt.compiler.gguf_planes import to_planes
from webrt.compiler.quantization import get_quantization, quantize_grouped
from webrt.compiler.schedules.wasm import CODE_BITS, LANES
from webrt.models.config import TransformerConfig
from webrt.models.layers import Linear

COLS = 512  # K: two k-quant super-blocks
HANDLED = ("q4f32_1", "q4f16_1", "Q4_0", "Q4_1", "Q4_K", "Q8_0")
GENERIC = ("Q5_0", "Q6_K", "F32")
#: the float32-activation formats (``forward``); q4f16_1 has ``forward_f16``
F32_FORMATS = tuple(f for f in (*HANDLED, *GENERIC) if f != "q4f16_1")
RESIDUAL = "Q4_1"  # this one's output also goes through a residual add (an epilogue)
#: output rows per format: a multiple of the kernel's rows per step, but Q8_0's (one row per step)
#: and Q4_K's (which would otherwise share Q4_1's kernel: the same formula and shapes)
ROWS = {**dict.fromkeys((*HANDLED, *GENERIC, "residual"), 24), "Q4_K": 20, "Q8_0": 21}


#: gguf_f32 bound to the GGUF-typed matrices of `Formats`
GGUF = get_quantization("gguf_f32").with_formats(
    {**{f"w_{fmt}": fmt for fmt in (*HANDLED, *GENERIC) if not fmt.startswith("q4")}, "w_residual": RESIDUAL})


def _quant(fmt: str):
    return get_quantization(fmt) if fmt.startswith("q4") else GGUF


class Formats(nn.Module):
    """One decode GEMV per format (see the module docstring)."""

    def __init__(self):
        super().__init__()
        for fmt in (*HANDLED, *GENERIC):
            setattr(self, f"w_{fmt}", Linear(COLS, ROWS[fmt], _quant(fmt)))
        self.w_residual = Linear(COLS, ROWS["residual"], GGUF)
        for name, fmt in GGUF.gguf_formats:
            getattr(self, name).bind_gguf(name, {name: fmt})

    def forward(self, x: nn.Tensor, r: nn.Tensor):
        return (*(getattr(self, f"w_{fmt}")(x) for fmt in F32_FORMATS), self.w_residual(x) + r)

    def forward_f16(self, x: nn.Tensor):
        return (self.w_q4f16_1(x),)


def export(device: str) -> ExportedModel:
    plain = {"param_mode": "plain", "effect_mode": "none"}
    spec = {"forward": {"x": nn.spec.Tensor([1, 1, COLS], "float32"),
                        "r": nn.spec.Tensor([1, 1, ROWS["residual"]], "float32"), "$": plain},
            "forward_f16": {"x": nn.spec.Tensor([1, 1, COLS], "float16"), "$": plain}}
    mod, named = Formats().export_tvm(spec=spec)
    config = TransformerConfig("LlamaForCausalLM", "llama", 32, COLS, COLS, 1, 1, 1, COLS, 1e-5,
                               prefill_chunk_size=COLS, context_window_size=COLS)
    params = [(n, tuple(int(d) for d in p.shape), p.dtype) for n, p in named]
    return ExportedModel(mod, params, config, GGUF, make_target(device))


@functools.cache
def weights() -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """Per format: its stored tensors by parameter leaf name, and the float32 weight they hold."""
    out = {}
    rng = np.random.default_rng(7)
    for fmt in (*HANDLED, *GENERIC, "residual"):
        kind, rows = (RESIDUAL if fmt == "residual" else fmt), ROWS[fmt]
        if kind.startswith("q4"):
            quant = get_quantization(kind)
            q_weight, q_scale = quantize_grouped(rng.standard_normal((rows, COLS)).astype(np.float32), quant)
            # scales the float16 path must also decode exactly: zero, subnormal, tiny, negative
            q_scale[:4, :4] = np.array([0.0, 3e-6, 6e-8, -0.75], np.float32).astype(q_scale.dtype)[:, None]
            codes = (q_weight[..., None] >> (np.arange(8, dtype=np.uint32) * 4)) & 15
            value = (codes.reshape(rows, COLS).astype(np.float32) - 7) * np.repeat(q_scale.astype(np.float32), 32, -1)
            out[fmt] = {"q_weight": q_weight, "q_scale": q_scale}, value
        elif kind == "F32":
            value = rng.standard_normal((rows, COLS)).astype(np.float32)
            out[fmt] = {"weight": value}, value
        else:
            ggml = GGMLQuantizationType[kind]
            raw = random_blocks(ggml, rows * COLS // GGML_QUANT_SIZES[ggml][0], rng)
            planes = to_planes(ggml, raw, (rows, COLS))
            out[fmt] = {f"q_{k}": v for k, v in planes.packed().items()}, planes.dequantize()
    return out


def param_values(exported: ExportedModel) -> list[np.ndarray]:
    values = []
    for name, shape, dtype in exported.params:
        owner, leaf = name.rsplit(".", 1)
        value = weights()[owner[2:]][0][leaf]
        assert value.shape == shape and value.dtype == dtype, name
        values.append(value)
    return values


@functools.cache
def lowered(device: str) -> tvm.IRModule:
    """The module after webrt's pipeline (scheduled kernels, before code generation)."""
    exported = export(device)
    with tvm.transform.PassContext(opt_level=3):
        return relax_pipeline(exported, device)(exported.mod)


def gemv_kernels(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and ("NT_matmul" in f.script() or "code_dot" in f.script())}


def kernel_format(func: tvm.tirx.PrimFunc) -> str:
    """The format of a kernel's weight, from its parameter names (``w_Q4_K.q_lo``...)."""
    names = " ".join(p.name for p in func.params)
    return next(fmt for fmt in (*HANDLED, *GENERIC, "residual") if f"w_{fmt}." in names)


def test_wasm_build_gives_the_code_dot_kernel_to_every_handled_format() -> None:
    kernels = gemv_kernels(lowered("wasm"))
    chosen = {kernel_format(f): "code_dot" in f.script() for f in kernels.values()}
    assert chosen == {**dict.fromkeys((*HANDLED, "residual"), True), **dict.fromkeys(GENERIC, False)}
    assert not any("code_dot" in f.script() for f in gemv_kernels(lowered("cpu")).values())


def test_the_code_dot_kernel_unpacks_with_whole_vectors() -> None:
    target = make_target("wasm")
    checked = 0
    for name, func in gemv_kernels(lowered("wasm")).items():
        if "code_dot" not in func.script():
            continue
        asm = tvm.tirx.build(tvm.IRModule({name: func.with_attr("global_symbol", name)}), target=target) \
            .inspect_source("asm")
        # codes unpacked from whole words (not assembled lane by lane), converted by one instruction
        assert "i32x4.replace_lane" not in asm and "i32x4.extract_lane" not in asm, name
        assert "v128.and" in asm and "v128.load\t" in asm, name
        assert "f32x4.convert_i32x4_s" in asm and "f32x4.convert_i32x4_u" not in asm, name
        checked += 1
    assert checked == len(HANDLED) + 1
    assert set(CODE_BITS) == {4, 8} and LANES == 4


RUN_NODE_JS = r"""
const fs = require("fs");
globalThis.tvmjs = require(process.argv[1]);
require(process.argv[3]);  // webrt's tvmjs_bench.js: webrtTvmjsInstantiate gives a CPU library its shared memory
const a = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
(async () => {
  const { tvm } = await webrtTvmjsInstantiate(fs.readFileSync(a.wasm));
  const dev = tvm.cpu();
  tvm.beginScope();
  const vm = tvm.createVirtualMachine(dev);
  const blob = fs.readFileSync(a.blob);
  const tensor = (t) => tvm.empty(t.shape, t.dtype, dev).copyFromRawBytes(
    new Uint8Array(blob.buffer, blob.byteOffset + t.offset, t.nbytes));
  const params = a.params.map(tensor);
  const bytes = (y) => Buffer.from(y.toRawBytes()).toString("base64");
  const out = [];
  for (const call of a.calls) {
    const tuple = vm.getFunction(call.fn)(...call.args.map(tensor), ...params);
    const outs = [];
    for (let i = 0; i < tuple.size(); i++) outs.push(bytes(tuple.get(i)));
    out.push(outs);
  }
  tvm.endScope();
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e.stack || e); process.exit(1); });
"""


def run_wasm_in_node(wasm: Path, params: list[np.ndarray], calls: list[tuple[str, list[np.ndarray]]],
                     tmp: Path) -> list[list[bytes]]:
    """Each (function, inputs) call of the library under TVM's JS runtime in node: raw output bytes."""
    from webrt.tools.paths import find_node_package

    blob, layout = bytearray(), []

    def add(value: np.ndarray) -> dict[str, Any]:
        entry = {"shape": list(value.shape), "dtype": str(value.dtype), "offset": len(blob), "nbytes": value.nbytes}
        blob.extend(np.ascontiguousarray(value).tobytes())
        return entry

    layout = [add(v) for v in params]
    call_specs = [{"fn": fn, "args": [add(v) for v in args]} for fn, args in calls]
    (tmp / "blob.bin").write_bytes(bytes(blob))
    (tmp / "run.json").write_text(json.dumps({"wasm": str(wasm), "blob": str(tmp / "blob.bin"), "params": layout,
                                              "calls": call_specs}))
    index_js = find_node_package("@mlc-ai/web-runtime") / "lib" / "index.js"
    from webrt.tools.bench.browser_bench import BENCH_DIR

    proc = subprocess.run(["node", "-e", RUN_NODE_JS, str(index_js), str(tmp / "run.json"),
                           str(BENCH_DIR / "tvmjs_bench.js")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import base64

    return [[base64.b64decode(o) for o in outs] for outs in json.loads(proc.stdout)]


def same_float32(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal float32 bit patterns (+0.0 stands for -0.0: a sum of one-hot products cannot keep it)."""
    np.testing.assert_array_equal((got + np.float32(0)).view(np.uint32), (expected + np.float32(0)).view(np.uint32),
                                  err_msg=what)


@pytest.mark.slow
def test_wasm_library_in_node_matches_numpy_and_the_native_cpu_library(tmp_path: Path) -> None:
    if shutil.which("emcc") is None or shutil.which("node") is None:
        pytest.skip("needs emcc and node")
    from webrt.compiler.linking.wasm_export import export_wasm

    exported = export("wasm")
    wasm = export_wasm(build_executable(exported, "wasm"), tmp_path / "formats.wasm", webgpu=False)
    native = relax.VirtualMachine(build_executable(export("cpu"), "cpu"), tvm.cpu())
    params = param_values(exported)
    rng = np.random.default_rng(11)
    columns = [0, 1, 7, 8, 31, 32, 255, 300, COLS - 1]
    residual = rng.standard_normal((1, 1, ROWS["residual"])).astype(np.float32)
    x = rng.standard_normal((1, 1, COLS)).astype(np.float32)
    one_hots = []
    for column in columns:
        hot = np.zeros((1, 1, COLS), np.float32)
        hot[0, 0, column] = 1
        one_hots.append(hot)
    calls = [("forward", [hot, np.zeros_like(residual)]) for hot in one_hots]
    calls += [("forward_f16", [hot.astype(np.float16)]) for hot in one_hots]
    calls += [("forward", [x, residual]), ("forward_f16", [x.astype(np.float16)])]
    got = run_wasm_in_node(wasm, params, calls, tmp_path)

    f32_names = [*F32_FORMATS, "residual"]

    def outputs(call: int, fn: str) -> list[np.ndarray]:
        dtype, names = (np.float16, ["q4f16_1"]) if fn == "forward_f16" else (np.float32, f32_names)
        return [np.frombuffer(b, dtype).reshape(ROWS[n]) for b, n in zip(got[call], names, strict=True)]

    for i, column in enumerate(columns):  # one-hot input: each weight exactly
        for fmt, y in zip(f32_names, outputs(i, "forward")):
            same_float32(y, weights()[fmt][1][:, column], f"{fmt}, column {column}")
        (y16,) = outputs(len(columns) + i, "forward_f16")
        np.testing.assert_array_equal(y16, weights()["q4f16_1"][1][:, column].astype(np.float16))

    native_params = [tvm.runtime.tensor(v) for v in params]
    expected = [o.numpy()[0, 0] for o in native["forward"](tvm.runtime.tensor(x), tvm.runtime.tensor(residual),
                                                              *native_params)]
    for fmt, y, e in zip(f32_names, outputs(2 * len(columns), "forward"), expected):
        scale = np.abs(x[0, 0]) @ np.abs(weights()[fmt][1]).T  # each output's sum of |products|
        assert np.all(np.abs(y - e) <= 1e-5 * scale), fmt
    (y16,) = outputs(2 * len(columns) + 1, "forward_f16")
    (e16,) = native["forward_f16"](tvm.runtime.tensor(x.astype(np.float16)), *native_params)
    np.testing.assert_allclose(y16.astype(np.float32), e16.numpy()[0, 0].astype(np.float32), rtol=2e-3, atol=2e-3)


PROMPT = [5, 17, 42, 100, 7, 250, 3, 9, 64, 128, 11]
DECODE_STEPS = 8


def tiny_model(which: str, request: pytest.FixtureRequest) -> Any:
    """A tiny Llama built for cpu and wasm: q4f32_1, or gguf_f32 on the GGUF of every type."""
    import model_factory

    if which == "q4f32_1":
        return model_factory.tiny_artifacts("llama2", "q4f32_1", devices=("cpu", "wasm"))
    return model_factory.build_artifacts("tiny-gguf-every-type", request.getfixturevalue("tiny_gguf"), "gguf_f32",
                                         devices=("cpu", "wasm"))


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("which", ["q4f32_1", "gguf_f32"])
def test_tiny_model_wasm_library_in_node_matches_the_native_cpu_library(which: str, threads: int,
                                                                         request: pytest.FixtureRequest) -> None:
    """Also on two threads: the library's thread pool (webrt.wasm.threads) on a worker_thread; its
    own counters show the worker ran as many parallel-loop tasks as the calling thread."""
    if shutil.which("emcc") is None or shutil.which("node") is None:
        pytest.skip("needs emcc and node")
    from engine_util import native_greedy_steps
    from webrt.tools.bench.cpu_rounds import run_node

    art = tiny_model(which, request)
    (run,) = run_node(art.model_dir, [art.libs["wasm"]], PROMPT, DECODE_STEPS, 0, 1, logits=True, threads=threads)
    native = native_greedy_steps(art, PROMPT, DECODE_STEPS)
    if threads > 1:
        calling, worker = run["tasksRun"]
        assert calling > 0 and worker == calling
    assert run["tokens"] == native["tokens"]
    assert len(run["logits"]) == len(native["logits"]) == DECODE_STEPS + 1
    for step, (got, expected) in enumerate(zip(run["logits"], native["logits"], strict=True)):
        err = float(np.max(np.abs(np.asarray(got) - np.asarray(expected))))
        assert err <= 1e-3, f"step {step}: max |logit diff| {err:.3g}"
