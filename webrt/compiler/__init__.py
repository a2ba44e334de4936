"""webrt's compiler: HF / GGUF weights to an MLC tensor cache, mlc-chat-config.json and model libraries.

- ``sources/``: a HF folder or a GGUF file read as HF-named tensors plus a HF config dict;
- ``quantization.py``, ``weights.py``: the schemes, and source tensors mapped (fused, quantized)
  onto a library's parameters; ``gguf_planes.py``: GGUF quantized tensors kept exactly;
- ``convert_weight.py``, ``gen_config.py``, ``compile.py``: the three ``webrt`` verbs;
- ``build.py``: model config to relax IRModule to VM executable (pipeline, metadata);
- ``schedules/``: webrt's own TIR (CPU and WebGPU matmul schedules, sampling kernels);
- ``linking/``: TVM's web runtime objects and the emcc link to a ``.wasm``;
- ``output.py``: an output folder written all at once.

The architectures are in :mod:`webrt.models` (one registry, :mod:`webrt.models.registry`).
"""
