"""gguf_f32's kernels decode every GGUF type exactly: random blocks written by the ``gguf``
package go through the compiled CPU library's matmul (decode GEMV and prefill paths, one-hot
inputs) and embedding lookup, and come out as the float32 values of ``gguf.quants.dequantize``."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tvm
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize
from tvm import relax
from tvm.relax.frontend import nn

from test_gguf_planes import random_blocks
from webrt.compiler.build import ExportedModel, build_executable, make_target
from webrt.compiler.gguf_planes import PLANE_FORMATS, to_planes
from webrt.compiler.quantization import get_quantization
from webrt.models.config import TransformerConfig
from webrt.models.layers import Embedding, Linear, bind_gguf_formats

KINDS = list(PLANE_FORMATS)
ROWS, COLS = 6, 512  # two k-quant super-blocks per row


class EveryType(nn.Module):
    """One matrix and one embedding table per GGUF type, all read by ``forward`` / ``embed``."""

    def __init__(self, quant):
        super().__init__()
        for kind in KINDS:
            setattr(self, f"w_{kind.name}", Linear(COLS, ROWS, quant))
            setattr(self, f"e_{kind.name}", Embedding(ROWS, COLS, quant))
        bind_gguf_formats(self, quant)

    def forward(self, x: nn.Tensor):
        return tuple(getattr(self, f"w_{kind.name}")(x) for kind in KINDS)

    def embed(self, ids: nn.Tensor):
        return tuple(getattr(self, f"e_{kind.name}")(ids) for kind in KINDS)


@functools.cache
def blocks_and_reference() -> dict[GGMLQuantizationType, tuple[np.ndarray, np.ndarray]]:
    """Random raw blocks of every type, with their float32 values by ``gguf.quants.dequantize``."""
    out = {}
    for kind in KINDS:
        block, _ = GGML_QUANT_SIZES[kind]
        raw = random_blocks(kind, ROWS * COLS // block, np.random.default_rng(100 + kind.value))
        out[kind] = raw, dequantize(raw, kind).reshape(ROWS, COLS).astype(np.float32)
    return out


def export_every_type(device: str, kernels: str | None = None):
    """The :class:`EveryType` module through webrt's own lowering pipeline for ``device`` (WebGPU:
    in kernel variant ``kernels``)."""
    formats = {f"{p}_{kind.name}": kind.name for kind in KINDS for p in ("w", "e")}
    quant = get_quantization("gguf_f32").with_formats(formats)
    target = make_target(device)
    model = EveryType(quant)
    plain = {"param_mode": "plain", "effect_mode": "none"}
    spec = {"forward": {"x": nn.spec.Tensor([1, "seq_len", COLS], "float32"), "$": plain},
            "embed": {"ids": nn.spec.Tensor(["seq_len"], "int32"), "$": plain}}
    mod, named = model.export_tvm(spec=spec)
    config = TransformerConfig("LlamaForCausalLM", "llama", ROWS, COLS, COLS, 1, 1, 1, COLS, 1e-5,
                               prefill_chunk_size=COLS, context_window_size=COLS)
    params = [(n, tuple(int(d) for d in p.shape), p.dtype) for n, p in named]
    exported = ExportedModel(mod, params, config, quant, target)
    return exported, build_executable(exported, device, kernels)


def param_values(params: list[tuple[str, tuple[int, ...], str]]) -> list[np.ndarray]:
    """The planes of every parameter, in the module's order."""
    data = blocks_and_reference()
    values = []
    for name, shape, dtype in params:
        prefix, leaf = name.rsplit(".", 1)
        kind = GGMLQuantizationType[prefix.split("_", 1)[1]]
        raw, _ = data[kind]
        value = to_planes(kind, raw, (ROWS, COLS)).packed()[leaf[2:]]
        assert value.shape == shape and value.dtype == dtype, name
        values.append(value)
    return values


