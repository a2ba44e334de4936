"""webrt's own TIR: the schedules of its matmul kernels (CPU, WebGPU) and the sampling kernels."""
