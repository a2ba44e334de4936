"""Tests of the web runtime build (webrt.compiler.linking.web_runtime) and the .wasm export.

The runtime objects take minutes to build the first time; every test here shares the cached
build (`ensure_web_runtime()`) and one exported tiny model.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import browser_util
import numpy as np
import pytest

from webrt.compiler.linking import web_runtime
from webrt.compiler.linking.wasm_export import export_wasm, wasm_exports, wasm_imports
from webrt.errors import ModelLibraryError, ToolchainError

needs_emcc = pytest.mark.skipif(shutil.which("emcc") is None, reason="emcc is not installed")

#: Every import of a TVM WebGPU model library linked by export_wasm.
EXPECTED_IMPORTS = [
    ("env", "TVMFFIWasmSafeCall"),
    ("env", "TVMFFIWasmFunctionDeleter"),
    ("env", "emscripten_notify_memory_growth"),
    ("wasi_snapshot_preview1", "clock_time_get"),
    ("wasi_snapshot_preview1", "environ_get"),
    ("wasi_snapshot_preview1", "environ_sizes_get"),
    ("wasi_snapshot_preview1", "fd_close"),
    ("wasi_snapshot_preview1", "fd_read"),
    ("wasi_snapshot_preview1", "fd_seek"),
    ("wasi_snapshot_preview1", "fd_write"),
    ("wasi_snapshot_preview1", "proc_exit"),
]

#: The headers neither wheel ships, which webrt provides itself.
OWN_HEADERS = [
    "3rdparty/compiler-rt/builtin_fp16.h",
    "include/tvm/support/io.h",
    "include/tvm/support/serializer.h",
    "include/tvm/support/cuda/nvtx.h",
    "src/support/arena.h",
    "src/support/base64.h",
    "src/support/bytes_io.h",
    "src/support/ring_buffer.h",
    "src/support/utils.h",
]

HIDDEN, IN_DIM, OUT_DIM = 40, 24, 12


def build_tiny_executable() -> Any:
    """Two layers, y = relu(x @ w1) @ w2 + 1, with a dynamic batch n, for WebGPU + wasm32."""
    import tvm
    from tvm import relax
    from tvm.script import ir as I
    from tvm.script import relax as R
    from tvm.target import Target

    @I.ir_module
    class Tiny:
        @R.function
        def main(
            x: R.Tensor(("n", IN_DIM), "float32"),
            w1: R.Tensor((IN_DIM, HIDDEN), "float32"),
            w2: R.Tensor((HIDDEN, OUT_DIM), "float32"),
        ) -> R.Tensor(("n", OUT_DIM), "float32"):
            with R.dataflow():
                h = R.nn.relu(R.matmul(x, w1))
                y = R.add(R.matmul(h, w2), R.const(1.0, "float32"))
                R.output(y)
            return y

    target = Target("webgpu", host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"})
    assert isinstance(Tiny, tvm.IRModule)
    return relax.build(Tiny, target=target)


def tiny_reference(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    return np.maximum(x @ w1, 0) @ w2 + 1


@pytest.fixture(scope="session")
def runtime_dir() -> Path:
    if shutil.which("emcc") is None:
        pytest.skip("emcc is not installed (apt-get install emscripten)")
    return web_runtime.ensure_web_runtime()


@pytest.fixture(scope="session")
def tiny_executable() -> Any:
    return build_tiny_executable()


@pytest.fixture(scope="session")
def tiny_wasm(runtime_dir: Path, tiny_executable: Any, tmp_path_factory: pytest.TempPathFactory
              ) -> Path:
    out = tmp_path_factory.mktemp("wasm") / "tiny_webgpu.wasm"
    return export_wasm(tiny_executable, out, runtime_dir=runtime_dir)


# --- the runtime build ----------------------------------------------------------------------


def test_runtime_objects_are_wasm_objects(runtime_dir: Path) -> None:
    for path in web_runtime.object_paths(runtime_dir):
        assert path.read_bytes()[:4] == b"\0asm", path
    manifest = json.loads((runtime_dir / "manifest.json").read_text())
    assert manifest["tvm_version"] == web_runtime.tvm_version()
    assert runtime_dir.name == f"{web_runtime.tvm_version()}-{manifest['key']}"


def test_second_ensure_is_instant(runtime_dir: Path) -> None:
    t0 = time.monotonic()
    again = web_runtime.ensure_web_runtime()
    assert again == runtime_dir
    assert time.monotonic() - t0 < 5


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WEBRT_CACHE_DIR", str(tmp_path))
    assert web_runtime.runtime_dir_for("abc") == (
        tmp_path / "tvm-web" / f"{web_runtime.tvm_version()}-abc"
    )
    monkeypatch.delenv("WEBRT_CACHE_DIR")
    assert web_runtime.cache_root() == Path.home() / ".cache" / "webrt"


def test_own_headers_fill_exactly_the_missing_ones() -> None:
    staged = {f.rel: f.src for f in web_runtime.staged_files()}
    own_dir = web_runtime.OWN_HEADERS_DIR.resolve()
    from_webrt = sorted(rel for rel, src in staged.items() if own_dir in src.resolve().parents)
    assert from_webrt == sorted(OWN_HEADERS)
    assert "web/emcc/wasm_runtime.cc" in staged
    assert "3rdparty/tvm-ffi/src/ffi/function.cc" in staged


def test_cache_key_depends_on_inputs() -> None:
    files = web_runtime.staged_files()
    key = web_runtime.build_key(files, "emcc 3.1.6")
    assert key == web_runtime.build_key(files, "emcc 3.1.6")
    assert key != web_runtime.build_key(files, "emcc 9.9.9")
    assert key != web_runtime.build_key(files[1:], "emcc 3.1.6")


def test_missing_emcc_is_a_toolchain_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                           ) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match="apt-get install emscripten"):
        web_runtime.ensure_web_runtime()
    class Exportable:
        def export_library(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("must not be reached without emcc")

    with pytest.raises(ToolchainError, match="apt-get install emscripten"):
        export_wasm(Exportable(), tmp_path / "x.wasm")


# --- the export -----------------------------------------------------------------------------


def test_wasm_validates_in_node(tiny_wasm: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    script = "new WebAssembly.Module(require('fs').readFileSync(process.argv[1]));"
    proc = subprocess.run(["node", "-e", script, str(tiny_wasm)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_wasm_imports_are_exactly_the_expected_set(tiny_wasm: Path) -> None:
    imports = wasm_imports(tiny_wasm)
    assert len(imports) == len(set(imports))
    assert sorted(imports) == sorted(EXPECTED_IMPORTS)


def test_wasm_exports_the_ffi_c_api(tiny_wasm: Path) -> None:
    exports = set(wasm_exports(tiny_wasm))
    for name in ("memory", "TVMFFIFunctionCall", "TVMFFIFunctionGetGlobal", "TVMFFIObjectDecRef",
                 "TVMFFIErrorMoveFromRaised", "TVMFFIEnvModRegisterSystemLibSymbol"):
        assert name in exports, name


def test_export_leaves_no_partial_files(tiny_wasm: Path) -> None:
    assert [p.name for p in tiny_wasm.parent.iterdir()] == [tiny_wasm.name]


def test_failed_link_is_a_toolchain_error_and_writes_nothing(
        runtime_dir: Path, tiny_executable: Any, tmp_path: Path) -> None:
    out = tmp_path / "bad.wasm"
    with pytest.raises(ToolchainError, match="emcc link failed"):
        export_wasm(tiny_executable, out, runtime_dir=runtime_dir,
                    options=["-s", "WEBRT_NO_SUCH_SETTING=1"])
    assert list(tmp_path.iterdir()) == []


def test_wasm_reader_rejects_non_wasm(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"not wasm at all")
    with pytest.raises(ModelLibraryError):
        wasm_imports(bad)
    bad.write_bytes(b"\0asm\x01\0\0\0\x02\x10\x01")  # import section cut short
    with pytest.raises(ModelLibraryError):
        wasm_imports(bad)


# --- webrt's own support headers, compiled natively -----------------------------------------

HEADER_TEST_CC = r"""
#include <builtin_fp16.h>
#include <tvm/ffi/dtype.h>
#include <tvm/support/cuda/nvtx.h>
#include <tvm/support/io.h>
#include <tvm/support/serializer.h>
#include "src/support/arena.h"
#include "src/support/base64.h"
#include "src/support/bytes_io.h"
#include "src/support/ring_buffer.h"
#include "src/support/utils.h"

