"""Launch setup shared by the weight-only quantized GEMMs (``wna16_gemm``, ``gguf_gemm``):
x [M, K] @ a packed weight [K, N] -> [M, N] in x.dtype, one program per
(BLOCK_M, BLOCK_N) output tile and K slice.

Two launch shapes:
- decode (M <= 32 rows): a 16- or 32-row tile and split-K, so enough programs run to keep
  every SM streaming weights (each weight word is read once per call; the partial sums of
  the K slices are added into a float32 buffer with atomics, then cast to x.dtype);
- prefill: 64/128-row tiles, no split.
The kernels take ``(..., out, M, N, K, k_per_split, ...)`` and the constexprs ``ATOMIC``,
``BLOCK_M``, ``BLOCK_N``, ``BLOCK_K``; each kernel's module picks BLOCK_K to fit its packing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import triton

DECODE_MAX_ROWS = 32


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (4 for CPU tensors under the interpreter,
    ``TRITON_INTERPRET=1``)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_k_config(M: int, N: int, K: int, num_sms: int,
                   fit_block_k: Callable[[int], int]) -> dict:
    """Tile sizes, split-K and warps for one call (module docstring). ``fit_block_k(b)``
    turns the preferred BLOCK_K ``b`` (128 decode, 64 prefill) into the kernel's. Returns
    BLOCK_M, BLOCK_N, BLOCK_K, split_k (K slices, >= 1), k_per_split (a multiple of
    BLOCK_K), num_warps, num_stages."""
    decode = M <= DECODE_MAX_ROWS
    block_m = (16 if M <= 16 else 32) if decode else (64 if M <= 64 else 128)
    block_n = 64 if decode else 128
    block_k = fit_block_k(128 if decode else 64)
    tiles = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)
    k_tiles = triton.cdiv(K, block_k)
    split_k = max(1, min(k_tiles, triton.cdiv(4 * num_sms, max(tiles, 1)))) if decode else 1
    k_per_split = triton.cdiv(k_tiles, split_k) * block_k
    split_k = triton.cdiv(K, k_per_split)
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, split_k=split_k,
                k_per_split=k_per_split, num_warps=4 if decode or block_m == 64 else 8,
                num_stages=3)


def split_k_gemm(x: torch.Tensor, N: int, bias: torch.Tensor | None,
                 make_config: Callable[[int, int, int], dict],
                 launch: Callable[[tuple, torch.Tensor, torch.Tensor, dict, bool], None]
                 ) -> torch.Tensor:
    """x [..., K] @ a weight [K, N] (+ bias) -> [..., N] in x.dtype.

    ``make_config(M, K, num_sms)`` gives the call's ``split_k_config``; ``launch(grid, x2,
    out, config, atomic)`` runs the kernel on x2 [M, K] (unit stride along K) into out
    [M, N] (float32 zeros when ``atomic``, the split-K case; else x.dtype). Nothing is
    launched for M == 0."""
    x2 = x.reshape(-1, x.shape[-1])                                  # [M, K]
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M, K = x2.shape
    config = make_config(M, K, num_sms(x.device))
    atomic = config["split_k"] > 1
    out = (torch.zeros((M, N), device=x.device, dtype=torch.float32) if atomic
           else torch.empty((M, N), device=x.device, dtype=x.dtype))  # [M, N]
    if M > 0:
        grid = (triton.cdiv(M, config["BLOCK_M"]), triton.cdiv(N, config["BLOCK_N"]),
                config["split_k"])
        launch(grid, x2, out, config, atomic)
    if atomic:
        out = out.to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], N)
