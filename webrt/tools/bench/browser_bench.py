"""The browser benchmark: TVM's JS runtime vs webrt on the same .wasm and weights.

For each model, each runtime gets a fresh Chromium profile (so neither profits from the other's
caches): a cold load (empty caches, weights downloaded from the local server) to "ready",
prefill, `steps` timed greedy decode steps after `warmup` untimed ones, then a page reload and a
warm load to "ready" (weights from Cache Storage; webrt also creates only the kernels the model
launched). Both runtimes must produce the same tokens.

With a CPU library (``webrt compile --device wasm``), TVM's JS runtime (on ``tvm.cpu()``) and
webrt (`WebGPUModelLoader(device="cpu")`: the same loader, cache and `ModelRunner`, tensors in
wasm memory) also run it, each in a fresh profile, one thread (TVM's web runtime runs parallel
loops serially), reported beside llama.cpp's wasm build (wllama) on the model's GGUF.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webrt.chat_config import CHAT_CONFIG_FILE, TOKENIZER_JSON
from webrt.errors import ToolchainError
from webrt.tools.bench.cpu_time import CPUSampler
from webrt.tools.chromium import Page, chromium_page
from webrt.tools.paths import BOOT_DIR, find_node_package
from webrt.tools.serve import ArtifactServer, ServedModel, model_file_routes

BENCH_DIR = Path(__file__).resolve().parent
JS_PAGE = ("<!doctype html><meta charset='utf-8'><title>tvmjs bench</title>"
           "<script src='/tvmjs/index.js'></script><script src='/bench/tvmjs_bench.js'></script>")
WLLAMA_PAGE = ("<!doctype html><meta charset='utf-8'><title>wllama bench</title>"
               "<script type='module' src='/bench/wllama_bench.js'></script>")
WEBRT_PAGE = ("<!doctype html><meta charset='utf-8'><title>webrt bench</title><script type='module'>"
              "import { bootMain } from '/runtime/boot.js';"
              "window.webrtBoot = bootMain({pyodideURL: '/pyodide/', bundleURL: '/webrt-bundle.zip'})"
              ".then((rt) => { window.webrt = rt; return rt.bootMs; });</script>")
#: the same, with Python in a module worker (where the CPU library may use several threads)
WEBRT_WORKER_PAGE = WEBRT_PAGE.replace("bootMain", "bootWorker")


@dataclass
class BrowserModel:
    """A model folder and its WebGPU library, benchmarked under `label`."""

    label: str
    model_dir: Path
    wasm: Path
    #: the GGUF the model was built from, for the llama.cpp (wllama) rows
    gguf: Path | None = None
    #: the model's CPU library (``--device wasm``), for the webrt CPU row
    wasm_cpu: Path | None = None

    @property
    def slug(self) -> str:
        """The label made safe for URL paths."""
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in self.label)


def cpu_library_path(model: BrowserModel) -> str:
    """The URL path of a model's CPU library on the bench server."""
    assert model.wasm_cpu is not None
    return f"/libs/{model.slug}/cpu/{model.wasm_cpu.name}"


def bench_server(models: list[BrowserModel]) -> ArtifactServer:
    from webrt.tools.bundle import build_bundle

    tvmjs = find_node_package("@mlc-ai/web-runtime") / "lib"
    pyodide = find_node_package("pyodide")
    wllama = find_node_package("@wllama/wllama")
    for path, what in ((tvmjs / "index.js", "npm @mlc-ai/web-runtime"), (pyodide / "pyodide.mjs", "npm pyodide"),
                       (wllama / "esm" / "index.js", "npm @wllama/wllama")):
        if not path.is_file():
            raise ToolchainError(f"{path} is missing: run `npm ci` in the webrt checkout ({what}).")
    routes: dict[str, Path] = {"/tvmjs/": tvmjs, "/pyodide/": pyodide, "/runtime/": BOOT_DIR, "/bench/": BENCH_DIR,
                               "/wllama/": wllama}
    file_routes = model_file_routes([ServedModel(m.model_dir, m.wasm, m.slug) for m in models])
    file_routes.update({f"/gguf/{m.slug}.gguf": m.gguf for m in models if m.gguf is not None})
    file_routes.update({cpu_library_path(m): m.wasm_cpu for m in models if m.wasm_cpu is not None})
    files = {"/js.html": JS_PAGE, "/webrt.html": WEBRT_PAGE, "/webrt-worker.html": WEBRT_WORKER_PAGE, "/wllama.html": WLLAMA_PAGE,
             "/webrt-bundle.zip": build_bundle()}
    # the benchmark's own pages use inline scripts: no CSP; cross-origin isolated, so wllama may
    # use threads (SharedArrayBuffer)
    return ArtifactServer(routes, files, file_routes, csp=None)


