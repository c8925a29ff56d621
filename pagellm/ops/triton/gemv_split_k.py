"""Split-K for the decode GEMVs (``quant_gemv``: W4A16/W8A16 and fp8; ``dense_gemv``: bf16/fp16):
the launch of x [M, K] times a weight into [M, N] with the K range cut into ``split_k`` slices
(grid axis 1), and the sum of the slices' float32 partial sums.

Two ways to add the slices, bit-identical (both add slice 0, 1, ... in order to 0.0 in float32,
then the bias in float32, then cast):

- in the GEMV (``SPLIT_K_TICKET``, the default): every slice program stores its partial sums
  into ``partial`` [split_k, M, N], then takes a ticket: an atomic add on the counter of its
  output tile (column block x row block). The program that takes the last ticket (split_k - 1)
  sums the slices, adds the bias, writes the output and resets the counter to 0. Ordering: a
  CTA barrier puts every thread's partial stores before the ticket, whose gpu-scope acq_rel
  atomic releases them (cumulatively) and, for the last program, acquires the other slices'
  stores; Triton broadcasts the scalar ticket through shared memory behind another barrier, and
  the partials are read with ``.cg`` loads (L2, never a stale L1 line). No program waits on
  another, so any grid size is safe. The counters (int32, ``MAX_SPLIT_K_TILES`` per device)
  are allocated and zeroed once per device and are back at 0 after every call, so a CUDA-graph
  replay needs no host work. GEMVs share them, so they must not run concurrently on two
  streams of one device (the engine runs its model on one stream).
- a second launch (``SPLIT_K_PARTIAL`` then ``_split_k_reduce_kernel``): the previous scheme,
  kept for the benchmark (``in_kernel_reduce=False``), for grids with more output tiles than
  counters, and for a first split call made inside a CUDA-graph capture (the counters are
  created outside captures only: ``split_k_counters``).

The GEMV kernels take ``(..., out_ptr, partial_ptr, counter_ptr, stride_ps, stride_pm,
stride_om)`` as their last runtime arguments and the constexpr ``SPLIT_MODE``, and end with
``finish_gemv_tile`` (``finish_silu_mul_tile``: the gate|up GEMV with SiLU-and-mul).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

SPLIT_K_OFF = 0
"""One slice: the GEMV adds the bias and writes the output itself."""
SPLIT_K_PARTIAL = 1
"""Partial sums only; ``_split_k_reduce_kernel`` adds them (the two-launch path)."""
SPLIT_K_TICKET = 2
"""Partial sums, then the program taking an output tile's last ticket adds them."""

MAX_SPLIT_K_TILES = 1 << 16
"""Counters per device (256 KB): output tiles (column blocks x row blocks) of one launch at
most for the in-kernel reduction (the LM head's 128256 columns in 16-column blocks at 2 rows:
8016)."""

REDUCE_BLOCK_N = 1024

_COUNTERS: dict[torch.device, torch.Tensor] = {}


