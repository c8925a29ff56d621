"""The paged KV cache."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CPU_KV_CACHE_BYTES = 2 * 1024**3

KV_CACHE_DTYPES = {"auto": None, "fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn",
                   "fp8_e5m2": "float8_e5m2"}
"""``kv_cache_dtype`` values (vLLM's names) -> the name of the cache's torch dtype; None = the
model dtype. ``fp8`` means e4m3 (vLLM's default on CUDA). Names, not torch dtypes: the config
(and so the scheduler process's imports) stays torch-free."""


def kv_cache_torch_dtype(kv_cache_dtype: str, model_dtype):
    """The torch dtype KV cache tensors are stored in for a ``kv_cache_dtype`` value."""
    import torch

    name = KV_CACHE_DTYPES[kv_cache_dtype]
    return getattr(torch, name) if name else model_dtype


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    """Tokens per KV cache block."""
    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory pagellm may use for weights, activations and KV cache (CUDA only)."""
    kv_cache_memory_bytes: int | None = None
    """Explicit KV cache size in bytes; overrides gpu_memory_utilization. On CPU the default is
    2 GiB."""
    swap_space: float = 4.0
    """CPU swap space in GiB for preempted requests' KV blocks (preemption_mode=swap)."""
    enable_prefix_caching: bool = True
    """Reuse the KV blocks of shared prompt prefixes across requests."""
    kv_cache_dtype: str = "auto"
    """KV cache dtype: 'auto' (the model dtype), 'fp8' (= 'fp8_e4m3') or 'fp8_e5m2'. An fp8
    cache stores K/V in one byte per element, divided by per-layer scales k_scale / v_scale
    (from the checkpoint's ``*.k_scale`` / ``*.v_scale`` tensors when present, else 1.0 as in
    vLLM), so the same memory holds 2x the blocks of a 16-bit cache (4x of float32)."""
    cpu_offload_gb: float = 0.0
    """GiB of weights to keep in CPU memory (not supported yet)."""

    def __post_init__(self) -> None:
        from pagellm.config.checks import check_choice, check_range, not_supported_yet

        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            from pagellm.errors import ClientError
            raise ClientError(f"block_size must be a power of two in [1, 256], got {self.block_size}",
                              param="block_size")
        check_range("gpu_memory_utilization", self.gpu_memory_utilization, 0.01, 1.0)
        if self.kv_cache_memory_bytes is not None:
            check_range("kv_cache_memory_bytes", self.kv_cache_memory_bytes, 1)
        check_range("swap_space", self.swap_space, 0)
        check_choice("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPES)
        check_range("cpu_offload_gb", self.cpu_offload_gb, 0)
        if self.cpu_offload_gb > 0:
            not_supported_yet("cpu_offload_gb", self.cpu_offload_gb)
