// One worker thread of webrt's CPU thread pool (webrt/wasm/threads.py): an instance of the CPU
// model library's WebAssembly.Module on the library's shared memory, on the stack the pool gave it,
// running the pool's loop (parallel-loop tasks) until the pool stops.
//
// Message in: {module, memory, index, stackTop}. Messages out: {ready: index} before it enters the
// loop, {stopped: index} after, {error} if it could not start or its loop trapped. It does not
// call `_initialize` (the C++ constructors ran once, on the instance that owns the runtime), and
// every other import is a stub that throws: kernel tasks call none of them.

self.onmessage = async (e) => {
  const { module, memory, index, stackTop } = e.data;
  try {
    const imports = {};
    for (const imp of WebAssembly.Module.imports(module)) {
      const ns = (imports[imp.module] ||= {});
      if (imp.kind === "memory") ns[imp.name] = memory;
      else if (imp.kind === "function") {
        ns[imp.name] = () => { throw new Error(`webrt CPU thread ${index}: ${imp.module}.${imp.name} was called`); };
      }
    }
    const instance = await WebAssembly.instantiate(module, imports);
    instance.exports.stackRestore(stackTop);
    self.postMessage({ ready: index });
    instance.exports.webrt_worker_loop(index);
    self.postMessage({ stopped: index });
  } catch (err) {
    self.postMessage({ error: String((err && err.stack) || err) });
  }
};