#include <cstdio>
#include <deque>
#include <fstream>
#include <map>
#include <random>
#include <unordered_map>

using namespace tvm;
#define EXPECT(c) do { if (!(c)) { std::fprintf(stderr, "FAILED %s:%d %s\n", __FILE__, __LINE__, #c); return 1; } } while (0)

static void Save(const std::string& dir, const char* name, const std::string& data) {
  std::ofstream(dir + "/" + name, std::ios::binary) << data;
}

int main(int argc, char** argv) {
  std::string dir = argv[1];
  // half -> float for every bit pattern
  std::string floats;
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(static_cast<uint16_t>(h));
    floats.append(reinterpret_cast<const char*>(&f), 4);
  }
  Save(dir, "fp16.bin", floats);

  // serializer layout + round trip
  std::string blob;
  {
    support::BytesOutStream out(&blob);
    support::Stream* s = &out;
    s->Write(uint64_t(0x0102030405060708ULL));
    s->Write(int32_t(-2));
    s->Write(std::string("hello"));
    s->Write(std::vector<int64_t>{1, -1, 3});
    s->Write(std::vector<std::string>{"a", "bc"});
    std::map<std::string, std::string> m{{"k", "v"}};
    s->Write(m);
    s->Write(DLDataType{2, 32, 4});
    s->Write(DLDevice{kDLWebGPU, 3});
    ffi::Map<ffi::String, ffi::Array<ffi::String>> fm;
    fm.Set("f", ffi::Array<ffi::String>{"x", "yz"});
    s->Write(fm);
    s->Write(ffi::Array<DLDataType>{DLDataType{0, 8, 1}});
    int64_t arr[2] = {7, 8};
    s->WriteArray(arr, 2);
  }
  Save(dir, "serialized.bin", blob);
  {
    support::BytesInStream in{ffi::Bytes(blob)};
    support::Stream* s = &in;
    uint64_t u; int32_t i; std::string str; std::vector<int64_t> v; std::vector<std::string> vs;
    std::unordered_map<std::string, std::string> m; DLDataType t; DLDevice d;
    ffi::Map<ffi::String, ffi::Array<ffi::String>> fm; ffi::Array<DLDataType> ta; int64_t arr[2];
    EXPECT(s->Read(&u) && u == 0x0102030405060708ULL);
    EXPECT(s->Read(&i) && i == -2);
    EXPECT(s->Read(&str) && str == "hello");
    EXPECT(s->Read(&v) && v.size() == 3 && v[1] == -1);
    EXPECT(s->Read(&vs) && vs.size() == 2 && vs[1] == "bc");
    EXPECT(s->Read(&m) && m.size() == 1 && m["k"] == "v");
    EXPECT(s->Read(&t) && t.code == 2 && t.bits == 32 && t.lanes == 4);
    EXPECT(s->Read(&d) && d.device_type == kDLWebGPU && d.device_id == 3);
    EXPECT(s->Read(&fm) && fm.size() == 1 && fm.at("f")[1] == "yz");
    EXPECT(s->Read(&ta) && ta.size() == 1 && ta[0].bits == 8);
    EXPECT(s->ReadArray(arr, 2) && arr[0] == 7 && arr[1] == 8);
    EXPECT(!s->Read(&u));  // at the end
  }

  // base64 both ways, with whitespace in the input
  std::string plain;
  for (int k = 0; k < 1000; ++k) plain += static_cast<char>((k * 37) & 255);
  std::string encoded_all;
  for (size_t n : {0, 1, 2, 3, 4, 5, 1000}) {
    std::string enc;
    support::BytesOutStream mo(&enc);
    support::Base64OutStream bo(&mo);
    bo.Write(plain.data(), n);
    bo.Finish();
    encoded_all += enc + "\n";
    std::string spaced = "  \n" + enc;
    if (enc.size() > 4) spaced.insert(5, "\r\n ");
    support::BytesInStream mi(spaced);
    support::Base64InStream bi(&mi);
    bi.InitPosition();
    std::string back(n + 8, '\0');
    EXPECT(bi.Read(&back[0], back.size()) == n);
    EXPECT(back.substr(0, n) == plain.substr(0, n));
  }
  Save(dir, "base64.txt", encoded_all);

  // ring buffer against a deque model
  {
    support::RingBuffer rb;
    std::deque<char> model;
    std::mt19937 rng(1);
    char next = 0;
    for (int step = 0; step < 20000; ++step) {
      int op = rng() % 4;
      size_t n = rng() % 3000;
      if (op == 0) {
        std::string data(n, 0);
        for (auto& c : data) { c = next++; model.push_back(c); }
        rb.Write(data.data(), n);
      } else if (op == 1) {
        n = std::min(n, model.size());
        std::string out(n, 0);
        rb.Read(&out[0], n);
        for (size_t k = 0; k < n; ++k) { EXPECT(out[k] == model.front()); model.pop_front(); }
      } else if (op == 2) {
        size_t limit = rng() % 2000;
        size_t got = rb.ReadWithCallback([&](const void* p, size_t sz) {
          size_t take = std::min(sz, limit);
          limit -= take;
          for (size_t k = 0; k < take; ++k) {
            if (static_cast<const char*>(p)[k] != model.front()) std::abort();
            model.pop_front();
          }
          return take;
        }, n);
        EXPECT(got <= n);
      } else {
        size_t fill = rng() % (n + 1);
        size_t got = rb.WriteWithCallback([&](void* p, size_t sz) {
          size_t put = std::min(sz, fill);
          for (size_t k = 0; k < put; ++k) { static_cast<char*>(p)[k] = next; model.push_back(next++); }
          return put;
        }, n);
        EXPECT(got == std::min(n, fill));
      }
      if (step % 97 == 0) rb.Reserve(rng() % 10000);
      EXPECT(rb.bytes_available() == model.size());
    }
  }

  // arena: allocations stay intact until RecycleAll
  {
    support::Arena arena;
    for (int round = 0; round < 3; ++round) {
      std::vector<std::pair<int64_t*, int>> blocks;
      for (int k = 1; k < 300; ++k) {
        int count = (k * 131) % 5000;
        int64_t* p = arena.allocate_<int64_t>(count);
        EXPECT(reinterpret_cast<uintptr_t>(p) % alignof(int64_t) == 0);
        for (int j = 0; j < count; ++j) p[j] = k * 100000 + j;
        blocks.push_back({p, count});
        char* c = arena.allocate_<char>(k % 7);
        (void)c;
      }
      for (size_t b = 0; b < blocks.size(); ++b)
        for (int j = 0; j < blocks[b].second; ++j) EXPECT(blocks[b].first[j] == int64_t(b + 1) * 100000 + j);
      arena.RecycleAll();
    }
  }

  EXPECT(support::StartsWith(std::string("RPCSessionTimeoutError: x"), "RPCSessionTimeoutError: "));
  EXPECT(!support::StartsWith(std::string("RPC"), "RPCSession"));
  { support::NVTXScopedRange r("x"); support::NVTXScopedRange r2(std::string("y")); }
  std::puts("OK");
  return 0;
}
"""


def test_support_headers_natively(tmp_path: Path) -> None:
    """Compile webrt's headers with g++ against the tvm-ffi wheel and check them bit for bit."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is not installed")
    import tvm_ffi

    ffi_dir = Path(tvm_ffi.__file__).parent
    own = web_runtime.OWN_HEADERS_DIR
    src = tmp_path / "headers_test.cc"
    src.write_text(HEADER_TEST_CC)
    exe = tmp_path / "headers_test"
    cmd = [cxx, "-std=c++17", "-O1", f"-I{own}", f"-I{own / 'include'}",
           f"-I{own / '3rdparty' / 'compiler-rt'}", f"-I{ffi_dir / 'include'}",
           f"-I{ffi_dir / '3rdparty' / 'dlpack' / 'include'}", str(src), "-o", str(exe),
           f"-L{ffi_dir / 'lib'}", "-ltvm_ffi", f"-Wl,-rpath,{ffi_dir / 'lib'}"]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "OK", run.stderr + run.stdout

    # half -> float: identical bits to numpy's conversion for every non-NaN, NaN for NaN
    got = np.frombuffer((tmp_path / "fp16.bin").read_bytes(), dtype=np.float32)
    want = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))

    # the serialized layout TVM's compiler writes
    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    expected = b"".join([
        struct.pack("<Q", 0x0102030405060708), struct.pack("<i", -2), s("hello"),
        struct.pack("<Q3q", 3, 1, -1, 3), struct.pack("<Q", 2) + s("a") + s("bc"),
        struct.pack("<Q", 1) + s("k") + s("v"), struct.pack("<BBH", 2, 32, 4),
        struct.pack("<ii", 15, 3),
        struct.pack("<Q", 1) + s("f") + struct.pack("<Q", 2) + s("x") + s("yz"),
        struct.pack("<Q", 1) + struct.pack("<BBH", 0, 8, 1), struct.pack("<2q", 7, 8),
    ])
    assert (tmp_path / "serialized.bin").read_bytes() == expected

    plain = bytes((k * 37) & 255 for k in range(1000))
    lines = (tmp_path / "base64.txt").read_text().split("\n")[:-1]
    assert lines == [base64.b64encode(plain[:n]).decode() for n in (0, 1, 2, 3, 4, 5, 1000)]


