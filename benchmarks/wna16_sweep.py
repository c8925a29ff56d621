"""Tile sweep of the W4A16 Triton GEMM at Llama-3.1-8B decode shapes (one H200): for each
(M, K, N) the default launch config and a grid of alternatives, in µs per call and GB/s of
weight bytes read, next to the bf16 ``F.linear`` of the same shape. Picks launch_config.

PYTHONPATH=. python benchmarks/wna16_sweep.py
"""

from __future__ import annotations

import itertools

import torch
import triton
from triton.testing import do_bench

from pagellm.ops.triton import wna16_gemm as kernel_module

SHAPES = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]   # (K, N): qkv, o, gate_up, down
ROWS = [1]
GROUP = 128


def run_config(x, qweight, scales, zeros, cfg, unpack):
    M, K = x.shape
    N = qweight.shape[1]
    k_per_split = triton.cdiv(triton.cdiv(K, cfg["split_k"]), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
    split_k = triton.cdiv(K, k_per_split)
    atomic = split_k > 1
    out = (torch.zeros((M, N), device=x.device, dtype=torch.float32) if atomic
           else torch.empty((M, N), device=x.device, dtype=x.dtype))
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]), split_k)
    kernel_module._wna16_gemm_kernel[grid](
        x, qweight, scales, zeros, qweight, out, M, N, K, GROUP, k_per_split,
        x.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0), out.stride(0),
        BITS=4, HAS_ZEROS=True, HAS_G_IDX=False, ONE_GROUP_PER_TILE=GROUP % cfg["BLOCK_K"] == 0,
        ATOMIC=atomic, UNPACK_IN_REGISTERS=unpack, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
    return out.to(x.dtype) if atomic else out


def main() -> None:
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for (K, N), M in itertools.product(SHAPES, ROWS):
        x = torch.randn(M, K, dtype=torch.bfloat16, device="cuda")
        qweight = torch.randint(-2**31, 2**31 - 1, (K // 8, N), dtype=torch.int32, device="cuda")
        scales = torch.rand(K // GROUP, N, dtype=torch.bfloat16, device="cuda") * 0.01
        zeros = torch.randint(-2**31, 2**31 - 1, (K // GROUP, N // 8), dtype=torch.int32,
                              device="cuda")
        dense = torch.randn(N, K, dtype=torch.bfloat16, device="cuda")
        bf16_us = do_bench(lambda: torch.nn.functional.linear(x, dense), warmup=20, rep=100) * 1e3
        nbytes = K * N // 2 + scales.numel() * 2 + zeros.numel() * 4
        default = kernel_module.launch_config(M, N, K, GROUP, False, 4, sms)
        reference = run_config(x, qweight, scales, zeros, default, True)
        results = []
        for block_n, block_k, split, warps, stages, unpack in itertools.product(
                (32, 64, 128), (64, 128), ("auto", 1), (4, 8), (3,), (True, False)):
            cfg = dict(BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
                       num_stages=stages)
            tiles = triton.cdiv(N, block_n)
            cfg["split_k"] = (max(1, min(K // block_k, triton.cdiv(4 * sms, tiles)))
                              if split == "auto" else 1)
            try:
                out = run_config(x, qweight, scales, zeros, cfg, unpack)
                if not torch.allclose(out.float(), reference.float(), rtol=2e-2, atol=2e-2):
                    continue
                us = do_bench(lambda: run_config(x, qweight, scales, zeros, cfg, unpack),
                              warmup=10, rep=50) * 1e3
            except Exception:
                continue
            results.append((us, block_n, block_k, cfg["split_k"], warps, stages, unpack))
        default_us = do_bench(lambda: run_config(x, qweight, scales, zeros, default, True),
                              warmup=10, rep=50) * 1e3
        results.sort()
        best = results[0]
        print(f"M={M} K={K} N={N}: bf16 {bf16_us:.1f} us | default {default_us:.1f} us "
              f"({nbytes / default_us / 1e3:.0f} GB/s) | best {best[0]:.1f} us "
              f"({nbytes / best[0] / 1e3:.0f} GB/s) BN={best[1]} BK={best[2]} split={best[3]} "
              f"warps={best[4]} stages={best[5]} unpack_regs={best[6]}")
        for row in results[1:4]:
            print(f"    next: {row[0]:.1f} us BN={row[1]} BK={row[2]} split={row[3]} "
                  f"warps={row[4]} stages={row[5]} unpack_regs={row[6]}")


def fp8_parts() -> None:
    """The fp8 W8A8 decode path's pieces at M=1: the per-token activation quantizer and
    torch._scaled_mm, vs bf16 F.linear."""
    from pagellm.ops.triton.fp8_quant import quantize_fp8_per_token_triton

    for K, N in SHAPES:
        x = torch.randn(1, K, dtype=torch.bfloat16, device="cuda")
        dense = torch.randn(N, K, dtype=torch.bfloat16, device="cuda")
        w8 = dense.to(torch.float8_e4m3fn)
        w_scale = torch.rand(1, N, device="cuda")
        x_q, x_scale = quantize_fp8_per_token_triton(x)
        bf16_us = do_bench(lambda: torch.nn.functional.linear(x, dense), warmup=20, rep=100) * 1e3
        quant_us = do_bench(lambda: quantize_fp8_per_token_triton(x), warmup=20, rep=100) * 1e3
        mm_us = do_bench(lambda: torch._scaled_mm(x_q, w8.t(), scale_a=x_scale, scale_b=w_scale,
                                                  out_dtype=torch.bfloat16),
                         warmup=20, rep=100) * 1e3
        print(f"fp8 K={K} N={N}: bf16 {bf16_us:.1f} us | quantize {quant_us:.1f} us | "
              f"_scaled_mm {mm_us:.1f} us ({K * N / mm_us / 1e3:.0f} GB/s)")


if __name__ == "__main__":
    fp8_parts()
    main()
