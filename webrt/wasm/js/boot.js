// webrt boot: load Pyodide, unpack webrt's pure-Python packages, and expose `runPython`.
//
// Works on the main thread (`bootMain`) and inside a module worker (`worker.js` calls
// `bootPython`); `bootWorker` starts that worker and talks to it with postMessage.
// Python finds the GPU itself (`webrt.wasm.webgpu.request_device`); nothing here touches WebGPU.
//
// Options: {pyodideURL: ".../node_modules/pyodide/" (trailing slash), bundleURL: zip of webrt/...}

const LIB_DIR = "/home/pyodide/webrt-lib";
// Longest wait for the worker to boot (Pyodide and webrt downloaded, unpacked, imported).
const BOOT_TIMEOUT_MS = 300_000;

// The Python side of `runPython`: run code in one shared namespace, return JSON text.
const RUNNER = `
import json as _json, traceback as _tb
from pyodide.code import eval_code_async as _eval_code_async
_webrt_ns = {"__name__": "__webrt__"}

async def _webrt_run(code):
    try:
        value = await _eval_code_async(code, _webrt_ns)
        return _json.dumps({"value": value}, default=repr)
    except BaseException:
        return _json.dumps({"error": _tb.format_exc()})
_webrt_run
`;

/** Load Pyodide and webrt; return {pyodide, runPython(code) -> Promise<{value}|{error}>}. */
export async function bootPython(opts) {
  const t0 = performance.now();
  // where this script's siblings are (the CPU thread pool's worker script, cpu_thread.js)
  globalThis.webrtRuntimeURL = new URL("./", import.meta.url).href;
  const base = new URL(opts.pyodideURL, globalThis.location.href).href;
  const { loadPyodide } = await import(base + "pyodide.mjs");
  const [pyodide, zip] = await Promise.all([
    loadPyodide({ indexURL: base }),
    fetch(new URL(opts.bundleURL, globalThis.location.href)).then((r) => {
      if (!r.ok) throw new Error(`webrt bundle: HTTP ${r.status} for ${opts.bundleURL}`);
      return r.arrayBuffer();
    }),
  ]);
  pyodide.unpackArchive(zip, "zip", { extractDir: LIB_DIR });
  pyodide.runPython(`import sys\nif ${JSON.stringify(LIB_DIR)} not in sys.path: sys.path.insert(0, ${JSON.stringify(LIB_DIR)})`);
  const run = pyodide.runPython(RUNNER);
  const bootMs = performance.now() - t0;
  return {
    pyodide,
    bootMs,
    where: typeof window === "undefined" ? "worker" : "main",
    async runPython(code) {
      return JSON.parse(await run(code));
    },
  };
}

/** Boot on the main thread. */
export async function bootMain(opts) {
  return await bootPython(opts);
}

/** Boot inside a module worker; the returned object has the same `runPython`.
 *
 * `opts.onEvent(event)` (optional) receives what Python in the worker posts while it runs,
 * e.g. `js.postMessage(to_js({"event": {...}}))` for progress reports and streamed text.
 * Every wait on the worker is bounded: the boot by `opts.bootTimeoutMs` (default
 * BOOT_TIMEOUT_MS), each `runPython(code, {timeoutMs})` by its `timeoutMs` when given (a model
 * load may rightly take minutes on a slow network, so runs have no default). A wait that runs
 * out rejects with an Error named "WorkerTimeoutError"; a late answer is dropped.
 */
export async function bootWorker(opts) {
  const { onEvent, bootTimeoutMs = BOOT_TIMEOUT_MS, ...bootOpts } = opts;
  const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  const pending = new Map();
  let nextId = 1;
  worker.onmessage = (e) => {
    if (e.data && e.data.event !== undefined) {
      if (onEvent) onEvent(e.data.event);
      return;
    }
    const { id, result, error } = e.data;
    const p = pending.get(id);
    if (!p) return;
    pending.delete(id);
    if (error !== undefined) p.reject(new Error(error));
    else p.resolve(result);
  };
  worker.onerror = (e) => {
    for (const p of pending.values()) p.reject(new Error(`webrt worker error: ${e.message}`));
    pending.clear();
  };
  const call = (kind, payload, timeoutMs) => new Promise((resolve, reject) => {
    const id = nextId++;
    let timer = null;
    const settle = (fn) => (value) => { clearTimeout(timer); fn(value); };
    pending.set(id, { resolve: settle(resolve), reject: settle(reject) });
    if (timeoutMs) {
      timer = setTimeout(() => {
        if (!pending.delete(id)) return;
        const err = new Error(`webrt worker: no answer to "${kind}" within ${timeoutMs} ms; the worker is busy ` +
          "or hung (reload the page to start a new one)");
        err.name = "WorkerTimeoutError";
        reject(err);
      }, timeoutMs);
    }
    worker.postMessage({ id, kind, payload });
  });
  const info = await call("boot", bootOpts, bootTimeoutMs);
  return {
    worker,
    bootMs: info.bootMs,
    where: info.where,
    runPython: (code, { timeoutMs } = {}) => call("run", code, timeoutMs),
  };
}
