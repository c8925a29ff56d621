"""Attention backends behind one interface, and the attention layer that uses them.

A backend owns three jobs per layer and step: the per-head work before attention (Qwen3's
q/k RMSNorm, rotary), the write of the step's new K/V into the paged cache, then attention.
The first two run as one op (``rotary_and_cache``): one Triton launch on the GPU, the same
torch ops as before elsewhere. Backends are stateless; device-specific ones (Triton) plug in
through ``get_attn_backend``.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod

import torch
from torch import nn

from pagellm.layers.attention_metadata import AttentionMetadata
from pagellm.layers.norm import RMSNorm
from pagellm.layers.rotary import RotaryEmbedding
from pagellm.ops.attention import paged_attention_torch, varlen_causal_attention, write_kv_cache
from pagellm.ops.rotary import qk_norm_rotary_and_cache
from pagellm.platforms import Platform


class AttentionBackend(ABC):
    """Paged causal attention for one flattened batch.

    Contract of ``forward``: the new tokens' K/V are written into ``kv_cache`` at
    ``attn_metadata.slot_mapping`` (the only mutation; skipped with ``kv_written``: then
    ``rotary_and_cache`` wrote them); then query token j of request i, at position
    ``seq_lens[i] - q_len_i + j``, attends to that request's context tokens 0..position (cached
    prefix plus this step's tokens). ``query``, ``key`` and ``value`` are not mutated. An empty
    or ``None`` cache means a cache-less run (memory profiling): each request's new tokens are
    then its whole context.
    """

    name: str = "abstract"
    fuse_rotary_and_cache: bool = True
    """The attention layer hands its rotary (and q/k norms) to ``rotary_and_cache`` when a
    cache is there, instead of running them as modules before ``forward``."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor | None, attn_metadata: AttentionMetadata,
                scale: float, k_scale: float = 1.0, v_scale: float = 1.0, *,
                kv_written: bool = False) -> torch.Tensor:
        """query: [T, num_heads, head_dim]; key, value: [T, num_kv_heads, head_dim];
        kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim] in the query's dtype or
        fp8 (then K/V are stored divided by ``k_scale``/``v_scale``); ``kv_written``: the
        cache already holds this step's K/V (``key``/``value`` are then not read).
        Returns [T, num_heads, head_dim] in the query's dtype."""
        if kv_cache is None or kv_cache.numel() == 0:
            return varlen_causal_attention(query, key, value, attn_metadata.query_start_loc_cpu,
                                           scale)
        if not kv_written:
            self.write_kv(key, value, kv_cache, attn_metadata.slot_mapping, k_scale, v_scale)
        return self.paged_forward(query, kv_cache, attn_metadata, scale, k_scale, v_scale)

    def rotary_and_cache(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                         value: torch.Tensor, kv_cache: torch.Tensor,
                         attn_metadata: AttentionMetadata, rotary_emb: RotaryEmbedding,
                         q_norm: RMSNorm | None, k_norm: RMSNorm | None, k_scale: float,
                         v_scale: float) -> torch.Tensor:
        """(Qwen3: ``q_norm``/``k_norm`` of each head,) rotary of query and key, and the
        rotated key and value written into ``kv_cache`` (non-empty) at the slot mapping.
        Returns the rotated query [T, num_heads, head_dim] (may be ``query`` itself, mutated);
        ``key`` and ``value`` must not be read afterwards. Here: the torch ops in the order the
        layer ran them before (``pagellm.ops.rotary.qk_norm_rotary_and_cache``)."""
        return qk_norm_rotary_and_cache(query, key, value, positions, rotary_emb.cos_sin_cache,
                                        kv_cache, attn_metadata.slot_mapping, k_scale, v_scale,
                                        *_norm_args(q_norm, k_norm))

    def write_kv(self, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, k_scale: float, v_scale: float) -> None:
        """Store this step's K/V at ``slot_mapping`` (``pagellm.ops.attention.write_kv_cache``)."""
        write_kv_cache(key, value, kv_cache, slot_mapping, k_scale, v_scale)

    @abstractmethod
    def paged_forward(self, query: torch.Tensor, kv_cache: torch.Tensor,
                      attn_metadata: AttentionMetadata, scale: float, k_scale: float,
                      v_scale: float) -> torch.Tensor:
        """``forward`` with a real cache that already holds this step's K/V: attend."""


def _norm_args(q_norm: RMSNorm | None, k_norm: RMSNorm | None) -> tuple:
    """(q weight, k weight, eps) for the fused ops; (None, None, 0.0) without q/k norms."""
    if q_norm is None:
        return None, None, 0.0
    assert k_norm is not None and k_norm.eps == q_norm.eps, "q_norm and k_norm go together"
    return q_norm.weight, k_norm.weight, q_norm.eps


