// The peer side of `webrt bench browser --gguf`: llama.cpp compiled to wasm (npm @wllama/wllama,
// CPU, SIMD128; more than one thread only in a cross-origin isolated page) running the GGUF file
// itself. Greedy completion of the same prompt token ids webrt and tvmjs get; llama.cpp's own
// timings (prompt_ms, predicted_per_token_ms) give prefill and decode. wllama takes a text prompt
// (not ids): `promptText` is the text of webrt's prompt ids. Loaded as a module.
import { Wllama } from "/wllama/esm/index.js";

window.webrtBenchWllama = async (opts) => {
  const now = () => performance.now();
  const t0 = now();
  const wllama = new Wllama({ default: "/wllama/esm/wasm/wllama.wasm" }, { suppressNativeLog: true });
  await wllama.loadModelFromUrl(opts.ggufURL, {
    n_threads: opts.threads, n_ctx: opts.contextWindow, n_batch: opts.prefillChunk, useCache: true,
  });
  const readyMs = now() - t0;
  const out = { runtime: "wllama", readyMs, threads: opts.threads, crossOriginIsolated };
  if (opts.steps > 0) {
    const maxTokens = opts.warmup + opts.steps + 1;
    const reply = await wllama.createCompletion({ prompt: opts.promptText, max_tokens: maxTokens, temperature: 0 });
    out.completionEndEpoch = Date.now();  // decoding is the last predicted_ms before it
    const t = reply.timings || {};
    out.prefillMs = t.prompt_ms;
    out.promptTokens = t.prompt_n;
    out.decodeMsPerToken = t.predicted_per_token_ms;
    out.predicted = t.predicted_n;
    out.text = reply.choices[0].text;
  }
  await wllama.exit();
  return out;
};
window.webrtBenchWllamaReady = true;
