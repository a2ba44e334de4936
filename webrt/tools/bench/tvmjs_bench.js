// The reference side of `webrt bench`: a model library driven by TVM's own JS runtime ("tvmjs",
// npm @mlc-ai/web-runtime), with WebLLM's sequence: detectGPUDevice, instantiate, initWebGPU,
// createVirtualMachine, asyncLoadWebGPUPipelines, fetchTensorCache + getParamsFromCacheByName,
// create_tir_paged_kv_cache; then prefill and a greedy decode loop with argmax on the device
// (one int32 read back per step). Loaded as a classic script after /tvmjs/index.js.

// With opts.cpu, the same on a CPU library (`webrt compile --device wasm`, opts.wasmURL): no
// WebGPU, the VM and every tensor on tvm.cpu() in wasm memory. Outside a page (node:
// tvmjs_node.js) opts.wasmBytes replaces the fetch of opts.wasmURL and opts.loadParams(tvm, dev)
// fills the tensor cache instead of fetchTensorCache.

// Load a library to a KV cache ready for the first token: {readyMs, ..., step(tokens)}, where
// step runs one forward pass + argmax on the device and returns the token and where the time went
// (with opts.logits, the step's logits too, as an array).
// A CPU library imports a shared memory (it has webrt's thread pool): the memory to give it, with
// the limits it was linked with (webrt/wasm/threads.py), or null for a library that has its own.
function webrtSharedMemoryFor(wasm) {
  const module = new WebAssembly.Module(wasm);
  if (!WebAssembly.Module.imports(module).some((imp) => imp.kind === "memory")) return null;
  return new WebAssembly.Memory({ initial: (160 << 20) / 65536, maximum: 32768, shared: true });
}

// tvmjs.instantiate with the memory a CPU library imports: {tvm, memory (null: the library's own)}.
async function webrtTvmjsInstantiate(wasm, logger = () => {}) {
  const wasi = tvmjs.createPolyfillWASI();
  const memory = webrtSharedMemoryFor(wasm);
  if (memory) wasi.imports.env.memory = memory;
  return { tvm: await tvmjs.instantiate(wasm, wasi, logger), memory };
}

async function webrtTvmjsLoad(opts) {
  const now = () => performance.now();
  const t0 = now();
  const gpu = opts.cpu ? null : await tvmjs.detectGPUDevice();
  if (!gpu && !opts.cpu) throw new Error("no WebGPU adapter");
  const wasm = opts.wasmBytes || await (await fetch(opts.wasmURL)).arrayBuffer();
  const { tvm, memory } = await webrtTvmjsInstantiate(wasm);
  if (gpu) tvm.initWebGPU(gpu.device);
  const dev = gpu ? tvm.webgpu() : tvm.cpu();
  tvm.beginScope();
  const vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(dev));
  const tPipelines = now();
  if (gpu) await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule());
  const pipelinesMs = now() - tPipelines;
  const metadata = JSON.parse(vm.getFunction("_metadata")());
  const tWeights = now();
  if (opts.loadParams) opts.loadParams(tvm, dev);
  else await tvm.fetchTensorCache(opts.modelURL, dev, "webrt-bench-tvmjs", "cache");
  const params = tvm.detachFromCurrentScope(tvm.getParamsFromCacheByName(metadata.params.map((p) => p.name)));
  const weightsMs = now() - tWeights;
  const fn = (name) => tvm.detachFromCurrentScope(vm.getFunction(name));
  const embed = fn("embed"), prefill = fn("prefill"), decode = fn("decode"), argmax = fn("argmax_logits");
  const begin = tvm.detachFromCurrentScope(tvm.getGlobalFunc("vm.builtin.kv_state_begin_forward"));
  const end = tvm.detachFromCurrentScope(tvm.getGlobalFunc("vm.builtin.kv_state_end_forward"));
  const addSequence = tvm.detachFromCurrentScope(tvm.getGlobalFunc("vm.builtin.kv_state_add_sequence"));
  const shape = (v) => tvm.makeShapeTuple(v);
  const kv = tvm.detachFromCurrentScope(fn("create_tir_paged_kv_cache")(
    shape([1]), shape([opts.contextWindow]), shape([opts.prefillChunk]), shape([16]), shape([0])));
  addSequence(kv, new tvmjs.Scalar(0, "int64"));
  await dev.sync();
  const readyMs = now() - t0;
  const kernels = gpu ? Object.keys(JSON.parse(vm.getInternalModule().getFunction("webgpu.get_fmap", true)())).length : 0;
  tvm.endScope();

  const host = tvm.withNewScope(() => tvm.detachFromCurrentScope(tvm.empty([1], "int32", tvm.cpu())));
  const step = async (tokens) => {
    const s0 = now();
    tvm.beginScope();
    const ids = tvm.empty([tokens.length], "int32", dev).copyFrom(Int32Array.from(tokens));
    const embedding = embed(ids, params);
    const hidden = embedding.shape[embedding.shape.length - 1];
    begin(kv, shape([0]), shape([tokens.length]));
    const out = (tokens.length > 1 ? prefill : decode)(embedding.view([1, tokens.length, hidden]), kv, params);
    end(kv);
    host.copyFrom(argmax(out.get(0)));
    const logits = opts.logits ? tvm.empty(out.get(0).shape, "float32", tvm.cpu()).copyFrom(out.get(0)) : null;
    const s1 = now();
    await dev.sync();
    const token = host.toArray()[0];
    const result = { token, totalMs: now() - s0, hostMs: s1 - s0 };
    if (logits) result.logits = Array.from(logits.toArray());
    tvm.endScope();
    return result;
  };
  return { readyMs, pipelinesMs, weightsMs, kernels, step, tvm, memory };
}

async function webrtBenchTvmjs(opts) {
  const { readyMs, pipelinesMs, weightsMs, kernels, step } = await webrtTvmjsLoad(opts);
  if (!opts.steps) return { runtime: "tvmjs", readyMs, pipelinesMs, weightsMs, kernels };
  const prefillStep = await step(opts.prompt);
  const tokens = [prefillStep.token];
  const steps = [];
  let timedFromEpoch = Date.now();
  for (let i = 0; i < opts.warmup + opts.steps; i++) {
    if (i === opts.warmup) timedFromEpoch = Date.now();
    const s = await step([tokens[tokens.length - 1]]);
    tokens.push(s.token);
    if (i >= opts.warmup) steps.push(s);
  }
  return {
    runtime: "tvmjs", readyMs, pipelinesMs, weightsMs, prefillMs: prefillStep.totalMs,
    stepMs: steps.map((s) => s.totalMs), hostMs: steps.map((s) => s.hostMs), tokens, kernels,
    timedFromEpoch, timedToEpoch: Date.now(),
  };
}
globalThis.webrtTvmjsInstantiate = webrtTvmjsInstantiate;
globalThis.webrtTvmjsLoad = webrtTvmjsLoad;
globalThis.webrtBenchTvmjs = webrtBenchTvmjs;
