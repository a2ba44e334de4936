"""TVM's WGSL kernels: what a launch needs from a kernel's FunctionInfo (`KernelSpec`), and the
compiled kernel whose `launch` is the raw packed-function body the wasm calls (`Kernel`).

Launch convention of TVM's WGSL codegen: buffer arguments at `@binding(i)` in argument order
(`storage` or `read-only-storage` from the `paramWriteAccess` tag), then one uniform `PODArgs`
with every scalar as 32 bits plus `packGridDimX`; a grid x of 65536 or more is folded into z.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from webrt.errors import ModelLibraryError

#: Bytes of one launch's uniform slot (at least the device's minUniformBufferOffsetAlignment).
UNIFORM_SLOT = 256
#: Launches per submitted batch (one uniform slot each).
UNIFORM_SLOTS = 1024


@dataclass
class KernelSpec:
    """What a launch needs from TVM's FunctionInfo of one kernel."""

    name: str
    arg_types: list[str]
    buffer_args: list[int]
    pod_args: list[int]
    write_access: list[int]
    dispatch_to_dim: list[int]

    @staticmethod
    def from_info(finfo: dict[str, Any]) -> KernelSpec:
        dispatch: list[int] = []
        access: list[int] = []
        for tag in finfo.get("launch_param_tags", []):
            if tag.startswith("blockIdx."):
                dispatch.append("xyz".index(tag[-1]))
            elif tag.startswith("threadIdx."):
                dispatch.append(3 + "xyz".index(tag[-1]))
            elif tag.startswith("paramWriteAccess:"):
                access = [int(x) for x in json.loads(tag[len("paramWriteAccess:"):])]
            else:
                raise ModelLibraryError(f"kernel {finfo.get('name')}: unknown launch tag {tag!r}")
        buffers, pods = [], []
        for i, t in enumerate(finfo["arg_types"]):
            if t == "handle":
                buffers.append(i)
            elif t.startswith(("int", "uint", "float")):
                pods.append(i)
            else:
                raise ModelLibraryError(f"kernel {finfo.get('name')}: cannot pass a {t} argument to WebGPU")
        if len(access) != len(buffers):
            if access:
                raise ModelLibraryError(f"kernel {finfo.get('name')}: paramWriteAccess has {len(access)} entries "
                                        f"for {len(buffers)} buffers")
            access = [1] * len(buffers)
        return KernelSpec(finfo["name"], list(finfo["arg_types"]), buffers, pods, access, dispatch)

    def arg_struct(self) -> struct.Struct:
        """Decodes the kernel's TVMFFIAny[] arguments into (args..., launch params...)."""
        fmt = "<"
        for t in self.arg_types:
            fmt += "8xI4x" if t == "handle" else ("8xd" if t.startswith("float") else "8xq")
        fmt += "8xq" * len(self.dispatch_to_dim)
        return struct.Struct(fmt)

    def pod_struct(self) -> struct.Struct:
        """Encodes the PODArgs uniform: every scalar as 32 bits, then packGridDimX."""
        fmt = "<"
        for i in self.pod_args:
            t = self.arg_types[i]
            fmt += "f" if t.startswith("float") else ("I" if t.startswith("uint") else "i")
        return struct.Struct(fmt + "I")


def fold_grid(x: int, z: int) -> tuple[int, int]:
    """TVM's fold of a grid x >= 65536 into z (the shader unpacks with packGridDimX)."""
    while x >= 65536:
        x = x // 2 if x % 2 == 0 else (x + 1) // 2
        z *= 2
    return x, z


class LaunchContext(Protocol):
    """What `Kernel.launch` uses of its `webrt.wasm.webgpu.context.WebGPUContext`."""

    memory: Any
    storage: Any  # webrt.wasm.webgpu.buffers.BufferTable

    def bind_group(self, kernel: Kernel, key: tuple[int, ...], ptrs: Sequence[int]) -> Any: ...

    def use_buffers(self, ptrs: Sequence[int]) -> None: ...

    def dispatch(self, pipeline: Any, group: Any, pack_uniforms: Callable[..., None], values: Sequence[Any],
                 x: int, y: int, z: int) -> None: ...


class Kernel:
    """One compiled WGSL kernel; `launch` is the raw packed-function body the wasm calls."""

    def __init__(self, ctx: LaunchContext, spec: KernelSpec, bind_group_layout: Any, pipeline: Any):
        self.ctx, self.spec = ctx, spec
        self.bind_group_layout = bind_group_layout
        self.pipeline = pipeline
        self.id = -1
        self.launches = 0
        self.launch = self._make_launch()

    def _make_launch(self) -> Callable[[int, int, int], int]:
        ctx = self.ctx
        spec = self.spec
        unpack = spec.arg_struct().unpack
        nargs_expected = len(spec.arg_types) + len(spec.dispatch_to_dim)
        nbytes = 16 * nargs_expected
        buf_idx = tuple(spec.buffer_args)
        pod_idx = tuple(spec.pod_args)
        pack_pod = spec.pod_struct().pack_into
        nfixed = len(spec.arg_types)
        # where each grid dimension (blockIdx.x/y/z) comes from in the decoded values
        grid_src = [-1, -1, -1]
        for i, d in enumerate(spec.dispatch_to_dim):
            if d < 3:
                grid_src[d] = nfixed + i
        gx, gy, gz = grid_src
        bind_groups = ctx.storage.bind_groups
        serials = ctx.storage.serials
        bind_group = ctx.bind_group
        use_buffers = ctx.use_buffers
        dispatch = ctx.dispatch
        kernel = self
        pipeline = self.pipeline
        read = ctx.memory.read
        name = spec.name

        def launch(args: int, nargs: int, result: int) -> int:
            if nargs != nargs_expected:
                raise ModelLibraryError(f"kernel {name} called with {nargs} arguments, expected {nargs_expected}")
            vals = unpack(read(args, nbytes))
            wx = vals[gx] if gx >= 0 else 1
            wy = vals[gy] if gy >= 0 else 1
            if gz >= 0 and vals[gz] != 1:
                raise ModelLibraryError(f"kernel {name}: blockIdx.z is reserved for WebGPU's grid folding")
            wz = 1
            pack_x = wx
            if wx >= 65536:
                wx, wz = fold_grid(wx, wz)
            ptrs = [vals[i] for i in buf_idx]
            key = (kernel.id, *[serials[p] for p in ptrs])
            group = bind_groups.get(key)
            if group is None:
                group = bind_group(kernel, key, ptrs)
            dispatch(pipeline, group, pack_pod, (*[vals[i] for i in pod_idx], pack_x), wx, wy, wz)
            use_buffers(ptrs)  # after dispatch: a full batch is submitted first, this launch opens the next
            kernel.launches += 1
            return 0

        return launch
