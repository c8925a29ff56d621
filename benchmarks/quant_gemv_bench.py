"""Decode GEMM/GEMV time per call at Llama-3.1-8B shapes (one GPU): bf16 ``F.linear``, the
W4A16 ``tl.dot`` GEMM (``wna16_gemm``), the W4A16 decode GEMV (``quant_gemv``), fp8 W8A8
(per-token Triton quantizer + ``torch._scaled_mm``) and the fp8 decode GEMV, with the
weight bytes read per µs (TB/s). Prints a markdown table.

    PYTHONPATH=. python benchmarks/quant_gemv_bench.py               # the table (~1 min)
    PYTHONPATH=. python benchmarks/quant_gemv_bench.py --sweep       # + GEMV launch sweep (~4 min)

Timing: ``triton.testing.do_bench_cudagraph`` (launch overhead does not count, as in the
engine's decode graphs) of a graph that calls the op once on each of several copies of the
weight, at least 256 MB in all, so no weight is served from the 50 MB L2 (in a decode step
every layer has its own weights); the reported µs are per call. W4A16: 4-bit, group 128,
asymmetric (GPTQ layout with zero points). ``--sweep`` times a grid of ``GemvConfig``s per
shape at M = 1 and prints the best next to the default, to set ``wna16_gemv_config`` /
``fp8_gemv_config``.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench_cudagraph

from pagellm.ops.quant import fp8_linear, pack_int32
from pagellm.ops.triton.fp8_quant import quantize_fp8_per_token_triton
from pagellm.ops.triton.gemm_launch import num_sms
from pagellm.ops.triton.quant_gemv import (GemvConfig, fp8_gemv_config, fp8_gemv_triton,
                                           wna16_gemv_config, wna16_gemv_triton)
from pagellm.ops.triton.wna16_gemm import wna16_gemm_triton

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672),
          "down": (14336, 4096)}                                   # name -> (K, N)
ROWS = [1, 4, 8]
GROUP = 128
BYTES_PER_GRAPH = 256 * 2**20
"""Weight bytes one timed graph reads (copies of the weight), > 4x the H200's L2."""


def timed_us(calls: list) -> float:
    """µs per call of a CUDA graph running every callable in ``calls`` once."""
    def run():
        for call in calls:
            call()
    run()                                            # compile outside the capture
    torch.cuda.synchronize()
    return do_bench_cudagraph(run, rep=20) * 1e3 / len(calls)


def copies_for(nbytes: int) -> int:
    return max(2, triton.cdiv(BYTES_PER_GRAPH, nbytes))


def wna16_weights(K: int, N: int, copies: int) -> list[tuple]:
    """(qweight, scales, qzeros) copies of a random 4-bit group-128 asymmetric weight."""
    q = pack_int32(torch.randint(0, 16, (K, N), device="cuda"), 4, 0)         # [K / 8, N]
    scales = torch.rand(K // GROUP, N, device="cuda", dtype=torch.bfloat16) * 0.01
    zeros = pack_int32(torch.randint(0, 16, (K // GROUP, N), device="cuda"), 4, 1)
    return [(q.clone(), scales.clone(), zeros.clone()) for _ in range(copies)]


def wna16_bytes(K: int, N: int) -> int:
    return K * N // 2 + (K // GROUP) * N * 2 + (K // GROUP) * N // 2


def fp8_weights(K: int, N: int, copies: int) -> list[tuple]:
    weight = (torch.randn(N, K, device="cuda") * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    scale = torch.full((N,), 0.02 / 64, device="cuda")
    return [(weight.clone(), scale.clone()) for _ in range(copies)]


def row_times(K: int, N: int, M: int) -> dict[str, tuple[float, int]]:
    """method -> (µs per call, weight bytes) at one shape and row count."""
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    results = {}
    dense = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
             for _ in range(copies_for(2 * K * N))]
    results["bf16 F.linear"] = (timed_us([lambda w=w: F.linear(x, w) for w in dense]), 2 * K * N)
    del dense
    int4 = wna16_weights(K, N, copies_for(wna16_bytes(K, N)))
    results["W4A16 tl.dot"] = (timed_us([lambda w=w: wna16_gemm_triton(x, w[0], w[1], w[2], None, 4)
                                         for w in int4]), wna16_bytes(K, N))
    results["W4A16 GEMV"] = (timed_us([lambda w=w: wna16_gemv_triton(x, w[0], w[1], w[2], None, 4)
                                       for w in int4]), wna16_bytes(K, N))
    del int4
    fp8 = fp8_weights(K, N, copies_for(K * N))

    def w8a8(w):
        x_q, x_scale = quantize_fp8_per_token_triton(x)
        return fp8_linear(x_q, x_scale, w[0], w[1], x.dtype, use_scaled_mm=True)

    results["fp8 W8A8 _scaled_mm"] = (timed_us([lambda w=w: w8a8(w) for w in fp8]), K * N + 4 * N)
    results["fp8 GEMV"] = (timed_us([lambda w=w: fp8_gemv_triton(x, w[0], w[1]) for w in fp8]),
                           K * N + 4 * N)
    return results


def print_table() -> None:
    methods = None
    for (name, (K, N)), M in itertools.product(SHAPES.items(), ROWS):
        results = row_times(K, N, M)
        if methods is None:
            methods = list(results)
            print("| shape (K x N) | M | " + " | ".join(f"{m} µs (TB/s)" for m in methods) + " |")
            print("|---|---|" + "---|" * len(methods))
        cells = [f"{us:.1f} ({nbytes / us / 1e6:.2f})" for us, nbytes in results.values()]
        print(f"| {name} {K} x {N} | {M} | " + " | ".join(cells) + " |", flush=True)


def sweep(sms: int) -> None:
    """Best GemvConfig per shape at M = 1 (each config compiles once, across shapes)."""
    print("\n| shape | kernel | default µs | best µs | best config |\n|---|---|---|---|---|")
    for name, (K, N) in SHAPES.items():
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        int4 = wna16_weights(K, N, copies_for(wna16_bytes(K, N)))
        fp8 = fp8_weights(K, N, copies_for(K * N))
        grids = {
            "W4A16 GEMV": (wna16_gemv_config(1, N, K, 4, sms), [
                GemvConfig(1, bn, words * 8, split, warps, stages)
                for bn, words, split, warps, stages in itertools.product(
                    (32, 64), (16, 32, 64, 128), (1, 2), (4, 8), (3,))]),
            "fp8 GEMV": (fp8_gemv_config(1, N, K, sms), [
                GemvConfig(1, bn, bk, split, warps, stages)
                for bn, bk, split, warps, stages in itertools.product(
                    (8, 16, 32), (256, 512, 1024), (1, 2), (4, 8), (3,))])}
        for kernel, (default, configs) in grids.items():
            def time_config(cfg):
                if kernel == "fp8 GEMV":
                    return timed_us([lambda w=w: fp8_gemv_triton(x, w[0], w[1], config=cfg)
                                     for w in fp8])
                return timed_us([lambda w=w: wna16_gemv_triton(x, w[0], w[1], w[2], None, 4,
                                                               config=cfg) for w in int4])
            times = {cfg: time_config(cfg) for cfg in configs}
            best = min(times, key=times.get)
            print(f"| {name} | {kernel} | {time_config(default):.1f} | {times[best]:.1f} | "
                  f"{best} |", flush=True)
        del int4, fp8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also sweep GEMV launch configs")
    args = parser.parse_args()
    torch.manual_seed(0)
    sms = num_sms(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}, {sms} SMs\n")
    print_table()
    if args.sweep:
        sweep(sms)


if __name__ == "__main__":
    main()