def split_k_counters(device: torch.device) -> torch.Tensor | None:
    """The int32 [MAX_SPLIT_K_TILES] ticket counters of ``device``, zeroed at the first call and
    kept at 0 between GEMV calls (module docstring). None while a CUDA graph is being captured
    and they do not exist yet: zeroed inside the capture, they would hold garbage until the
    graph's first replay (the engine's eager warm-up calls create them before any capture)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    counters = _COUNTERS.get(device)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        counters = _COUNTERS[device] = torch.zeros(MAX_SPLIT_K_TILES, dtype=torch.int32,
                                                   device=device)
    return counters


@triton.jit
def _add_bias(acc, bias_ptr, offs_n, N, HAS_BIAS: tl.constexpr):
    """acc [BM, BN] float32 + bias[offs_n] in float32 (columns >= N read 0)."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _store_output(acc, up, bias_ptr, out_ptr, offs_m, offs_n, N, mask, stride_om,
                  HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr):
    """acc [BM, BN] float32 (+ bias) -> out rows offs_m in out's dtype. SILU_MUL: acc is the
    gate's sums and ``up`` the up's (bias columns N + offs_n); out = silu(gate) * up rounded
    as the unfused path rounds (gate and up to out's dtype, then
    ``pagellm.ops.triton.activation``'s float32 SiLU-and-mul)."""
    acc = _add_bias(acc, bias_ptr, offs_n, N, HAS_BIAS)
    ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    if SILU_MUL:
        gate = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
        up = _add_bias(up, bias_ptr + N, offs_n, N, HAS_BIAS)
        up = up.to(out_ptr.dtype.element_ty).to(tl.float32)
        activated = (gate * tl.sigmoid(gate)).to(out_ptr.dtype.element_ty).to(tl.float32)
        tl.store(ptrs, (activated * up).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sum_slices(partial_ptr, ptrs, mask, stride_ps, split_k):
    """sum over slices s (in order, from 0.0) of partial[s] at ``ptrs`` [BM, BN], float32."""
    acc = tl.zeros(ptrs.shape, dtype=tl.float32)
    for s in range(split_k):
        acc += tl.load(partial_ptr + s * stride_ps + ptrs, mask=mask, other=0.0,
                       cache_modifier=".cg")
    return acc


@triton.jit
def _reduce_if_last(bias_ptr, out_ptr, partial_ptr, counter_ptr, ptrs, offs_m, offs_n, N,
                    mask, stride_ps, stride_om, HAS_BIAS: tl.constexpr,
                    SILU_MUL: tl.constexpr):
    """Take this output tile's ticket; the last slice to arrive sums every slice's partial
    (in slice order), writes the output and resets the counter."""
    tile = tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)
    split_k = tl.num_programs(1)
    tl.debug_barrier()          # every thread's partial stores precede the release below
    ticket = tl.atomic_add(counter_ptr + tile, 1, sem="acq_rel", scope="gpu")
    if ticket == split_k - 1:
        acc = _sum_slices(partial_ptr, ptrs, mask, stride_ps, split_k)      # [BM, BN]
        up = acc
        if SILU_MUL:
            up = _sum_slices(partial_ptr + N, ptrs, mask, stride_ps, split_k)
        _store_output(acc, up, bias_ptr, out_ptr, offs_m, offs_n, N, mask, stride_om,
                      HAS_BIAS, SILU_MUL)
        tl.atomic_xchg(counter_ptr + tile, 0, sem="relaxed", scope="gpu")


@triton.jit
def _finish(rows, up, offs_m, offs_n, M, N, bias_ptr, out_ptr, partial_ptr, counter_ptr,
            stride_ps, stride_pm, stride_om, HAS_BIAS: tl.constexpr, SPLIT_MODE: tl.constexpr,
            SILU_MUL: tl.constexpr):
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_MODE == 0:
        _store_output(rows, up, bias_ptr, out_ptr, offs_m, offs_n, N, mask, stride_om, HAS_BIAS,
                      SILU_MUL)
    else:
        ptrs = offs_m[:, None].to(tl.int64) * stride_pm + offs_n[None, :]   # [BM, BN]
        slice_ptr = partial_ptr + tl.program_id(1).to(tl.int64) * stride_ps
        tl.store(slice_ptr + ptrs, rows, mask=mask)
        if SILU_MUL:
            tl.store(slice_ptr + N + ptrs, up, mask=mask)
        if SPLIT_MODE == 2:
            _reduce_if_last(bias_ptr, out_ptr, partial_ptr, counter_ptr, ptrs, offs_m, offs_n, N,
                            mask, stride_ps, stride_om, HAS_BIAS, SILU_MUL)


@triton.jit
def finish_gemv_tile(rows, offs_m, offs_n, M, N, bias_ptr, out_ptr, partial_ptr, counter_ptr,
                     stride_ps, stride_pm, stride_om, HAS_BIAS: tl.constexpr,
                     SPLIT_MODE: tl.constexpr):
    """The end of a GEMV program: rows [BM, BN] float32, its sums for rows ``offs_m`` [BM] and
    columns ``offs_n`` [BN] over K slice ``program_id(1)``. SPLIT_K_OFF: + bias -> out;
    otherwise -> partial[slice], and with SPLIT_K_TICKET the last slice reduces (module
    docstring). Rows >= M and columns >= N are not written."""
    _finish(rows, rows, offs_m, offs_n, M, N, bias_ptr, out_ptr, partial_ptr, counter_ptr,
            stride_ps, stride_pm, stride_om, HAS_BIAS, SPLIT_MODE, False)


