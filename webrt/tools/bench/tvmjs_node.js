// CPU model libraries (`webrt compile --device wasm`) under TVM's JS runtime in node: the quick
// side-by-side measurement of webrt's wasm kernels, outside a browser. Every library is loaded
// once (its own instance, the same weights, a paged KV cache ready), prefills the same prompt,
// then the libraries take turns: in each round every library runs `warmup` untimed and `steps`
// timed greedy decode steps, so all of them decode at the same positions under the same load.
// node runs one thread, like TVM's web runtime in a page (parallel loops run serially).
//
//   node webrt/tools/bench/tvmjs_node.js '{"model": "dist/m", "libs": ["a.wasm", "b.wasm"],
//        "prompt": [1, 2, 3], "steps": 16, "warmup": 2, "rounds": 3}'
//
// Prints one JSON object: per library its readyMs, prefillMs, tokens and per round the step
// times (ms, wall clock) and the process's CPU time per step (ms: user + system, which other
// jobs on a shared machine do not inflate); with "logits": true also every step's logits
// (prefill first). Weights come from the
// folder's tensor-cache.json and shards ("raw" records).
"use strict";
const fs = require("fs");
const path = require("path");

globalThis.tvmjs = require(path.join(__dirname, "..", "..", "..", "node_modules", "@mlc-ai", "web-runtime", "lib",
  "index.js"));
require("./tvmjs_bench.js");

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
  for (const lib of opts.libs) {
    const session = await webrtTvmjsLoad({ ...base, wasmBytes: fs.readFileSync(lib) });
    const prefill = await session.step(opts.prompt);
    runs.push({ lib, session, readyMs: session.readyMs, prefillMs: prefill.totalMs, tokens: [prefill.token],
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
  const out = runs.map(({ session, ...rest }) => rest);
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => { console.error(err && err.stack || err); process.exit(1); });
