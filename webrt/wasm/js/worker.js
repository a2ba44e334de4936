// Module worker that hosts webrt's Python runtime (see boot.js: bootWorker).
import { bootPython } from "./boot.js";

let runtime = null;

self.onmessage = async (e) => {
  const { id, kind, payload } = e.data;
  try {
    if (kind === "boot") {
      runtime = await bootPython(payload);
      self.postMessage({ id, result: { bootMs: runtime.bootMs, where: runtime.where } });
    } else if (kind === "run") {
      if (runtime === null) throw new Error("webrt worker: not booted");
      self.postMessage({ id, result: await runtime.runPython(payload) });
    } else {
      throw new Error(`webrt worker: unknown message kind ${kind}`);
    }
  } catch (err) {
    self.postMessage({ id, error: String(err && err.stack || err) });
  }
};
