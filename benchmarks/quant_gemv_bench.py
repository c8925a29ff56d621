"""Decode GEMM/GEMV time per call at Llama-3.1-8B shapes, TP=1 and TP=2 (one GPU): bf16
``F.linear`` (cuBLAS) and our bf16 decode GEMV (``dense_gemv``), the W4A16 ``tl.dot`` GEMM
(``wna16_gemm``), the W4A16 decode GEMV (``quant_gemv``), fp8 W8A8 (per-token Triton
quantizer + ``torch._scaled_mm``) and the fp8 decode GEMV, with the weight bytes read per µs
(TB/s); each GEMV also with its split-K slices added by a second launch (``2-launch``, the
previous scheme) instead of in the kernel; at the gate_up shapes also the bf16 GEMV with
SiLU-and-mul in its epilogue (kind ``bf16_silu_mul``) against cuBLAS plus the SiLU-and-mul
kernel. The LM head shapes are timed in bf16 only. Prints a markdown table.

    PYTHONPATH=. python benchmarks/quant_gemv_bench.py               # the table (~2 min)
    PYTHONPATH=. python benchmarks/quant_gemv_bench.py --no-table --sweep \
        --write-configs gemv_configs.json                              # the sweep (~6 min)
    PYTHONPATH=. python benchmarks/quant_gemv_bench.py --sweep --kernels wna16 --no-table

The sweep's JSON is what ``PAGELLM_QUANT_GEMV_CONFIGS=gemv_configs.json`` loads (its literal,
printed last, goes into ``quant_gemv._h200_tuned_configs``): for fp8/wna16 the best launch of
every shape; for bf16 and bf16_silu_mul only the shapes where our GEMV beat cuBLAS (plus the
SiLU-and-mul kernel) by DENSE_WIN_MARGIN (the unquantized linear method and the Llama MLP use
the GEMV exactly there, cuBLAS elsewhere).

Timing: ``triton.testing.do_bench_cudagraph`` (launch overhead does not count, as in the
engine's decode graphs) of a graph that calls the op once on each of several copies of the
weight, at least 256 MB in all, so no weight is served from the 50 MB L2 (in a decode step
every layer has its own weights); the reported µs are per call. W4A16: 4-bit, group 128,
symmetric (GPTQ sym=True as loaded: no zero points), ``--asymmetric`` with zero points. ``--sweep`` times a small grid of ``GemvConfig``s
(column block, K tile, warps, pipeline stages, split-K target in programs per SM) per shape
at M = 1 and 2, prints the best next to the default (the rules of ``wna16_gemv_config`` /
``fp8_gemv_config`` / ``dense_gemv_config``) and the baseline each GEMV replaces (bf16: cuBLAS
``F.linear``; fp8: W8A8 ``_scaled_mm``; wna16: the ``tl.dot`` GEMM) with a ``yes``/``no``
mark where the best beats it, then the kept ones as a ``TUNED_CONFIGS`` literal.
``--kernels bf16,fp8`` limits the kernels, ``--shapes qkv,o_tp2`` the shapes, ``--rows 1`` the
swept row counts.
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
from pagellm.ops.triton.activation import silu_and_mul_triton
from pagellm.ops.triton.dense_gemv import (dense_gemv_config, dense_gemv_silu_mul_triton,
                                           dense_gemv_triton)
from pagellm.ops.triton.fp8_quant import quantize_fp8_per_token_triton
from pagellm.ops.triton.gemm_launch import num_sms
from pagellm.ops.triton.quant_gemv import (TUNED_CONFIGS, GemvConfig, fp8_gemv_config,
                                           fp8_gemv_triton, split_for, wna16_gemv_config,
                                           wna16_gemv_triton)
from pagellm.ops.triton.wna16_gemm import wna16_gemm_triton

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672),
          "down": (14336, 4096), "lm_head": (4096, 128256),
          "qkv_tp2": (4096, 3072), "o_tp2": (2048, 4096), "gate_up_tp2": (4096, 14336),
          "down_tp2": (7168, 4096), "lm_head_tp2": (4096, 64128)}
"""name -> (K, N) of Llama-3.1-8B's per-rank linears at TP=1 and TP=2."""
BF16_ONLY = {"lm_head", "lm_head_tp2"}
"""Shapes kept unquantized in quantized checkpoints (vLLM's LM head): bf16 kernels only."""
SILU_MUL = "bf16_silu_mul"
"""The merged gate|up GEMV with SiLU-and-mul: timed at the gate_up shapes only."""
DEVICE = "cuda"
ROWS = [1, 2, 8]
GROUP = 128
BYTES_PER_GRAPH = 256 * 2**20
"""Weight bytes one timed graph reads (copies of the weight), > 4x the H200's L2."""
DENSE_WIN_MARGIN = 0.98
"""The bf16 GEMV enters the table where its best time is at most this fraction of cuBLAS'
(a 2% margin, so timing noise does not flip the choice between runs)."""


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


