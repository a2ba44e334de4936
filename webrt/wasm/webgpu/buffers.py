"""The storage buffers TVM allocates on a WebGPU device, and the bind groups cached over them.

TVM sees a buffer id (an index into `buffers`; 0 is the null pointer). Each GPUBuffer also has a
serial that stays with it while it is recycled, so bind groups cached per (kernel, serials)
survive free + re-alloc. A freed buffer is released only after the next submit (`release_freed`):
small ones are kept for reuse, the others destroyed and their bind groups dropped.
"""

from __future__ import annotations

from typing import Any, Callable

#: Freed buffers up to this size are recycled (at most 8 per size) instead of destroyed.
RECYCLE_MAX_BYTES = 1 << 20
_RECYCLE_PER_SIZE = 8


class BufferTable:
    """Storage buffers by id, their serials, and the bind group cache (see module docstring)."""

    def __init__(self, create: Callable[[int], Any], destroy: Callable[[Any], None],
                 check_size: Callable[[int], None] | None = None):
        self._create = create  # size -> a new storage GPUBuffer
        self._destroy = destroy  # GPUBuffer -> None
        self._check_size = check_size  # size -> None, or raises (a buffer the device cannot hold)
        self.buffers: list[Any] = [None]
        self.serials: list[int] = [0]
        self._sizes: list[int] = [0]
        self._free_ids: list[int] = []
        self._next_serial = 1
        self._recycled: dict[int, list[tuple[Any, int]]] = {}
        self._after_submit: list[tuple[int, Any, int]] = []
        #: (kernel id, buffer serials...) -> GPUBindGroup
        self.bind_groups: dict[tuple[int, ...], Any] = {}
        self._keys_of: dict[int, list[tuple[int, ...]]] = {}  # serial -> bind group keys

    def alloc(self, nbytes: int) -> int:
        """A new storage buffer of at least `nbytes` (4-byte multiple); returns its id."""
        size = max(4, (int(nbytes) + 3) & ~3)
        pool = self._recycled.get(size)
        if pool:
            buf, serial = pool.pop()
        else:
            if self._check_size is not None:
                self._check_size(size)
            buf = self._create(size)
            serial = self._next_serial
            self._next_serial += 1
        if self._free_ids:
            ptr = self._free_ids.pop()
            self.buffers[ptr] = buf
            self.serials[ptr] = serial
            self._sizes[ptr] = size
        else:
            ptr = len(self.buffers)
            self.buffers.append(buf)
            self.serials.append(serial)
            self._sizes.append(size)
        return ptr

    def free(self, ptr: int) -> None:
        """Take buffer `ptr` out of use; it is released by the next `release_freed`."""
        buf = self.buffers[ptr]
        if buf is None:
            raise ValueError(f"WebGPU buffer {ptr} is already free")
        self.buffers[ptr] = None
        self._free_ids.append(ptr)
        self._after_submit.append((self._sizes[ptr], buf, self.serials[ptr]))
        self.serials[ptr] = 0

    def release_freed(self) -> None:
        """Recycle (small) or destroy the buffers freed since the last call."""
        for size, buf, serial in self._after_submit:
            pool = self._recycled.setdefault(size, [])
            if size <= RECYCLE_MAX_BYTES and len(pool) < _RECYCLE_PER_SIZE:
                pool.append((buf, serial))
            else:
                for key in self._keys_of.pop(serial, ()):
                    self.bind_groups.pop(key, None)
                self._destroy(buf)
        self._after_submit.clear()

    @property
    def has_freed(self) -> bool:
        """Whether buffers wait for `release_freed`."""
        return bool(self._after_submit)

    def buffer(self, ptr: int) -> Any:
        """The live GPUBuffer of id `ptr` (ValueError otherwise)."""
        buf = self.buffers[ptr] if 0 < ptr < len(self.buffers) else None
        if buf is None:
            raise ValueError(f"{ptr} is not a live WebGPU buffer")
        return buf

    def remember_bind_group(self, key: tuple[int, ...], group: Any) -> None:
        """Cache `group` under `key` until one of its buffers is destroyed."""
        self.bind_groups[key] = group
        for serial in set(key[1:]):
            self._keys_of.setdefault(serial, []).append(key)

    def destroy_all(self) -> None:
        """Destroy every buffer: live, freed, or kept for reuse."""
        self.release_freed()
        for buf in self.buffers:
            if buf is not None:
                self._destroy(buf)
        self.buffers, self.serials, self._sizes, self._free_ids = [None], [0], [0], []
        for pool in self._recycled.values():
            for buf, _ in pool:
                self._destroy(buf)
        self._recycled.clear()
        self.bind_groups.clear()
        self._keys_of.clear()
