"""Decode GEMM/GEMV time per call at Llama-3.1-8B shapes (one GPU): bf16 ``F.linear``, the
W4A16 ``tl.dot`` GEMM (``wna16_gemm``), the W4A16 decode GEMV (``quant_gemv``), fp8 W8A8
(per-token Triton quantizer + ``torch._scaled_mm``) and the fp8 decode GEMV, with the
weight bytes read per µs (TB/s). Prints a markdown table.

    PYTHONPATH=. python benchmarks/quant_gemv_bench.py               # the table (~1 min)
    PYTHONPATH=. python benchmarks/quant_gemv_bench.py --sweep       # + launch sweep (~2.5 min)
    PYTHONPATH=. python benchmarks/quant_gemv_bench.py --sweep --kernels wna16 --no-table

Timing: ``triton.testing.do_bench_cudagraph`` (launch overhead does not count, as in the
engine's decode graphs) of a graph that calls the op once on each of several copies of the
weight, at least 256 MB in all, so no weight is served from the 50 MB L2 (in a decode step
every layer has its own weights); the reported µs are per call. W4A16: 4-bit, group 128,
asymmetric (GPTQ layout with zero points). ``--sweep`` times a small grid of ``GemvConfig``s
(column block, K tile, warps, pipeline stages, split-K target in programs per SM) per shape
at M = 1 and 2, prints the best next to the default (the rules of ``wna16_gemv_config`` /
``fp8_gemv_config``), then the best ones as a ``TUNED_CONFIGS`` literal to paste into
``pagellm/ops/triton/quant_gemv.py``. ``--kernels fp8,wna16`` limits the sweep's kernels.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench_cudagraph

from pagellm.ops.quant import fp8_linear, pack_int32
from pagellm.ops.triton.fp8_quant import quantize_fp8_per_token_triton
from pagellm.ops.triton.gemm_launch import num_sms
from pagellm.ops.triton.quant_gemv import (GemvConfig, fp8_gemv_config, fp8_gemv_triton,
                                           split_for, wna16_gemv_config, wna16_gemv_triton)
from pagellm.ops.triton.wna16_gemm import wna16_gemm_triton

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672),
          "down": (14336, 4096)}                                   # name -> (K, N)
ROWS = [1, 4, 8]
GROUP = 128
BYTES_PER_GRAPH = 256 * 2**20
"""Weight bytes one timed graph reads (copies of the weight), > 4x the H200's L2."""


def timed_us(calls: list, rep_ms: int = 20) -> float:
    """µs per call of a CUDA graph running every callable in ``calls`` once."""
    def run():
        for call in calls:
            call()
    run()                                            # compile outside the capture
    torch.cuda.synchronize()
    return do_bench_cudagraph(run, rep=rep_ms) * 1e3 / len(calls)


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


SWEEP_ROWS = [1, 2]
SWEEP_REP_MS = 10
WNA16_VARIANTS = [(64, 128, 4, 3), (128, 128, 4, 3), (128, 128, 8, 4), (32, 128, 4, 3),
                  (128, 256, 8, 3)]
"""W4A16 (block_n, block_k, num_warps, num_stages): each compiles once per row count and
split/no split, reused across shapes (compiles dominate the sweep's time)."""
FP8_VARIANTS = [(16, 512, 4, 3), (8, 512, 4, 3), (32, 256, 4, 3), (16, 1024, 8, 3),
                (32, 512, 8, 4)]
"""fp8 (block_n, block_k, num_warps, num_stages)."""
SPLIT_TARGETS = [None, 4, 8]
"""Programs per SM the split-K aims at (None: no split), crossed with every variant; the
default variant also gets 16."""


def sweep_configs(kernel: str, M: int, K: int, N: int, sms: int) -> list[GemvConfig]:
    """The grid of one (kernel, shape, M): len(variants) x len(SPLIT_TARGETS) + 1 configs."""
    variants = WNA16_VARIANTS if kernel == "wna16" else FP8_VARIANTS
    configs = []
    for index, (bn, bk, warps, stages) in enumerate(variants):
        for target in SPLIT_TARGETS + ([16] if index == 0 else []):
            split = 1 if target is None else split_for(N, K, bn, bk, sms, target)
            configs.append(GemvConfig(M, bn, bk, split, warps, stages))
    return list(dict.fromkeys(configs))                 # targets giving the same split once


def sweep(sms: int, kernels: list[str], write_configs: str | None = None) -> None:
    """Best GemvConfig per (kernel, shape, M) next to the default; then the literal (and the
    JSON file ``write_configs`` that PAGELLM_QUANT_GEMV_CONFIGS loads)."""
    print("\n| shape | M | kernel | default µs (TB/s) | best µs (TB/s) | best config |\n"
          "|---|---|---|---|---|---|")
    best_configs = {}
    for name, (K, N) in SHAPES.items():
        weights = {}
        if "wna16" in kernels:
            weights["wna16"] = (wna16_weights(K, N, copies_for(wna16_bytes(K, N))),
                                wna16_bytes(K, N))
        if "fp8" in kernels:
            weights["fp8"] = (fp8_weights(K, N, copies_for(K * N)), K * N + 4 * N)
        for M, kernel in itertools.product(SWEEP_ROWS, kernels):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            copies, nbytes = weights[kernel]

            def time_config(cfg):
                if kernel == "fp8":
                    calls = [lambda w=w: fp8_gemv_triton(x, w[0], w[1], config=cfg)
                             for w in copies]
                else:
                    calls = [lambda w=w: wna16_gemv_triton(x, w[0], w[1], w[2], None, 4,
                                                           config=cfg) for w in copies]
                return timed_us(calls, SWEEP_REP_MS)

            default = (fp8_gemv_config(M, N, K, sms) if kernel == "fp8"
                       else wna16_gemv_config(M, N, K, 4, sms, GROUP))
            times = {cfg: time_config(cfg) for cfg in sweep_configs(kernel, M, K, N, sms)}
            if default not in times:
                times[default] = time_config(default)
            best = min(times, key=times.get)
            best_configs[(kernel, M, K, N, sms)] = best
            cell = lambda us: f"{us:.1f} ({nbytes / us / 1e6:.2f})"  # noqa: E731
            print(f"| {name} | {M} | {kernel} | {cell(times[default])} | {cell(times[best])} | "
                  f"{best} |", flush=True)
        del weights
    print("\nTUNED_CONFIGS = {")
    for key, config in best_configs.items():
        print(f"    {key!r}: {config!r},")
    print("}")
    if write_configs:
        with open(write_configs, "w") as file:
            json.dump([[list(key), dataclasses.asdict(config)]
                       for key, config in best_configs.items()], file, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also sweep GEMV launch configs")
    parser.add_argument("--kernels", default="fp8,wna16",
                        help="comma-separated GEMVs to sweep: fp8, wna16")
    parser.add_argument("--no-table", action="store_true", help="skip the default table")
    parser.add_argument("--write-configs", metavar="JSON",
                        help="with --sweep: write the best configs for PAGELLM_QUANT_GEMV_CONFIGS")
    args = parser.parse_args()
    kernels = [k for k in args.kernels.split(",") if k]
    if not kernels or set(kernels) - {"fp8", "wna16"}:
        parser.error(f"--kernels takes fp8 and/or wna16, got {args.kernels!r}")
    torch.manual_seed(0)
    sms = num_sms(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}, {sms} SMs\n")
    if not args.no_table:
        print_table()
    if args.sweep:
        sweep(sms, kernels, args.write_configs)


if __name__ == "__main__":
    main()