@triton.jit
def finish_silu_mul_tile(gate, up, offs_m, offs_n, M, N, bias_ptr, out_ptr, partial_ptr,
                         counter_ptr, stride_ps, stride_pm, stride_om, HAS_BIAS: tl.constexpr,
                         SPLIT_MODE: tl.constexpr):
    """``finish_gemv_tile`` of a merged gate|up GEMV with SiLU-and-mul in the epilogue: gate
    and up [BM, BN] are the sums of weight rows offs_n and N + offs_n; out [M, N] gets
    silu(gate) * up; the partial buffer holds [split_k, M, 2N] (gate | up), the bias [2N].
    SPLIT_K_PARTIAL is not supported (no reduce kernel applies the SiLU)."""
    _finish(gate, up, offs_m, offs_n, M, N, bias_ptr, out_ptr, partial_ptr, counter_ptr,
            stride_ps, stride_pm, stride_om, HAS_BIAS, SPLIT_MODE, True)


@triton.jit
def _split_k_reduce_kernel(partial_ptr, bias_ptr, out_ptr, N, SPLIT_K, stride_ps, stride_pm,
                           stride_om, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[m, n] = sum over slices s (in order) of partial[s, m, n] (+ bias[n])."""
    m = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(partial_ptr + s * stride_ps + m * stride_pm + offs_n, mask=mask_n, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + offs_n, acc.to(out_ptr.dtype.element_ty), mask=mask_n)


def run_gemv(x: torch.Tensor, N: int, bias: torch.Tensor | None, block_m: int, block_n: int,
             split_k: int, launch: Callable, in_kernel_reduce: bool = True,
             partial_cols: int | None = None) -> torch.Tensor:
    """x [..., K] -> [..., N] in x.dtype. ``launch(grid, x2, split_args)`` runs a GEMV kernel
    on x2 [M, K] (unit stride along K) over ``grid`` = (column blocks, split_k, row blocks),
    passing the dict ``split_args`` as keyword arguments (out_ptr, partial_ptr, counter_ptr,
    stride_ps, stride_pm, stride_om, SPLIT_MODE). With split_k > 1 the slices are added in the
    GEMV (``in_kernel_reduce``, at most MAX_SPLIT_K_TILES output tiles and the counters
    exist: ``split_k_counters``) or by ``_split_k_reduce_kernel`` after it, bit-identically.
    ``partial_cols``: the partial buffer's width when not N (the SiLU-and-mul GEMV's gate |
    up: 2N), which only the in-kernel reduction handles: ValueError where it would take the
    second launch."""
    x2 = x.reshape(-1, x.shape[-1])                                       # [M, K]
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)              # [M, N]
    if M == 0:
        return out.reshape(*x.shape[:-1], N)
    grid = (triton.cdiv(N, block_n), split_k, triton.cdiv(M, block_m))
    args = dict(out_ptr=out, partial_ptr=out, counter_ptr=out, stride_ps=0, stride_pm=0,
                stride_om=out.stride(0), SPLIT_MODE=SPLIT_K_OFF)
    if split_k == 1:
        launch(grid, x2, args)
        return out.reshape(*x.shape[:-1], N)
    partial = torch.empty((split_k, M, partial_cols or N), device=x.device,
                          dtype=torch.float32)
    args.update(partial_ptr=partial, stride_ps=partial.stride(0), stride_pm=partial.stride(1))
    counters = (split_k_counters(x.device)
                if in_kernel_reduce and grid[0] * grid[2] <= MAX_SPLIT_K_TILES else None)
    if counters is None and partial_cols is not None:
        raise ValueError(f"this GEMV's {split_k} K slices can only be added in the kernel "
                         f"(in_kernel_reduce, at most {MAX_SPLIT_K_TILES} output tiles, and "
                         "not first called inside a CUDA graph capture)")
    if counters is not None:
        launch(grid, x2, args | dict(counter_ptr=counters, SPLIT_MODE=SPLIT_K_TICKET))
    else:
        launch(grid, x2, args | dict(SPLIT_MODE=SPLIT_K_PARTIAL))
        _split_k_reduce_kernel[(M, triton.cdiv(N, REDUCE_BLOCK_N))](
            partial, bias if bias is not None else partial, out, N, split_k, partial.stride(0),
            partial.stride(1), out.stride(0), HAS_BIAS=bias is not None, BLOCK_N=REDUCE_BLOCK_N)
    return out.reshape(*x.shape[:-1], N)
