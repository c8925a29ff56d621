"""Programmatic dependent launch (PDL) for the decode GEMVs, with an L2 prefetch of the weight
before the wait: a GEMV's weight stream starts while the kernel before it still runs.

Why: at batch 1 a decoder layer is a chain of short kernels (RMSNorm or the fused all-reduce +
RMSNorm, GEMV, rotary, attention, GEMV, ...). Each GEMV streams megabytes of weights that do not
depend on the previous kernel; only its 8 KB input row does. In stream order the GEMV cannot
start until the previous kernel has finished and its own launch has ramped up, so the DRAM pipe
idles for the length of every norm (~4 µs), all-reduce (~5-7 µs at TP=2) and short-context
attention (~6 µs) of the step: about 0.5 ms of a 3-4.5 ms Llama-8B step on an H200
(benchmarks/RESULTS.md, session 8 profiles).

How (Hopper's grid dependency control, PTX ``griddepcontrol``; the same mechanism as
TensorRT-LLM's and FlashInfer's ``enable_pdl``, and CUTLASS' "programmatic dependent launch"):

- The kernels that precede a GEMV in a decode step (``norm``, the one-shot all-reduce, the
  paged/split-KV attention, the GEMVs themselves) execute ``gdc_launch_dependents`` first thing:
  once every program of the grid has, the next kernel may be scheduled on the free SMs.
- A GEMV launched with ``launch_pdl=True`` (``PDL`` constexpr) first asks L2 to fetch the first
  ``prefetch_k`` elements of each of its weight rows (``cp.async.bulk.prefetch.L2``: each
  row cut into chunks so that every thread issues one request, no registers), then
  ``gdc_wait``: it blocks until the previous grid has
  completed and its memory is visible. Only after the wait does it read its input, write its
  output or touch the split-K counters, so every hazard (a buffer the previous kernel reads and
  the allocator hands to this one, the counters) is as in stream order. A kernel launched with
  PDL behaves exactly as a plain one when the previous kernel did not trigger early.
- CUDA graphs keep the dependency as a programmatic edge (stream capture, CUDA >= 12.3), so the
  decode graphs get the overlap on every replay.

The prefetch is capped at ``PREFETCH_BYTES`` a launch (the weight rows' first elements, evenly
over the programs; a weight too large for one tile a row slice gets none): about what DRAM
delivers during one norm or all-reduce (~2 µs at 4 TB/s). Measured on an H200 at W1
(benchmarks/RESULTS.md, session 9): 4-8 MB gain 1-3% at TP=1 and TP=2, 12 MB less, 24 MB loses (prefetched lines are evicted before the loop reads them: L2 is
50 MB in two partitions, and the GEMV's own stream passes through it).

Only the GEMVs launch with PDL. Launching the RMSNorm and one-shot all-reduce kernels that
follow them with PDL too (waiting first thing, so that only their launch overlaps the GEMV's
tail) was measured slower: W1 TP=1 218 vs 228 tok/s, TP=2 323 vs 341 (session 9).

``PAGELLM_PDL=0`` turns it off (ablations; the GEMVs then launch as before);
``PAGELLM_GEMV_PREFETCH_MB`` sets the budget (default 4 MB at TP=1, 8 MB above).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl

try:        # Triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait, num_threads
except ImportError:         # pragma: no cover - older Triton: PDL stays off (pdl_enabled)
    gdc_launch_dependents = gdc_wait = num_threads = None

_COMPILED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true"))
"""False under Triton's interpreter (CPU), which has no grid dependency control: the GDC calls
below are then skipped."""

PREFETCH_MB_ENV = "PAGELLM_GEMV_PREFETCH_MB"
DEFAULT_PREFETCH_MB = {1: 4.0}
"""Tensor-parallel size -> the default budget in MB (8 for sizes not listed). Measured on
H200s at W1 (benchmarks/RESULTS.md, sessions 9 and 10): at TP=1 4 MB beat 8 MB (233.2 vs
231.6 and 232.3 vs 228.0 tok/s), at TP=2 8 MB was best (the all-reduce before each GEMV leaves
a longer window to fill)."""


def prefetch_budget(tensor_parallel_size: int = 1) -> int:
    """Bytes of weight a PDL GEMV launch prefetches at most: ``PAGELLM_GEMV_PREFETCH_MB`` when
    set, else DEFAULT_PREFETCH_MB for this tensor-parallel size."""
    default = DEFAULT_PREFETCH_MB.get(tensor_parallel_size, 8.0)
    return int(float(os.environ.get(PREFETCH_MB_ENV, default)) * (1 << 20))


PREFETCH_BYTES = prefetch_budget()
"""Bytes of weight a PDL GEMV launch asks L2 to prefetch before its wait, at most (the
worker sets it for its tensor-parallel size: ``configure``)."""


def configure(tensor_parallel_size: int) -> None:
    """Set PREFETCH_BYTES for a worker of a ``tensor_parallel_size`` group (its process
    serves one model, so a module value suffices)."""
    global PREFETCH_BYTES
    PREFETCH_BYTES = prefetch_budget(tensor_parallel_size)


@triton.jit
def launch_dependents():
    """Let a PDL-launched next kernel be scheduled once every program of this grid has run
    this (a hint: it still waits for this grid's completion before reading anything). A no-op
    when the next kernel is not PDL-launched, and on CPU (the interpreter)."""
    if _COMPILED:
        gdc_launch_dependents()


@triton.jit
def prefetch_rows_l2(row_ptrs, nbytes):
    """Ask L2 to fetch ``nbytes`` (int32, multiples of 16; 0 skips) bytes from each address of
    ``row_ptrs`` (16-byte aligned; same shape). Only on sm_90+
    (``cp.async.bulk.prefetch.L2``); returns nothing, reads nothing into registers."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.u32 p, $2, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [row_ptrs, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def wait_for_previous_grid():
    """Block until the previous kernel in stream order has completed and its memory
    operations are visible (``gdc_wait``); immediate when this kernel was not PDL-launched."""
    if _COMPILED:
        gdc_wait()


@triton.jit
def prefetch_slice(weight_ptr, offs_n, mask_n, stride_wn, k_begin, k_end, prefetch_k):
    """The GEMVs' PDL prologue part: prefetch the first ``prefetch_k`` elements of the K slice
    [k_begin, k_end) of weight rows ``offs_n`` [BN] (rows where ``mask_n`` is False skipped).
    Each row's span is cut into num_threads / BN chunks so that every thread issues exactly one
    bulk prefetch: a [BN] tensor of row addresses would be replicated over the threads, and 8
    copies of every request cost W1 18% on an H200 (benchmarks/RESULTS.md, session 9)."""
    itemsize: tl.constexpr = weight_ptr.dtype.element_ty.primitive_bitwidth // 8
    ALIGN: tl.constexpr = 16 // itemsize                   # elements of one 16-byte unit
    BLOCK_N: tl.constexpr = offs_n.shape[0]
    CHUNKS: tl.constexpr = (num_threads() + BLOCK_N - 1) // BLOCK_N
    count = tl.minimum(prefetch_k, k_end - k_begin)
    chunk = ((count + CHUNKS - 1) // CHUNKS + ALIGN - 1) // ALIGN * ALIGN
    start = tl.arange(0, CHUNKS) * chunk                                           # [C]
    size = tl.minimum(tl.maximum(count - start, 0), chunk)                         # [C]
    nbytes = tl.where(mask_n[:, None], size[None, :] * itemsize, 0)                # [BN, C]
    rows = weight_ptr + offs_n[:, None].to(tl.int64) * stride_wn + k_begin         # [BN, 1]
    prefetch_rows_l2(rows + start[None, :], nbytes)


@functools.cache
def _device_supports(index: int) -> bool:
    if torch.version.hip is not None:       # ROCm reports gfx9xx as capability 9.x: no PTX
        return False
    major, _ = torch.cuda.get_device_capability(index)
    return major >= 9


def pdl_enabled(device: torch.device) -> bool:
    """Whether GEMVs on ``device`` launch with PDL and prefetch: an NVIDIA device of compute
    capability >= 9.0 (Hopper: ``griddepcontrol`` and the bulk L2 prefetch), a Triton that
    has both (``gdc_wait``, the ``launch_pdl`` option), and ``PAGELLM_PDL`` not "0"."""
    if device.type != "cuda" or gdc_wait is None or os.environ.get("PAGELLM_PDL", "1") == "0":
        return False
    return _device_supports(device.index if device.index is not None
                            else torch.cuda.current_device())


def launch_args(device: torch.device, prefetch_k: Callable[[], int]) -> dict:
    """The PDL keyword arguments of a GEMV launch on ``device``: ``PDL`` (constexpr),
    ``prefetch_k`` (``prefetch_k()``, called only with PDL; else 0) and, with PDL, Triton's
    ``launch_pdl`` option."""
    if not pdl_enabled(device):
        return {"PDL": False, "prefetch_k": 0}
    return {"PDL": True, "launch_pdl": True, "prefetch_k": prefetch_k()}


def gemv_launch_args(x: torch.Tensor, weight: torch.Tensor, rows: int, k_per_split: int,
                     split_k: int, block_k: int) -> dict:
    """``launch_args`` of a GEMV over a [rows, K] weight (K contiguous) on ``x``'s device;
    ``weight``, ``rows`` and the split as in ``prefetch_elements``."""
    return launch_args(x.device, lambda: prefetch_elements(weight, rows, k_per_split, split_k,
                                                           block_k))


def prefetch_elements(weight: torch.Tensor, rows: int, k_per_split: int, split_k: int,
                      block_k: int) -> int:
    """Elements of each weight row slice that a PDL GEMV prefetches: all ``k_per_split`` when
    the ``rows`` x K weight fits PREFETCH_BYTES, else the largest multiple of ``block_k`` that
    keeps the total within it (0: too little budget, or a row or slice start that is not
    16-byte aligned, which the bulk prefetch requires). weight: [rows, K] (or [rows, K / pack]
    for packed formats: its element size counts), K contiguous."""
    itemsize = weight.element_size()
    aligned = (weight.data_ptr() % 16 == 0 and (weight.stride(0) * itemsize) % 16 == 0
               and (k_per_split * itemsize) % 16 == 0 and (weight.shape[-1] * itemsize) % 16 == 0)
    if not aligned:
        return 0
    per_row_budget = PREFETCH_BYTES // max(rows * split_k * itemsize, 1)
    if per_row_budget >= k_per_split:
        return k_per_split
    return per_row_budget // block_k * block_k