WNA16_ASYMMETRIC = False
"""W4A16 weights with zero points (``--asymmetric``; AWQ, GPTQ sym=False); default symmetric
(qzeros None: GPTQ sym=True as loaded, the W9 checkpoints)."""


def wna16_weights(K: int, N: int, copies: int) -> list[tuple]:
    """(qweight, scales, qzeros | None) copies of a random 4-bit group-128 weight."""
    q = pack_int32(torch.randint(0, 16, (K, N), device=DEVICE), 4, 0)         # [K / 8, N]
    scales = torch.rand(K // GROUP, N, device=DEVICE, dtype=torch.bfloat16) * 0.01
    zeros = (pack_int32(torch.randint(0, 16, (K // GROUP, N), device=DEVICE), 4, 1)
             if WNA16_ASYMMETRIC else None)
    return [(q.clone(), scales.clone(), None if zeros is None else zeros.clone())
            for _ in range(copies)]


def fp8_weights(K: int, N: int, copies: int) -> list[tuple]:
    weight = (torch.randn(N, K, device=DEVICE) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    scale = torch.full((N,), 0.02 / 64, device=DEVICE)
    return [(weight.clone(), scale.clone()) for _ in range(copies)]


def dense_weights(K: int, N: int, copies: int) -> list[torch.Tensor]:
    return [torch.randn(N, K, device=DEVICE, dtype=torch.bfloat16) * 0.02
            for _ in range(copies)]


def weight_bytes(kind: str, K: int, N: int) -> int:
    if kind == "wna16":
        return K * N // 2 + (K // GROUP) * N * 2 + (K // GROUP) * N // 2
    return K * N + 4 * N if kind == "fp8" else 2 * K * N


def make_weights(kind: str, K: int, N: int) -> list:
    """Enough copies of a random ``kind`` weight that one graph reads BYTES_PER_GRAPH."""
    make = {"wna16": wna16_weights, "fp8": fp8_weights}.get(kind, dense_weights)
    return make(K, N, copies_for(weight_bytes(kind, K, N)))


def gemv(kind: str, x: torch.Tensor, w, config: GemvConfig | None = None,
         in_kernel: bool = True) -> torch.Tensor:
    """Our decode GEMV of ``kind`` on one weight copy ``w``."""
    if kind == "wna16":
        return wna16_gemv_triton(x, w[0], w[1], w[2], None, 4, config=config,
                                 in_kernel_reduce=in_kernel)
    if kind == "fp8":
        return fp8_gemv_triton(x, w[0], w[1], config=config, in_kernel_reduce=in_kernel)
    if kind == SILU_MUL:
        return dense_gemv_silu_mul_triton(x, w, config=config)
    return dense_gemv_triton(x, w, config=config, in_kernel_reduce=in_kernel)


def baseline(kind: str, x: torch.Tensor, w) -> torch.Tensor:
    """What the GEMV of ``kind`` replaces: cuBLAS (bf16), the tl.dot GEMM (wna16), W8A8."""
    if kind == "wna16":
        return wna16_gemm_triton(x, w[0], w[1], w[2], None, 4)
    if kind == "fp8":
        x_q, x_scale = quantize_fp8_per_token_triton(x)
        return fp8_linear(x_q, x_scale, w[0], w[1], x.dtype, use_scaled_mm=True)
    if kind == SILU_MUL:
        return silu_and_mul_triton(F.linear(x, w))
    return F.linear(x, w)


BASELINE_NAMES = {"bf16": "bf16 F.linear", SILU_MUL: "bf16 F.linear+SiLU",
                  "wna16": "W4A16 tl.dot", "fp8": "fp8 W8A8 _scaled_mm"}
GEMV_NAMES = {"bf16": "bf16 GEMV", SILU_MUL: "bf16 GEMV+SiLU", "wna16": "W4A16 GEMV",
              "fp8": "fp8 GEMV"}


def default_config(kind: str, M: int, K: int, N: int, sms: int) -> GemvConfig:
    """The launch the engine takes (a TUNED_CONFIGS entry, else the rules)."""
    if kind == "wna16":
        return wna16_gemv_config(M, N, K, 4, sms, GROUP)
    if kind == "fp8":
        return fp8_gemv_config(M, N, K, sms)
    return TUNED_CONFIGS.get((kind, M, K, N, sms)) or dense_gemv_config(M, output_cols(kind, N),
                                                                        K, sms)


def output_cols(kind: str, N: int) -> int:
    """Output columns of a weight with N rows (half for the SiLU-and-mul GEMV)."""
    return N // 2 if kind == SILU_MUL else N


def kinds_of(name: str, kinds: list[str]) -> list[str]:
    """The kernels timed at shape ``name``."""
    if name in BF16_ONLY:
        return [k for k in kinds if k == "bf16"]
    return [k for k in kinds if k != SILU_MUL or name.startswith("gate_up")]


def row_times(K: int, N: int, M: int, kinds: list[str], sms: int) -> dict[str, tuple]:
    """method -> (µs per call, weight bytes) at one shape and row count."""
    x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16)
    results = {}
    for kind in kinds:
        copies, nbytes = make_weights(kind, K, N), weight_bytes(kind, K, N)
        config = default_config(kind, M, K, N, sms)
        results[BASELINE_NAMES[kind]] = (
            timed_us([lambda w=w: baseline(kind, x, w) for w in copies]), nbytes)
        results[GEMV_NAMES[kind]] = (
            timed_us([lambda w=w: gemv(kind, x, w, config) for w in copies]), nbytes)
        if kind != SILU_MUL:                      # (no reduce kernel applies the SiLU)
            results[GEMV_NAMES[kind] + " 2-launch"] = (
                timed_us([lambda w=w: gemv(kind, x, w, config, False) for w in copies]), nbytes)
        del copies
    return results


def print_table(shapes: list[str], kinds: list[str], sms: int) -> None:
    methods = [m for kind in kinds for m in (BASELINE_NAMES[kind], GEMV_NAMES[kind],
                                             GEMV_NAMES[kind] + " 2-launch") if m != (
        GEMV_NAMES[SILU_MUL] + " 2-launch")]
    print("| shape (K x N) | M | " + " | ".join(f"{m} µs (TB/s)" for m in methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for name, M in itertools.product(shapes, ROWS):
        K, N = SHAPES[name]
        results = row_times(K, N, M, kinds_of(name, kinds), sms)
        cells = [f"{results[m][0]:.1f} ({results[m][1] / results[m][0] / 1e6:.2f})"
                 if m in results else "-" for m in methods]
        print(f"| {name} {K} x {N} | {M} | " + " | ".join(cells) + " |", flush=True)


SWEEP_ROWS = [1, 2]
SWEEP_REP_MS = 10
VARIANTS = {
    "wna16": [(128, 128, 4, 1), (512, 32, 4, 1), (256, 64, 4, 1), (256, 128, 8, 1),
              (64, 128, 4, 1), (512, 64, 8, 1)],
    "fp8": [(16, 512, 4, 3), (8, 512, 4, 3), (32, 256, 4, 3), (16, 1024, 8, 3),
            (32, 512, 8, 4)],
    "bf16": [(16, 256, 4, 3), (8, 512, 4, 3), (32, 256, 8, 3), (16, 512, 8, 3),
             (32, 128, 4, 4)],
    SILU_MUL: [(8, 256, 4, 3), (16, 256, 8, 3), (8, 512, 8, 3), (16, 128, 4, 3),
               (4, 512, 4, 3)],     # block_n output columns: twice as many weight rows
}
"""Per kernel (block_n, block_k, num_warps, num_stages): each compiles once per row count and
split/no split, reused across shapes (compiles dominate the sweep's time)."""
SPLIT_TARGETS = [None, 4, 8]
"""Programs per SM the split-K aims at (None: no split), crossed with every variant; the
default variant also gets 16."""


def sweep_configs(kernel: str, M: int, K: int, N: int, sms: int) -> list[GemvConfig]:
    """The grid of one (kernel, shape, M): len(variants) x len(SPLIT_TARGETS) + 1 configs."""
    configs = []
    block_m = M if kernel == "fp8" else min(M, 2)
    for index, (bn, bk, warps, stages) in enumerate(VARIANTS[kernel]):
        for target in SPLIT_TARGETS + ([16] if index == 0 else []):
            split = 1 if target is None else split_for(output_cols(kernel, N), K, bn, bk, sms,
                                                       target)
            configs.append(GemvConfig(block_m, bn, bk, split, warps, stages))
    return list(dict.fromkeys(configs))                 # targets giving the same split once


def sweep_shape(kind: str, name: str, M: int, copies: list, sms: int, kept: dict) -> None:
    """Time every swept launch of one (kind, shape, M) and its baseline; print the row; keep
    the best in ``kept`` (bf16 kinds: only where it beats cuBLAS by DENSE_WIN_MARGIN)."""
    K, N = SHAPES[name]
    x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16)
    time_config = lambda cfg: timed_us(  # noqa: E731
        [lambda w=w: gemv(kind, x, w, cfg) for w in copies], SWEEP_REP_MS)
    base = timed_us([lambda w=w: baseline(kind, x, w) for w in copies], SWEEP_REP_MS)
    dense = kind.startswith("bf16")
    default = (dense_gemv_config(M, output_cols(kind, N), K, sms) if dense
               else default_config(kind, M, K, N, sms))
    times = {cfg: time_config(cfg) for cfg in sweep_configs(kind, M, K, N, sms)}
    if default not in times:
        times[default] = time_config(default)
    best = min(times, key=times.get)
    wins = times[best] <= DENSE_WIN_MARGIN * base if dense else times[best] < base
    if wins or not dense:
        kept[(kind, M, K, N, sms)] = best
    nbytes = weight_bytes(kind, K, N)
    cell = lambda us: f"{us:.1f} ({nbytes / us / 1e6:.2f})"  # noqa: E731
    print(f"| {name} | {M} | {kind} | {cell(base)} | {cell(times[default])} | "
          f"{cell(times[best])} | {'yes' if wins else 'no'} | {best} |", flush=True)


def sweep(shapes: list[str], kinds: list[str], sms: int, write_configs: str | None) -> None:
    """Best GemvConfig per (kernel, shape, M) next to the default and the baseline; then the
    kept ones as a literal (and the JSON file ``write_configs`` that
    PAGELLM_QUANT_GEMV_CONFIGS loads)."""
    print("\n| shape | M | kernel | baseline µs (TB/s) | default µs (TB/s) | best µs (TB/s) | "
          "beats baseline | best config |\n|---|---|---|---|---|---|---|---|")
    kept = {}
    for name in shapes:
        for kind in kinds_of(name, kinds):
            copies = make_weights(kind, *SHAPES[name])
            for M in SWEEP_ROWS:
                sweep_shape(kind, name, M, copies, sms, kept)
            del copies
    print("\nTUNED_CONFIGS = {")
    for key, config in kept.items():
        print(f"    {key!r}: {config!r},")
    print("}")
    if write_configs:
        with open(write_configs, "w") as file:
            json.dump([[list(key), dataclasses.asdict(config)] for key, config in kept.items()],
                      file, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also sweep GEMV launch configs")
    parser.add_argument("--kernels", default=",".join(VARIANTS),
                        help=f"comma-separated kernels among {', '.join(VARIANTS)}")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma-separated shapes among {', '.join(SHAPES)}")
    parser.add_argument("--no-table", action="store_true", help="skip the default table")
    parser.add_argument("--asymmetric", action="store_true",
                        help="W4A16 weights with zero points (default: symmetric, no qzeros)")
    parser.add_argument("--rows", default="1,2", help="with --sweep: rows (M) to sweep, e.g. 1")
    parser.add_argument("--write-configs", metavar="JSON",
                        help="with --sweep: write the kept configs for PAGELLM_QUANT_GEMV_CONFIGS")
    args = parser.parse_args()
    kinds = [k for k in args.kernels.split(",") if k]
    shapes = [s for s in args.shapes.split(",") if s]
    if not kinds or set(kinds) - set(VARIANTS):
        parser.error(f"--kernels takes {', '.join(VARIANTS)}, got {args.kernels!r}")
    if not shapes or set(shapes) - set(SHAPES):
        parser.error(f"--shapes takes {', '.join(SHAPES)}, got {args.shapes!r}")
    global WNA16_ASYMMETRIC
    WNA16_ASYMMETRIC = args.asymmetric
    torch.manual_seed(0)
    sms = num_sms(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}, {sms} SMs\n")
    if not args.no_table:
        print_table(shapes, kinds, sms)
    if args.sweep:
        SWEEP_ROWS[:] = [int(m) for m in args.rows.split(",")]
        sweep(shapes, kinds, sms, args.write_configs)


if __name__ == "__main__":
    main()