class TorchAttentionBackend(AttentionBackend):
    """Pure torch: SDPA over contexts gathered through the block tables."""

    name = "torch"

    def paged_forward(self, query, kv_cache, attn_metadata, scale, k_scale, v_scale):
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
    """Multi-head / grouped-query attention over already-projected heads; it applies their
    rotary (and Qwen3's q/k norms) itself when given them, fused with the KV-cache write
    where the backend can."""

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
                kv_cache: torch.Tensor | None, attn_metadata: AttentionMetadata,
                positions: torch.Tensor | None = None, rotary_emb: RotaryEmbedding | None = None,
                q_norm: RMSNorm | None = None, k_norm: RMSNorm | None = None) -> torch.Tensor:
        """query: [T, num_heads, head_dim]; key, value: [T, num_kv_heads, head_dim], rotated
        already, or (with ``rotary_emb`` and positions [T]) not yet: then normed by
        ``q_norm``/``k_norm`` (both or neither) and rotated here, in one op with the cache
        write when a cache is there (``backend.rotary_and_cache``; query and key may be
        mutated), else by the modules. Returns [T, num_heads * head_dim]."""
        kv_written = False
        if rotary_emb is not None:
            if kv_cache is not None and kv_cache.numel() and self.backend.fuse_rotary_and_cache:
                query = self.backend.rotary_and_cache(positions, query, key, value, kv_cache,
                                                      attn_metadata, rotary_emb, q_norm, k_norm,
                                                      self.k_scale, self.v_scale)
                kv_written = True
            else:
                if q_norm is not None:
                    query, key = q_norm(query), k_norm(key)
                query, key = rotary_emb(positions, query, key)
        out = self.backend.forward(query, key, value, kv_cache, attn_metadata, self.scale,
                                   self.k_scale, self.v_scale, kv_written=kv_written)
        return out.flatten(1)


FUSED_ROTARY_ENV = "PAGELLM_FUSED_ROTARY_KV_WRITE"
"""``0`` turns the Triton backend's fused q/k-norm + rotary + KV-write launch off (separate
norm, rotary and KV-write launches, as before session 8: for comparisons); unset = on."""


class TritonAttentionBackend(AttentionBackend):
    """Triton kernels (``pagellm.ops.triton``): q/k norm + rotary + KV write in one launch,
    then one paged-attention launch for the whole mixed batch (split-KV for long decodes,
    merged in the same launch). Triton is imported on first use, so building this object
    needs no triton; a cache-less run uses the torch path (``forward``)."""

    name = "triton"

    def __init__(self, fuse_rotary_and_cache: bool | None = None):
        """``fuse_rotary_and_cache``: None = on unless ``PAGELLM_FUSED_ROTARY_KV_WRITE=0``."""
        if fuse_rotary_and_cache is None:
            fuse_rotary_and_cache = os.environ.get(FUSED_ROTARY_ENV, "1").strip() != "0"
        self.fuse_rotary_and_cache = fuse_rotary_and_cache

    def rotary_and_cache(self, positions, query, key, value, kv_cache, attn_metadata, rotary_emb,
                         q_norm, k_norm, k_scale, v_scale):
        """One launch (``qk_norm_rotary_and_cache_triton_``): the query is rotated in place."""
        from pagellm.ops.triton.rotary import qk_norm_rotary_and_cache_triton_
        return qk_norm_rotary_and_cache_triton_(query, key, value, positions,
                                                rotary_emb.cos_sin_cache, kv_cache,
                                                attn_metadata.slot_mapping, k_scale, v_scale,
                                                *_norm_args(q_norm, k_norm))

    def write_kv(self, key, value, kv_cache, slot_mapping, k_scale, v_scale):
        from pagellm.ops.triton.kv_cache import write_kv_cache_triton
        write_kv_cache_triton(key, value, kv_cache, slot_mapping, k_scale, v_scale)

    def paged_forward(self, query, kv_cache, attn_metadata, scale, k_scale, v_scale):
        from pagellm.ops.triton.paged_attention import paged_attention_triton
        return paged_attention_triton(query, kv_cache, attn_metadata.block_tables,
                                      attn_metadata.query_start_loc, attn_metadata.seq_lens, scale,
                                      max_query_len=attn_metadata.max_query_len,
                                      max_seq_len=attn_metadata.max_seq_len,
                                      k_scale=k_scale, v_scale=v_scale)
