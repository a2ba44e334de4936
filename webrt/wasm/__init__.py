"""webrt's browser runtime: TVM model libraries (.wasm) hosted by pure Python on Pyodide: WebGPU
libraries, and CPU libraries (``webrt compile --device wasm``) for pages without a usable adapter.

Modules (all importable on CPython too; only calls into the browser need `js` / `pyodide`):

- `ffi`: the TVM FFI ABI on wasm32 (type indices, `TVMFFIAny` packing, DLTensor layout).
- `memory`: wasm linear memory from Python, the argument-frame stack.
- `wasi`: the WASI subset a model library imports.
- `objects`: Object / Function / Module / Tensor / ShapeTuple / Array wrappers.
- `instance`: instantiating the .wasm, calls both ways, errors and traps.
- `webgpu/`: adapter/device, feature checks, TVM's WebGPU device API, kernels and launches.
- `runtime`: the relax VM on WebGPU, pipeline creation with progress; `open_vm` / `read_metadata`
  (shared) refuse a library of the other kind (`LibraryDeviceError`).
- `cpu`: `CPURuntime`, the relax VM of a CPU library on ``kDLCPU`` (tensors in wasm memory).
- `threads`: the CPU library's thread pool on Web Workers over its shared memory, and where a page
  may have threads (cross-origin isolated, engine in a worker).
- `weights`: tensor-cache records from fetched shards (JS buffers) onto the GPU or into wasm memory.
- `backend`: `WasmBackend`, the engine's `Backend` for the browser (either kind of library).
- `loader`: `WebGPUModelLoader`, the engine's `ModelLoader` for the browser (files through the
  cache in `webrt.ndarray_cache`, device with the record's features, saved kernel list; the
  record's CPU library ``model_lib_cpu`` without WebGPU or on a fallback adapter).
- `js/`: ``boot.js`` and ``worker.js``, the page-side scripts that start Pyodide and unpack
  webrt's browser bundle (served at ``/runtime/`` by ``webrt serve``); ``cpu_thread.js``, one
  worker thread of a CPU library's pool.

Boot sequence in a page (js/boot.js, main thread or module worker)::

    loadPyodide({indexURL}) ; fetch webrt bundle zip ; pyodide.unpackArchive(zip) ; sys.path += dir
    # then, from Python (top-level await / an asyncio task):
    loader = WebGPUModelLoader(app_config)      # device, files through webrt.ndarray_cache
    engine = Engine(app_config, loader=loader)  # or: backend = await loader.load(record, chat_config, None)
    await engine.reload(model_id)               #     runner = ModelRunner(backend, window)
"""
