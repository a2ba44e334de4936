"""From a built executable to a WebGPU model library: TVM's web runtime objects and the emcc link."""