def same_float32(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal float32 bit patterns (a sum of one-hot products cannot keep -0.0: +0.0 stands for it)."""
    np.testing.assert_array_equal((got + np.float32(0)).view(np.uint32), (expected + np.float32(0)).view(np.uint32))


@pytest.fixture(scope="module")
def cpu_library():
    exported, executable = export_every_type("cpu")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm, [tvm.runtime.tensor(v) for v in param_values(exported.params)]


def test_prefill_matmul_decodes_every_type_exactly(cpu_library) -> None:
    vm, params = cpu_library
    eye = np.eye(COLS, dtype=np.float32)[None]  # row i of the input picks column i of W
    outs = vm["forward"](tvm.runtime.tensor(eye), *params)
    for kind, out in zip(KINDS, outs):
        same_float32(out.numpy()[0].T, blocks_and_reference()[kind][1])


@pytest.mark.parametrize("column", [0, 1, 31, 32, 255, 256, 300, COLS - 1])
def test_decode_gemv_decodes_every_type_exactly(cpu_library, column: int) -> None:
    vm, params = cpu_library
    one_hot = np.zeros((1, 1, COLS), np.float32)
    one_hot[0, 0, column] = 1
    outs = vm["forward"](tvm.runtime.tensor(one_hot), *params)
    reference = blocks_and_reference()
    for kind, out in zip(KINDS, outs):
        same_float32(out.numpy()[0, 0], reference[kind][1][:, column])


def test_embedding_lookup_decodes_every_type_bit_exactly(cpu_library) -> None:
    vm, params = cpu_library
    ids = np.array([5, 0, 3, 1, 2, 4, 0], np.int32)
    outs = vm["embed"](tvm.runtime.tensor(ids), *params)
    reference = blocks_and_reference()
    for kind, out in zip(KINDS, outs):
        np.testing.assert_array_equal(out.numpy().view(np.uint32), reference[kind][1][ids].view(np.uint32))


RUN_EVERY_TYPE_JS = """
async (a) => {
  const gpu = await tvmjs.detectGPUDevice();
  if (!gpu) throw new Error("no WebGPU adapter");
  const bytes = await (await fetch(a.url)).arrayBuffer();
  const tvm = await tvmjs.instantiate(bytes, tvmjs.createPolyfillWASI(), () => {});
  tvm.initWebGPU(gpu.device);
  tvm.beginScope();
  const dev = tvm.webgpu();
  const vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(dev));
  await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule());
  const upload = (shape, dtype, data) => tvm.empty(shape, dtype, dev).copyFrom(data);
  const typed = (p) => (p.dtype === "uint32" ? new Uint32Array(p.data) : new Float32Array(p.data));
  const params = a.params.map((p) => upload(p.shape, p.dtype, typed(p)));
  const bits = async (tuple) => {
    const out = [];
    for (let i = 0; i < tuple.size(); i++) {
      const y = tuple.get(i);
      const host = tvm.empty(y.shape, "float32", tvm.cpu()).copyFrom(y);
      await dev.sync();
      out.push(Array.from(new Uint32Array(host.toArray().buffer)));
    }
    return out;
  };
  const eye = new Float32Array(a.cols * a.cols);
  for (let i = 0; i < a.cols; i++) eye[i * a.cols + i] = 1;
  const forward = vm.getFunction("forward");
  const result = {prefill: await bits(forward(upload([1, a.cols, a.cols], "float32", eye), ...params))};
  const shortEye = eye.subarray(0, a.short * a.cols);
  result.short = await bits(forward(upload([1, a.short, a.cols], "float32", shortEye), ...params));
  result.decode = [];
  for (const column of a.columns) {
    const x = new Float32Array(a.cols);
    x[column] = 1;
    result.decode.push(await bits(forward(upload([1, 1, a.cols], "float32", x), ...params)));
  }
  const ids = tvm.empty([a.ids.length], "int32", dev).copyFrom(new Int32Array(a.ids));
  result.embed = await bits(vm.getFunction("embed")(ids, ...params));
  tvm.endScope();
  vm.dispose();
  return result;
}
"""


@pytest.mark.browser
@pytest.mark.parametrize("kernels", ["gpu", "fallback"])
def test_webgpu_kernels_decode_every_type_exactly_in_chromium(tmp_path, kernels: str) -> None:
    """The same module built for WebGPU in each kernel variant, run by TVM's JS runtime in headless
    Chromium: a 512-row prefill (whole tiles of the gpu variant's prompt rows), a 13-row one (a
    padded tile) and 1-row calls."""
    import shutil

    import browser_util
    from webrt.compiler.linking.wasm_export import export_wasm

    if not (shutil.which("emcc") and browser_util.chromium_available() and browser_util.TVMJS_DIR.is_dir()):
        pytest.skip("needs emcc, chromium + playwright and npm @mlc-ai/web-runtime")
    exported, executable = export_every_type("webgpu", kernels)
    wasm = export_wasm(executable, tmp_path / "every_type.wasm")
    values = param_values(exported.params)
    columns, ids, short = [0, 33, 300, COLS - 1], [5, 0, 3, 1, 2, 4, 0], 13
    arg = {"url": f"/lib/{wasm.name}", "cols": COLS, "columns": columns, "ids": ids, "short": short,
           "params": [{"shape": list(v.shape), "dtype": str(v.dtype), "data": v.ravel().tolist()} for v in values]}
    routes = {"/tvmjs/": browser_util.TVMJS_DIR, "/lib/": wasm.parent}
    with browser_util.StaticServer(routes, {"/": browser_util.tvmjs_page()}) as server, \
            browser_util.chromium() as browser:
        browser.goto(server.url("/"))
        result = browser.evaluate(RUN_EVERY_TYPE_JS, arg, timeout_s=300)

    def floats(words: list[int], shape: tuple[int, ...]) -> np.ndarray:
        return np.asarray(words, dtype=np.uint32).view(np.float32).reshape(shape)

    reference = blocks_and_reference()
    for i, kind in enumerate(KINDS):
        expected = reference[kind][1]
        same_float32(floats(result["prefill"][i], (COLS, ROWS)).T, expected)
        same_float32(floats(result["short"][i], (short, ROWS)).T, expected[:, :short])
        for column, outs in zip(columns, result["decode"]):
            same_float32(floats(outs[i], (ROWS,)), expected[:, column])
        np.testing.assert_array_equal(floats(result["embed"][i], (len(ids), COLS)).view(np.uint32),
                                      expected[ids].view(np.uint32))
