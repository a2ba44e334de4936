"""``webrt compile``: mlc-chat-config.json -> a model library.

Devices: ``webgpu`` (a .wasm whose kernels are WGSL shaders), ``wasm`` (a .wasm whose kernels are
wasm32+simd128 CPU code: the browser's CPU, for pages without a usable WebGPU adapter) and
``cpu`` (a native .so for TVM's runtime: tests, the terminal chat). A WebGPU library comes in one
of two kernel variants (``kernels``: ``gpu``, the default, for real GPUs; ``fallback`` for software
adapters such as SwiftShader; see :data:`webrt.compiler.build.KERNEL_VARIANTS`), recorded in its
``_metadata``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from webrt.compiler.build import (
    DEVICES,
    WASM_DEVICES,
    build_executable,
    check_kernels,
    check_subgroup_size,
    export_model,
    make_target,
)
from webrt.compiler.gen_config import load_chat_config
from webrt.compiler.output import check_output_file
from webrt.compiler.quantization import get_quantization
from webrt.errors import ModelConfigError
from webrt.models.config import TransformerConfig, check_windows
from webrt.models.registry import architecture_for_hf

OVERRIDABLE = {
    "context_window_size": int,
    "sliding_window_size": int,
    "prefill_chunk_size": int,
    "attention_sink_size": int,
}


def parse_overrides(text: str | None) -> dict[str, int]:
    """``"context_window_size=1024;prefill_chunk_size=128"`` -> dict, with clear errors."""
    result: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(";"))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in OVERRIDABLE:
            raise ModelConfigError(
                f"bad override {item!r}; use key=value with key one of: {', '.join(OVERRIDABLE)}"
            )
        try:
            result[key] = OVERRIDABLE[key](value.strip())
        except ValueError:
            raise ModelConfigError(f"override {key} needs an integer, got {value.strip()!r}") from None
    return result


def model_config_for(chat_config: dict[str, Any], overrides: dict[str, int]) -> TransformerConfig:
    """The model config the library is built with: chat-config values, then overrides."""
    config = TransformerConfig.from_dict(chat_config["model_config"])
    architecture_for_hf(config.architecture)  # a clear error for an unknown architecture
    values = {
        "context_window_size": chat_config["context_window_size"],
        "sliding_window_size": chat_config["sliding_window_size"],
        "prefill_chunk_size": chat_config["prefill_chunk_size"],
    }
    values.update({k: v for k, v in overrides.items() if k in values})
    check_windows(values["context_window_size"], values["sliding_window_size"], values["prefill_chunk_size"],
                  overrides.get("attention_sink_size", chat_config.get("attention_sink_size", -1)),
                  "the chat config's window fields and --overrides (context_window_size, sliding_window_size, "
                  "prefill_chunk_size, attention_sink_size)")
    if values["context_window_size"] == -1 and values["sliding_window_size"] == -1:
        raise ModelConfigError("either context_window_size or sliding_window_size must be positive")
    window = values["sliding_window_size"] if values["sliding_window_size"] > 0 else values["context_window_size"]
    if values["prefill_chunk_size"] <= 0:
        raise ModelConfigError("prefill_chunk_size must be positive")
    values["prefill_chunk_size"] = min(values["prefill_chunk_size"], window)
    return config.override(**values)


def default_library_name(chat_config: dict[str, Any], device: str, kernels: str | None = None,
                         subgroup_size: int = 0) -> str:
    """The default library file name: ``<model_type>-<quantization>-<device>.wasm`` (``.so`` for ``cpu``;
    ``-webgpu-fallback.wasm`` for the fallback kernel variant, ``-sg32`` for 32-lane subgroups)."""
    suffix = ".wasm" if device in WASM_DEVICES else ".so"
    variant = ("-fallback" if kernels == "fallback" else "") + (f"-sg{subgroup_size}" if subgroup_size else "")
    return f"{chat_config['model_type']}-{chat_config['quantization']}-{device}{variant}{suffix}"


def compile_model(
    chat_config_path: str | Path,
    device: str,
    output: str | Path,
    overrides: str | None = None,
    kernels: str | None = None,
    subgroup_size: int = 0,
) -> Path:
    """Build the library and write it to ``output`` (atomically). Returns the path.

    ``kernels`` picks the WebGPU kernel variant (``gpu`` when None); other devices take none.
    ``subgroup_size`` > 0 builds WebGPU reductions with subgroup shuffles of that many lanes."""
    if device not in DEVICES:
        raise ModelConfigError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    kernels = check_kernels(device, kernels)
    subgroup_size = check_subgroup_size(device, subgroup_size)
    if not Path(output).is_dir():
        check_output_file(output)  # a bad output path fails now, not after the build
    chat_config = load_chat_config(chat_config_path)
    quant = get_quantization(chat_config["quantization"])
    if quant.keeps_gguf:
        quant = quant.with_formats(chat_config.get("gguf_formats") or {})
    config = model_config_for(chat_config, parse_overrides(overrides))
    out = Path(output)
    if out.is_dir():
        out = out / default_library_name(chat_config, device, kernels, subgroup_size)
    out.parent.mkdir(parents=True, exist_ok=True)

    exported = export_model(config, quant, make_target(device, subgroup_size))
    executable = build_executable(exported, device, kernels)
    if exported.memory_plan is not None:  # MLC-LLM's memory report (webrt.compiler.memory_plan)
        print(exported.memory_plan.report(), flush=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        if device in WASM_DEVICES:
            from webrt.compiler.linking.wasm_export import export_wasm

            export_wasm(executable, tmp, webgpu=(device == "webgpu"))
        else:
            executable.export_library(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
