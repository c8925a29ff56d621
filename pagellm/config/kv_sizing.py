"""How big the paged KV cache is: the arithmetic the worker runs at start-up and
``pagellm plan`` runs ahead of time (one code path, so the plan's block count is the engine's).

Torch-free. Units: bytes and blocks; ``element_size`` is the KV dtype's bytes per element.
"""

from __future__ import annotations

from pagellm.config.cache import DEFAULT_CPU_KV_CACHE_BYTES, CacheConfig
from pagellm.errors import ClientError

GiB = 1024**3


def kv_heads_per_rank(total_num_kv_heads: int, tensor_parallel_size: int) -> int:
    """KV heads one tensor-parallel rank holds: split across ranks when tp <= heads, else one
    head replicated on tp / heads ranks (``QKVParallelLinear``'s rule)."""
    if tensor_parallel_size >= total_num_kv_heads:
        return 1
    return total_num_kv_heads // tensor_parallel_size


def kv_bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                       element_size: int) -> int:
    """Bytes of one block across this rank's layers: K and V of ``block_size`` tokens."""
    return num_layers * 2 * block_size * num_kv_heads * head_dim * element_size


def cuda_kv_budget(gpu_memory_utilization: float, total_bytes: int, torch_peak_bytes: int,
                   non_torch_bytes: int) -> int:
    """KV bytes on a GPU: ``gpu_memory_utilization x total`` minus the torch peak of the
    profiling forward (weights + activations) minus memory held outside torch (the CUDA
    context, other processes). May be <= 0 (nothing left)."""
    return (int(gpu_memory_utilization * total_bytes) - torch_peak_bytes
            - max(non_torch_bytes, 0))


def fixed_kv_budget(cache: CacheConfig) -> int | None:
    """The budget that needs no measurement: ``kv_cache_memory_bytes`` when given, else None
    (on CPU the caller uses ``DEFAULT_CPU_KV_CACHE_BYTES``)."""
    return cache.kv_cache_memory_bytes


def cpu_kv_budget(cache: CacheConfig) -> int:
    """The CPU budget: ``kv_cache_memory_bytes`` or 2 GiB."""
    budget = fixed_kv_budget(cache)
    return DEFAULT_CPU_KV_CACHE_BYTES if budget is None else budget


def num_kv_blocks(budget_bytes: int, bytes_per_block: int, swap_space_gib: float
                  ) -> tuple[int, int]:
    """(device blocks, CPU swap blocks) for a budget: whole blocks only."""
    return int(budget_bytes // bytes_per_block), int(swap_space_gib * GiB // bytes_per_block)


def check_max_model_len_fits(num_blocks: int, block_size: int, max_model_len: int,
                             budget_bytes: int) -> None:
    """ClientError (the engine's start-up error) when one request of ``max_model_len`` tokens
    does not fit in the cache."""
    if num_blocks * block_size < max_model_len:
        raise ClientError(
            f"the KV cache holds {num_blocks * block_size} tokens ({num_blocks} blocks "
            f"of {block_size}, {budget_bytes / GiB:.2f} GiB) but max_model_len={max_model_len} "
            "needs more: lower max_model_len, or raise kv_cache_memory_bytes / "
            "gpu_memory_utilization", param="max_model_len")
