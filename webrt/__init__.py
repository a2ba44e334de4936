"""webrt: large language models in the browser on WebGPU, driven from Python."""

__version__ = "0.1.0"