#: The prompt every runtime gets (its first tokens): plain text, so that llama.cpp, which takes a
#: text prompt, sees the same token ids as the runtimes that take ids.
BENCH_TEXT = ("The history of the printing press begins long before Gutenberg, with carved wooden blocks "
              "pressed onto paper and cloth, and the slow spread of that craft along the trade routes of Asia.")


def bench_prompt(model_dir: Path, n: int, vocab: int) -> tuple[list[int], str | None]:
    """The first `n` token ids of BENCH_TEXT by the model's tokenizer.json, and their text; fixed
    spread-out ids (no text) for a model without a tokenizer.json."""
    path = Path(model_dir) / TOKENIZER_JSON
    if not path.is_file():
        return [(17 + 7919 * i) % vocab for i in range(n)], None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    ids = tokenizer.encode(BENCH_TEXT * (1 + n // 8), add_special_tokens=False).ids[:n]
    return ids, tokenizer.decode(ids)


def _options(model: BrowserModel, server: ArtifactServer, steps: int, warmup: int, prompt_len: int) -> dict[str, Any]:
    config = json.loads((model.model_dir / CHAT_CONFIG_FILE).read_text())
    vocab = int(config["vocab_size"])
    chunk = int(config.get("prefill_chunk_size") or 128)
    context = int(config["context_window_size"])
    prompt, prompt_text = bench_prompt(model.model_dir, min(prompt_len, chunk), vocab)
    slug = model.slug
    return {"modelURL": server.url(f"/models/{slug}/resolve/main/"), "model": f"/models/{slug}/",
            "wasmURL": server.url(f"/libs/{slug}/{model.wasm.name}"),
            "wasm": f"/libs/{slug}/{model.wasm.name}", "contextWindow": context, "prefillChunk": chunk,
            "prompt": prompt, "promptText": prompt_text, "steps": steps, "warmup": warmup,
            "wasmCpu": cpu_library_path(model) if model.wasm_cpu is not None else None}


def _run_tvmjs(page: Page, opts: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    return page.evaluate("(opts) => webrtBenchTvmjs(opts)", opts, timeout_s=timeout_s)


def run_page_python(page: Page, script: str, function: str, opts: dict[str, Any], timeout_s: float) -> Any:
    """In a page of WEBRT_PAGE: boot webrt, run `script` (a file of BENCH_DIR), then
    ``await function(json.dumps(opts))``; its value. Python errors in the page are raised here."""
    page.evaluate("async () => await window.webrtBoot", timeout_s=120)
    code = (BENCH_DIR / script).read_text()
    result = page.evaluate("async (code) => await window.webrt.runPython(code)", code, timeout_s=60)
    if result.get("error"):
        raise RuntimeError(result["error"])
    result = page.evaluate("async (arg) => await window.webrt.runPython(arg)",
                           f"await {function}({json.dumps(json.dumps(opts))})", timeout_s=timeout_s)
    if result.get("error"):
        raise RuntimeError(f"{function} failed in the page:\n{result['error']}")
    return result["value"]


def _run_webrt(page: Page, server: ArtifactServer, opts: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    out = run_page_python(page, "page_bench.py", "webrt_bench", opts, timeout_s)
    out["bootMs"] = page.evaluate("async () => await window.webrtBoot", timeout_s=10)
    return out


def bench_webrt_cpu(server: ArtifactServer, opts: dict[str, Any], model: BrowserModel, timeout_s: float,
                    log: Callable[[str], None], threads: int = 1) -> dict[str, Any]:
    """webrt on the model's CPU library: cold, then warm (page reloaded), in a fresh profile. With
    `threads` > 1 webrt runs in a module worker of the (cross-origin isolated) page, where the
    library's thread pool may start (`webrt.wasm.threads`)."""
    out: dict[str, Any] = {"threads": threads}
    run_opts = {**opts, "threads": threads}
    with chromium_page() as page:
        for phase, phase_opts in (("cold", run_opts), ("warm", {**run_opts, "steps": 0})):
            log(f"[bench] {model.label}: webrt CPU library, {threads} thread(s), {phase} cache ...")
            page.goto(server.url("/webrt-worker.html" if threads > 1 else "/webrt.html"))
            with CPUSampler(page.proc.pid) as sampler:
                out[phase] = run_page_python(page, "page_bench.py", "webrt_cpu_bench", phase_opts, timeout_s)
            if "stepMs" in out[phase]:
                out[phase]["cpuMsPerStep"] = _per_step(
                    sampler.cpu_ms(out[phase]["timedFromEpoch"], out[phase]["timedToEpoch"]), out[phase]["stepMs"])
        out["console_errors"] = [m for m in page.console if m.startswith(("error", "pageerror"))][:5]
    return out


def bench_tvmjs_cpu(server: ArtifactServer, opts: dict[str, Any], model: BrowserModel, timeout_s: float,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """TVM's JS runtime on the same CPU library (``tvm.cpu()``), cold, in a fresh profile: the
    reference for webrt's CPU row."""
    log(f"[bench] {model.label}: tvmjs on the CPU library ...")
    with chromium_page() as page:
        page.goto(server.url("/js.html"))
        with CPUSampler(page.proc.pid) as sampler:
            cold = _run_tvmjs(page, {**opts, "cpu": True, "wasmURL": server.url(cpu_library_path(model))}, timeout_s)
        cold["cpuMsPerStep"] = _per_step(sampler.cpu_ms(cold["timedFromEpoch"], cold["timedToEpoch"]), cold["stepMs"])
        errors = [m for m in page.console if m.startswith(("error", "pageerror"))][:5]
    return {"threads": 1, "cold": cold, "console_errors": errors}


def bench_wllama(server: ArtifactServer, opts: dict[str, Any], model: BrowserModel, threads: int,
                  timeout_s: float, log: Callable[[str], None]) -> dict[str, Any]:
    """llama.cpp (wllama) on the model's GGUF with `threads` threads: cold, then warm (page reloaded)."""
    run_opts = {**opts, "ggufURL": server.url(f"/gguf/{model.slug}.gguf"), "threads": threads}
    out: dict[str, Any] = {"threads": threads}
    with chromium_page() as page:
        for phase, phase_opts in (("cold", run_opts), ("warm", {**run_opts, "steps": 0})):
            log(f"[bench] {model.label}: wllama, {threads} thread(s), {phase} cache ...")
            page.goto(server.url("/wllama.html"))
            page.evaluate("async () => { while (!window.webrtBenchWllamaReady) await new Promise(r => setTimeout(r, 20)); }",
                          timeout_s=60)
            with CPUSampler(page.proc.pid) as sampler:
                out[phase] = page.evaluate("(opts) => webrtBenchWllama(opts)", phase_opts, timeout_s=timeout_s)
            run = out[phase]
            if run.get("predicted"):
                end = run["completionEndEpoch"]
                used = sampler.cpu_ms(end - run["decodeMsPerToken"] * run["predicted"], end)
                run["cpuMsPerStep"] = None if used is None else used / run["predicted"]
    return out


def _per_step(cpu_ms: float | None, steps: list[float]) -> float | None:
    """CPU ms per timed step (all of Chromium's processes; see `webrt.tools.bench.cpu_time`)."""
    return None if cpu_ms is None or not steps else cpu_ms / len(steps)


def bench_model(model: BrowserModel, steps: int = 8, warmup: int = 2, prompt_len: int = 8,
                timeout_s: float = 900, log: Callable[[str], None] = print,
                wllama_threads: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Both runtimes on one model: {"tvmjs": {cold, warm}, "webrt": {cold, warm}, ...}; with
    `model.wasm_cpu`, both on that CPU library ("tvmjs_cpu", "webrt_cpu"); with `model.gguf`, llama.cpp's wasm
    build (wllama) on that file too, once per thread count."""
    out: dict[str, Any] = {"label": model.label}
    with bench_server([model]) as server:
        opts = _options(model, server, steps, warmup, prompt_len)
        for runtime in ("tvmjs", "webrt"):
            log(f"[bench] {model.label}: {runtime}, cold cache ...")
            with chromium_page() as page:
                page.goto(server.url(f"/{'js' if runtime == 'tvmjs' else 'webrt'}.html"))
                cold = (_run_tvmjs(page, opts, timeout_s) if runtime == "tvmjs"
                        else _run_webrt(page, server, opts, timeout_s))
                log(f"[bench] {model.label}: {runtime}, warm cache (page reloaded) ...")
                page.goto(server.url(f"/{'js' if runtime == 'tvmjs' else 'webrt'}.html"))
                warm_opts = {**opts, "steps": 0}
                warm = (_run_tvmjs(page, warm_opts, timeout_s) if runtime == "tvmjs"
                        else _run_webrt(page, server, warm_opts, timeout_s))
                errors = [m for m in page.console if m.startswith(("error", "pageerror"))]
            out[runtime] = {"cold": cold, "warm": warm, "console_errors": errors[:5]}
        if model.wasm_cpu is not None:
            out["tvmjs_cpu"] = bench_tvmjs_cpu(server, opts, model, timeout_s, log)
            out["webrt_cpu"] = bench_webrt_cpu(server, opts, model, timeout_s, log)
        if model.gguf is not None:
            out["wllama"] = [bench_wllama(server, opts, model, threads, timeout_s, log) for threads in wllama_threads]
    out["tokens_equal"] = out["tvmjs"]["cold"]["tokens"] == out["webrt"]["cold"]["tokens"]
    out["summary"] = summarize(out)
    return out


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers the report shows (milliseconds unless named otherwise)."""
    js, py = result["tvmjs"]["cold"], result["webrt"]["cold"]
    js_step, py_step = _median(js["stepMs"]), _median(py["stepMs"])
    py_host = _median(py["hostMs"])
    return {
        "tvmjs_ready_cold_ms": js["readyMs"], "webrt_ready_cold_ms": py["readyMs"],
        "tvmjs_ready_warm_ms": result["tvmjs"]["warm"]["readyMs"], "webrt_ready_warm_ms": result["webrt"]["warm"]["readyMs"],
        "tvmjs_kernels": js["kernels"], "webrt_kernels_warm": result["webrt"]["warm"]["kernels"],
        "webrt_boot_ms": py["bootMs"],
        "tvmjs_prefill_ms": js["prefillMs"], "webrt_prefill_ms": py["prefillMs"],
        "tvmjs_step_ms": js_step, "webrt_step_ms": py_step, "step_ratio": py_step / js_step,
        "tvmjs_host_ms": _median(js["hostMs"]), "webrt_host_ms": py_host, "webrt_host_fraction": py_host / py_step,
        "dispatches_per_step": _median(py["dispatches"]),
        "webrt_sampling_ms": py.get("samplingMs", {}),
        "tokens_equal": result["tokens_equal"], "steps": len(py["stepMs"]),
    }
