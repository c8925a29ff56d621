"""Attention backends behind one interface, and the attention layer that uses them.

A backend owns two jobs per layer and step: write the step's new K/V into the paged cache,
then attend. Backends are stateless; device-specific ones (Triton) plug in through
``get_attn_backend``.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod

import torch
from torch import nn

from pagellm.layers.attention_metadata import AttentionMetadata
from pagellm.ops.attention import paged_attention_torch, varlen_causal_attention, write_kv_cache
from pagellm.platforms import Platform


class AttentionBackend(ABC):
    """Paged causal attention for one flattened batch.

    Contract of ``forward``: the new tokens' K/V are written into ``kv_cache`` at
    ``attn_metadata.slot_mapping`` (the only mutation); then query token j of request i, at
    position ``seq_lens[i] - q_len_i + j``, attends to that request's context tokens
    0..position (cached prefix plus this step's tokens). ``query``, ``key`` and ``value`` are
    not mutated. An empty or ``None`` cache means a cache-less run (memory profiling): each
    request's new tokens are then its whole context.
    """

    name: str = "abstract"

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor | None, attn_metadata: AttentionMetadata,
                scale: float, k_scale: float = 1.0, v_scale: float = 1.0) -> torch.Tensor:
        """query: [T, num_heads, head_dim]; key, value: [T, num_kv_heads, head_dim];
        kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim] in the query's dtype or
        fp8 (then K/V are stored divided by ``k_scale``/``v_scale``).
        Returns [T, num_heads, head_dim] in the query's dtype."""
        if kv_cache is None or kv_cache.numel() == 0:
            return varlen_causal_attention(query, key, value, attn_metadata.query_start_loc_cpu,
                                           scale)
        return self.paged_forward(query, key, value, kv_cache, attn_metadata, scale, k_scale,
                                  v_scale)

    @abstractmethod
    def paged_forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      kv_cache: torch.Tensor, attn_metadata: AttentionMetadata,
                      scale: float, k_scale: float, v_scale: float) -> torch.Tensor:
        """``forward`` with a real cache: write the new K/V, then attend."""


class TorchAttentionBackend(AttentionBackend):
    """Pure torch: SDPA over contexts gathered through the block tables."""

    name = "torch"

    def paged_forward(self, query, key, value, kv_cache, attn_metadata, scale, k_scale, v_scale):
        write_kv_cache(key, value, kv_cache, attn_metadata.slot_mapping, k_scale, v_scale)
        return paged_attention_torch(query, kv_cache, attn_metadata.block_tables,
                                     attn_metadata.seq_lens, attn_metadata.query_start_loc_cpu,
                                     attn_metadata.seq_lens_cpu, scale, k_scale, v_scale)


ATTENTION_BACKEND_ENV = "PAGELLM_ATTENTION_BACKEND"
"""Environment variable forcing a backend: ``torch`` or ``triton``; unset or empty = choose."""


def get_attn_backend(platform: Platform) -> AttentionBackend:
    """The attention backend for a platform: Triton on CUDA when triton imports, torch
    otherwise. ``PAGELLM_ATTENTION_BACKEND=torch|triton`` forces one (triton off CUDA only
    runs under ``TRITON_INTERPRET=1``). Raises ValueError for another value, ImportError when
    triton is forced but missing."""
    forced = os.environ.get(ATTENTION_BACKEND_ENV, "").strip().lower()
    if forced not in ("", "torch", "triton"):
        raise ValueError(f"{ATTENTION_BACKEND_ENV}={forced!r}: expected 'torch' or 'triton'")
    if forced == "torch":
        return TorchAttentionBackend()
    if forced == "triton":
        importlib.import_module("triton")
        return TritonAttentionBackend()
    if platform.is_cuda and _triton_imports():
        return TritonAttentionBackend()
    return TorchAttentionBackend()


def _triton_imports() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


class Attention(nn.Module):
    """Multi-head / grouped-query attention over already-projected, already-rotated heads."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 backend: AttentionBackend):
        super().__init__()
        self.num_heads = num_heads
        """Query heads."""
        self.num_kv_heads = num_kv_heads
        """Key/value heads; divides num_heads."""
        self.head_dim = head_dim
        """Dims per head."""
        self.scale = scale
        """Softmax scale, usually head_dim ** -0.5."""
        self.backend = backend
        """Where the work happens; shared by all layers."""
        self.k_scale = 1.0
        """An fp8 KV cache stores key / k_scale; set from the checkpoint's ``*.k_scale`` when
        it has one (``pagellm.models.loader``), else 1.0 as in vLLM."""
        self.v_scale = 1.0
        """Same for values."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor | None, attn_metadata: AttentionMetadata) -> torch.Tensor:
        """query: [T, num_heads, head_dim]; key, value: [T, num_kv_heads, head_dim].
        Returns [T, num_heads * head_dim]."""
        out = self.backend.forward(query, key, value, kv_cache, attn_metadata, self.scale,
                                   self.k_scale, self.v_scale)
        return out.flatten(1)


class TritonAttentionBackend(AttentionBackend):
    """Triton kernels (``pagellm.ops.triton``): KV write, then one paged-attention launch for
    the whole mixed batch (split-KV for long decodes). Triton is imported on first use, so
    building this object needs no triton; a cache-less run uses the torch path (``forward``)."""

    name = "triton"

    def paged_forward(self, query, key, value, kv_cache, attn_metadata, scale, k_scale, v_scale):
        from pagellm.ops.triton.kv_cache import write_kv_cache_triton
        from pagellm.ops.triton.paged_attention import paged_attention_triton
        write_kv_cache_triton(key, value, kv_cache, attn_metadata.slot_mapping, k_scale, v_scale)
        return paged_attention_triton(query, kv_cache, attn_metadata.block_tables,
                                      attn_metadata.query_start_loc, attn_metadata.seq_lens, scale,
                                      max_query_len=attn_metadata.max_query_len,
                                      max_seq_len=attn_metadata.max_seq_len,
                                      k_scale=k_scale, v_scale=v_scale)
