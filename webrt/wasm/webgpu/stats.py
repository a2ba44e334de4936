"""Counters of the GPU bridge (host-side costs are what Python spends around them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stats:
    """Counters of one `WebGPUContext`."""

    dispatches: int = 0
    submits: int = 0
    writes: int = 0
    readbacks: int = 0
    wait_s: float = 0.0
    deferred_reads: int = 0
    stream_syncs: int = 0
    bind_group_misses: int = 0
    allocs: int = 0
    frees: int = 0
    kernels_created_lazily: list[str] = field(default_factory=list)
    #: kernel -> why this adapter rejected it when the pipelines were created up front
    kernels_failed: dict[str, str] = field(default_factory=dict)
    pipeline_s: dict[str, float] = field(default_factory=dict)

