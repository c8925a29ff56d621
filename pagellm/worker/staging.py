"""Persistent host and device buffers for a step's inputs (vLLM's ``CpuGpuBuffer``).

On CUDA, a step's input arrays (token ids, positions, attention metadata) go to the device
through pinned host memory. Pinning a fresh buffer per tensor per step costs a
``cudaHostAlloc`` each time; ``StagingBuffers`` keeps one pinned host buffer and one device
buffer per input name instead, grown (to the next power of two) only when a step needs more,
and returns a view of the device buffer.

Reuse is safe by ordering: the buffers form a ring of ``num_slots`` sets, one set per call of
``begin_step``. A host buffer is written again only after the event recorded behind its last
copies (``end_step``) has completed; a device buffer is overwritten by a copy queued on the same
stream after the kernels of the step that read it. With async scheduling the host prepares
step N+1 while step N runs, so the ring needs two slots; the views of one step stay valid until
the same slot comes round again (``num_slots`` steps later).

On CPU there is no copy: ``to_device`` returns a tensor over the array itself.
"""

from __future__ import annotations

import numpy as np
import torch


class StagingBuffers:
    def __init__(self, device: torch.device, num_slots: int = 2, copies: bool | None = None):
        self.device = device
        self.num_slots = num_slots
        self.copies = device.type != "cpu" if copies is None else copies
        """False (the default on CPU): the arrays are used in place. Tests set it on CPU to
        run the ring through CPU "device" buffers."""
        self._slot = num_slots - 1
        self._host: list[dict[tuple[str, np.dtype], torch.Tensor]] = [{} for _ in range(num_slots)]
        self._device: list[dict[tuple[str, np.dtype], torch.Tensor]] = [{} for _ in range(num_slots)]
        self._events: list = [None] * num_slots
        self.num_allocations = 0
        """Buffers allocated since start (host + device); constant once the sizes settle."""

    def begin_step(self) -> None:
        """Take the next slot of the ring, waiting until its last copies are done."""
        self._slot = (self._slot + 1) % self.num_slots
        event = self._events[self._slot]
        if event is not None:
            event.synchronize()

    def end_step(self) -> None:
        """Record that this slot's copies are queued (its host buffers are free once done)."""
        if self.copies and self.device.type == "cuda":
            event = self._events[self._slot] or torch.cuda.Event()
            event.record()
            self._events[self._slot] = event

    def to_device(self, name: str, array: np.ndarray) -> torch.Tensor:
        """``array`` on the device, same dtype and shape, through this slot's ``name``
        buffers (a view of the device buffer, valid for ``num_slots`` steps)."""
        array = np.ascontiguousarray(array)
        if not self.copies:
            return torch.from_numpy(array)
        key = (name, array.dtype)
        host = self._buffer(self._host[self._slot], key, array.size, pin=True)
        device = self._buffer(self._device[self._slot], key, array.size, pin=False)
        staged = host[:array.size]
        staged.numpy()[:] = array.reshape(-1)
        target = device[:array.size]
        target.copy_(staged, non_blocking=True)
        return target.view(array.shape)

    def _buffer(self, buffers: dict, key: tuple[str, np.dtype], size: int,
                pin: bool) -> torch.Tensor:
        """The slot's buffer for ``key`` with room for ``size`` elements (grown to the next
        power of two when short)."""
        buffer = buffers.get(key)
        if buffer is None or buffer.numel() < size:
            capacity = 1 << max(size - 1, 0).bit_length()
            dtype = torch.from_numpy(np.empty(0, dtype=key[1])).dtype
            if pin:
                buffer = torch.empty(capacity, dtype=dtype, pin_memory=self.device.type == "cuda")
            else:
                buffer = torch.empty(capacity, dtype=dtype, device=self.device)
            buffers[key] = buffer
            self.num_allocations += 1
        return buffer
