// CPU model libraries (`webrt compile --device wasm`) under TVM's JS runtime in node: the quick
// side-by-side measurement of webrt's wasm kernels, outside a browser. Every library is loaded
// once (its own instance, the same weights, a paged KV cache ready), prefills the same prompt,
// then the libraries take turns: in each round every library runs `warmup` untimed and `steps`
// timed greedy decode steps, so all of them decode at the same positions under the same load.
// One thread, like TVM's web runtime in a page (parallel loops run serially), unless "threads" > 1
// (a number, or one per library: the same library may be listed twice to pair 1 and 2 threads):
// then the library starts webrt's thread pool (webrt/wasm/threads.py) on threads - 1
// worker_threads running js/cpu_thread.js, the same worker script as in the browser.
//
//   node webrt/tools/bench/tvmjs_node.js '{"model": "dist/m", "libs": ["a.wasm", "b.wasm"],
//        "prompt": [1, 2, 3], "steps": 16, "warmup": 2, "rounds": 3, "threads": 2}'
//
// Prints one JSON object: per library its readyMs, prefillMs, tokens and per round the step
// times (ms, wall clock) and the process's CPU time per step (ms: user + system, which other
// jobs on a shared machine do not inflate; every thread of the process); with "logits": true also
// every step's logits (prefill first); with threads, "tasksRun": the parallel-loop tasks each thread
// ran. Weights come from the
// folder's tensor-cache.json and shards ("raw" records).
"use strict";
const fs = require("fs");
const path = require("path");

globalThis.tvmjs = require(path.join(__dirname, "..", "..", "..", "node_modules", "@mlc-ai", "web-runtime", "lib",
  "index.js"));
require("./tvmjs_bench.js");
const { Worker } = require("worker_threads");

const CPU_THREAD_JS = path.join(__dirname, "..", "..", "wasm", "js", "cpu_thread.js");
// worker_threads host for cpu_thread.js (a Web Worker script: self.onmessage / self.postMessage)
const NODE_THREAD = `
const { parentPort, workerData } = require("worker_threads");
globalThis.self = globalThis;
self.postMessage = (m) => parentPort.postMessage(m);
require(workerData.script);
parentPort.on("message", (data) => self.onmessage({ data }));
`;
// Pool settings, as webrt/wasm/threads.py passes them: stack, arena, spin polls, task timeout (ms).
const POOL = [1 << 20, 4 << 20, 20000, 30000];

// Start webrt's thread pool of a loaded CPU library on `threads` threads (this one included).
async function startPool(session, wasm, threads, taskTimeoutMs = POOL[3]) {
  const ex = session.tvm.lib.exports;
  if (!ex.webrt_pool_init) throw new Error("this CPU library has no thread pool (rebuild it)");
  if (ex.webrt_pool_init(threads, 1, ...POOL.slice(0, 3), taskTimeoutMs) !== 0) throw new Error("webrt_pool_init failed");
  const module = new WebAssembly.Module(wasm);
  const workers = [];
  const started = [];
  for (let index = 1; index < threads; index++) {
    const w = new Worker(NODE_THREAD, { eval: true, workerData: { script: CPU_THREAD_JS } });
    workers.push(w);
    started.push(new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`CPU thread ${index} did not start`)), 30000);
      w.on("message", (m) => {
        if (m.ready !== undefined) { clearTimeout(timer); resolve(); }
        if (m.error !== undefined) { clearTimeout(timer); reject(new Error(m.error)); }
      });
      w.on("error", (e) => { clearTimeout(timer); reject(e); });
    }));
    w.postMessage({ module, memory: session.memory, index, stackTop: ex.webrt_pool_stack_top(index) });
  }
  await Promise.all(started);
  while (ex.webrt_pool_ready() !== threads - 1) await new Promise((r) => setTimeout(r, 1));
  if (ex.webrt_pool_start() !== 0) throw new Error("webrt_pool_start failed");
  return {
    workers,
    threads: () => ex.webrt_pool_threads(),
    tasksRun: () => Array.from({ length: threads }, (_, i) => ex.webrt_pool_tasks_run(i)),
    stop: () => { ex.webrt_pool_stop(); for (const w of workers) w.terminate(); },
  };
}

function paramLoader(modelDir) {
  const cache = JSON.parse(fs.readFileSync(path.join(modelDir, "tensor-cache.json"), "utf8"));
  return (tvm, dev) => {
    for (const shard of cache.records) {
      const bytes = new Uint8Array(fs.readFileSync(path.join(modelDir, shard.dataPath)));
      for (const rec of shard.records) {
        if (rec.format !== "raw") throw new Error(`${rec.name}: record format ${rec.format} is not read here`);
        const arr = tvm.withNewScope(() => tvm.detachFromCurrentScope(tvm.empty(rec.shape, rec.dtype, dev)));
        arr.copyFromRawBytes(bytes.subarray(rec.byteOffset, rec.byteOffset + rec.nbytes));
        tvm.tensorCacheUpdate(rec.name, arr, false);
      }
    }
  };
}

async function main() {
  const opts = JSON.parse(process.argv[2]);
  const config = JSON.parse(fs.readFileSync(path.join(opts.model, "mlc-chat-config.json"), "utf8"));
  const base = {
    cpu: true, contextWindow: config.context_window_size, prefillChunk: config.prefill_chunk_size,
    loadParams: paramLoader(opts.model), logits: Boolean(opts.logits),
  };
  const runs = [];
  for (const [i, lib] of opts.libs.entries()) {
    const wasmBytes = fs.readFileSync(lib);
    const session = await webrtTvmjsLoad({ ...base, wasmBytes });
    const threads = (Array.isArray(opts.threads) ? opts.threads[i] : opts.threads) || 1;
    if (threads > 1) session.pool = await startPool(session, wasmBytes, threads);
    const prefill = await session.step(opts.prompt);
    runs.push({ lib, threads, session, readyMs: session.readyMs, prefillMs: prefill.totalMs, tokens: [prefill.token],
                rounds: [], logits: opts.logits ? [prefill.logits] : undefined });
  }
  for (let r = 0; r < (opts.rounds || 1); r++) {
    for (const run of runs) {
      const stepMs = [], cpuMs = [];
      for (let i = 0; i < (opts.warmup || 0) + opts.steps; i++) {
        const cpu0 = process.cpuUsage();
        const s = await run.session.step([run.tokens[run.tokens.length - 1]]);
        const cpu = process.cpuUsage(cpu0);
        run.tokens.push(s.token);
        if (opts.logits) run.logits.push(s.logits);
        if (i >= (opts.warmup || 0)) {
          stepMs.push(s.totalMs);
          cpuMs.push((cpu.user + cpu.system) / 1e3);
        }
      }
      run.rounds.push(stepMs);
      (run.cpuRounds = run.cpuRounds || []).push(cpuMs);
    }
  }
  for (const run of runs) {
    if (run.session.pool) {
      run.tasksRun = run.session.pool.tasksRun();
      run.session.pool.stop();
    }
  }
  const out = runs.map(({ session, ...rest }) => rest);
  process.stdout.write(JSON.stringify(out) + "\n");
}

module.exports = { paramLoader, startPool };
if (require.main === module) main().catch((err) => { console.error(err && err.stack || err); process.exit(1); });
