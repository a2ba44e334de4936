"""What a model library needs from the adapter: features, subgroup size, and the error naming
the build to use instead. Pure Python."""

from __future__ import annotations

from typing import Any, Protocol

from webrt.errors import FeatureNotSupportedError, ModelLibraryError


class AdapterFeatures(Protocol):
    """What `check_library` reads of a device (`webrt.wasm.webgpu.device.GPUInfo`)."""

    features: frozenset[str]
    subgroup_min_size: int
    subgroup_max_size: int

    @property
    def description(self) -> str: ...


def f32_alternative(quantization: str | None) -> str:
    """The f32 build of the same scheme: q4f16_1 -> q4f32_1, q0f16 -> q0f32."""
    if quantization and "f16" in quantization:
        return quantization.replace("f16", "f32")
    return "q4f32_1"


def missing_feature_message(feature: str, quantization: str | None, adapter: str) -> str:
    """Why `adapter` cannot run a `quantization` library that needs `feature`, and what to use."""
    if feature == "shader-f16":
        return (f"this adapter ({adapter}) has no shader-f16, which the "
                f"{quantization or 'f16'} model library needs; use the {f32_alternative(quantization)} build "
                "of the model instead.")
    if feature == "subgroups":
        return (f"this adapter ({adapter}) has no WebGPU subgroups, which this model library was compiled "
                "for; use a build compiled without subgroups.")
    return f"this adapter ({adapter}) lacks the WebGPU feature {feature!r} the model library needs."


def check_library(metadata: dict[str, Any], gpu: AdapterFeatures) -> None:
    """Refuse a library that cannot run correctly on this device (typed errors)."""
    webrt = metadata.get("webrt") or {}
    device = webrt.get("device", "webgpu")
    if device != "webgpu":
        raise ModelLibraryError(f"the model library was compiled for {device}, not webgpu; "
                                "build it with `webrt compile --device webgpu`.")
    quant = metadata.get("quantization") or webrt.get("quantization")
    required = list(webrt.get("required_features") or [])
    if webrt.get("model_dtype") == "float16" and "shader-f16" not in required:
        required.append("shader-f16")
    for feature in required:
        if feature not in gpu.features:
            raise FeatureNotSupportedError(missing_feature_message(feature, quant, gpu.description))
    sg = int(webrt.get("subgroup_size") or 0)
    if sg > 0:
        if "subgroups" not in gpu.features:
            raise FeatureNotSupportedError(missing_feature_message("subgroups", quant, gpu.description))
        have = gpu.subgroup_min_size
        if not have or have < sg:
            raise FeatureNotSupportedError(
                f"the model library was compiled for subgroups of {sg} lanes but this adapter "
                f"({gpu.description}) has subgroups of {have or 'unknown size'}{' to ' + str(gpu.subgroup_max_size) if gpu.subgroup_max_size and gpu.subgroup_max_size != have else ''}; "
                f"its results would be wrong. Use a build compiled without subgroups (subgroup_size 0)."
            )