# --- end to end in the browser --------------------------------------------------------------

RUN_TINY_JS = """
async (a) => {
  const logs = [];
  const gpu = await tvmjs.detectGPUDevice();
  if (!gpu) throw new Error("no WebGPU adapter");
  const bytes = await (await fetch(a.url)).arrayBuffer();
  const tvm = await tvmjs.instantiate(bytes, tvmjs.createPolyfillWASI(), (m) => logs.push(String(m)));
  tvm.initWebGPU(gpu.device);
  tvm.beginScope();
  const dev = tvm.webgpu();
  const vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(dev));
  await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule());
  const upload = (t) => tvm.empty(t.shape, "float32", dev).copyFrom(new Float32Array(t.data));
  const w1 = upload(a.w1), w2 = upload(a.w2);
  const outputs = [];
  for (const x of a.xs) {
    const y = vm.getFunction("main")(upload(x), w1, w2);
    const host = tvm.empty(y.shape, "float32", tvm.cpu()).copyFrom(y);
    await dev.sync();
    outputs.push({shape: y.shape, data: Array.from(host.toArray())});
  }
  tvm.endScope();
  vm.dispose();
  return {outputs, logs, adapter: gpu.adapterInfo.architecture || gpu.adapterInfo.vendor};
}
"""


@pytest.mark.browser
def test_tiny_model_runs_in_chromium_webgpu(tiny_wasm: Path) -> None:
    """The exported .wasm runs under TVM's JS runtime on WebGPU and matches numpy."""
    if not browser_util.chromium_available():
        pytest.skip("chromium or playwright is not installed")
    if not browser_util.TVMJS_DIR.is_dir():
        pytest.skip("npm @mlc-ai/web-runtime is not installed (npm ci)")

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((IN_DIM, HIDDEN)).astype(np.float32)
    w2 = rng.standard_normal((HIDDEN, OUT_DIM)).astype(np.float32)
    xs = [rng.standard_normal((n, IN_DIM)).astype(np.float32) for n in (5, 1)]

    def tensor(a: np.ndarray) -> dict[str, Any]:
        return {"shape": list(a.shape), "data": a.ravel().tolist()}

    arg = {"url": f"/model/{tiny_wasm.name}", "w1": tensor(w1), "w2": tensor(w2),
           "xs": [tensor(x) for x in xs]}
    routes = {"/tvmjs/": browser_util.TVMJS_DIR, "/model/": tiny_wasm.parent}
    with browser_util.StaticServer(routes, {"/": browser_util.tvmjs_page()}) as server, \
            browser_util.chromium() as browser:
        browser.goto(server.url("/"))
        result = browser.evaluate(RUN_TINY_JS, arg, timeout_s=180)
        console = list(browser.console)

    assert len(result["outputs"]) == len(xs)
    for x, out in zip(xs, result["outputs"], strict=True):
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        np.testing.assert_allclose(got, tiny_reference(x, w1, w2), rtol=1e-5, atol=1e-4)
    errors = [m for m in console if m.startswith(("error", "pageerror")) or "WebGPU" in m]
    assert errors == [], errors
