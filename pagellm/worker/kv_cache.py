"""The paged KV cache tensors of one worker, and swap copies to and from CPU swap space.

Layout per layer: ``[2, num_blocks, block_size, num_kv_heads, head_dim]`` (0 = K, 1 = V).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagellm.config.kv_sizing import kv_bytes_per_block


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    """Storage dtype: the model's, or fp8 (``kv_cache_dtype``)."""

    @property
    def bytes_per_block(self) -> int:
        element_size = torch.empty((), dtype=self.dtype).element_size()
        return kv_bytes_per_block(self.num_layers, self.block_size, self.num_kv_heads,
                                  self.head_dim, element_size)

    def layer_shape(self, num_blocks: int) -> tuple[int, ...]:
        return (2, num_blocks, self.block_size, self.num_kv_heads, self.head_dim)


class KVCache:
    """Owns the device KV tensors and the CPU swap tensors; nothing else writes them except
    the attention backend (through the per-layer views in ``layers``)."""

    def __init__(self, spec: KVCacheSpec, num_blocks: int, num_swap_blocks: int,
                 device: torch.device, pin_memory: bool):
        self.spec = spec
        self.num_blocks = num_blocks
        # One extra block that no request owns: padding rows of CUDA-graph batches write there.
        self.scratch_block = num_blocks
        # Zeroed: attention reads whole blocks and masks the unwritten tail, and 0 x NaN from
        # never-written memory would still poison the output.
        self.layers = [torch.zeros(spec.layer_shape(num_blocks + 1), dtype=spec.dtype,
                                   device=device) for _ in range(spec.num_layers)]
        self.swap_layers = [
            torch.zeros(spec.layer_shape(num_swap_blocks), dtype=spec.dtype, device="cpu",
                        pin_memory=pin_memory)
            for _ in range(spec.num_layers)] if num_swap_blocks > 0 else []
        self.device = device

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """Copy device blocks to swap blocks: pairs of (device block, swap block)."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs], device=self.device)
        dst = torch.tensor([p[1] for p in pairs])
        for cache, swap in zip(self.layers, self.swap_layers):
            _bytes_of(swap)[:, dst] = _bytes_of(cache)[:, src].to("cpu")

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """Copy swap blocks back to device blocks: pairs of (swap block, device block)."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs])
        dst = torch.tensor([p[1] for p in pairs], device=self.device)
        for cache, swap in zip(self.layers, self.swap_layers):
            _bytes_of(cache)[:, dst] = _bytes_of(swap)[:, src].to(self.device, non_blocking=True)


def _bytes_of(cache: torch.Tensor) -> torch.Tensor:
    """A one-byte (fp8) cache as uint8, the same shape: CPU indexing has no fp8 kernels."""
    return cache.view(torch.uint8) if cache.element_size() == 1 else cache
