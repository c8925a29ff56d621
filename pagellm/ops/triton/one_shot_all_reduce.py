"""A one-shot all-reduce over peer GPU memory, optionally fused with the residual add and
RMSNorm that follow every row-parallel linear of a decoder layer, in one Triton kernel.

Scheme (the "one-shot" all-reduce of arXiv 2211.05102 and vLLM's custom all-reduce, in its
push form as TensorRT-LLM's one-shot kernels do it): every rank writes its partial sums into
its own slot of *every* rank's buffer (symmetric memory, ``torch.distributed.
_symmetric_memory``: peers' buffers are addressable over NVLink), passes one barrier with each
peer, then reads the world's slots from its own buffer — local reads, so the NVLink round trip
of a pull is saved — adds them in rank order (so every rank computes bit-identical sums) and,
fused, adds the residual and normalises the row. One launch replaces an all-reduce launch
(torch's one-shot kernel: a multi-block barrier, a staging copy and a pull), and the RMSNorm
launch after it.

Barrier: program ``p`` of each rank pairs with program ``p`` of every peer. Each program keeps
an epoch counter in device memory (``counters[p]``, +1 per call, so CUDA-graph replays need no
host state), writes its epoch into ``flags[p, rank]`` of every peer with a system-scope
release store (after its data stores, which the release orders before the flag) and spins with
system-scope acquire loads until ``flags[p, peer]`` on its own rank reaches the epoch (a peer
can be at most one epoch ahead). Row ``r`` is always handled by program ``r % num_programs``
with ``num_programs = min(rows, MAX_PROGRAMS)``, so a row's slots are written by the same
program every call; the slots alternate between two halves of the buffer by the epoch's parity,
which makes an end barrier unnecessary: a peer writes the half this rank read two calls ago only
after passing the barrier of the call in between with this rank, whose kernel of two calls ago
had therefore finished. All programs of a grid must be resident at once (``MAX_PROGRAMS`` <= the
SM count), as in vLLM.

Buffer layout per rank, in elements of the data's dtype: ``[2 (parity), world (source rank),
slot_numel]``; a call needs rows * hidden <= slot_numel.

Torch twin: ``all_reduce`` (NCCL) followed by ``pagellm.ops.triton.norm.fused_add_rms_norm_triton``
— the fused kernel rounds exactly like them (the sum to the input dtype, the residual add in
float32 rounded to the input dtype, the normalised row rounded before the weight multiply), so
two ranks' fused results equal the unfused path bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagellm.ops.triton.pdl import launch_dependents

MAX_PROGRAMS = 64
"""Programs per launch at most (one barrier pair each); must be <= the GPU's SM count."""


@triton.jit
def _one_shot_all_reduce_kernel(
        out_ptr, residual_out_ptr, x_ptr, residual_ptr, weight_ptr, ids_ptr,
        data_ptrs, flag_ptrs, counters,
        num_rows, hidden, eps, slot_numel, rank, vocab_start, num_local_rows,
        stride_x_row, stride_residual_row, stride_out_row, stride_residual_out_row,
        stride_out_source,
        WORLD: tl.constexpr, NORM: tl.constexpr, EMBED: tl.constexpr, GATHER: tl.constexpr,
        BLOCK: tl.constexpr):
    """Push this rank's rows into every rank's slot, barrier, then read the world's slots
    (module docstring). EMBED: this rank's row ``r`` is row ``ids[r] - vocab_start`` of the
    table ``x`` when that lies in [0, num_local_rows), else zeros (a vocabulary-parallel
    embedding lookup). GATHER: the read phase copies every source's rows to ``out + source *
    stride_out_source`` (converted to out's dtype) instead of adding them."""
    launch_dependents()     # the next GEMV prefetches its weights during the barrier (``pdl``)
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    epoch = tl.load(counters + pid) + 1
    tl.store(counters + pid, epoch)
    half = (epoch % 2).to(tl.int64) * WORLD * slot_numel
    elem_ty = x_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden

    for row in range(pid, num_rows, num_programs):          # push into every rank's slot
        row64 = tl.cast(row, tl.int64)
        if EMBED:
            local = tl.load(ids_ptr + row64).to(tl.int64) - vocab_start
            hit = (local >= 0) & (local < num_local_rows)
            x = tl.load(x_ptr + tl.where(hit, local, 0) * stride_x_row + cols,
                        mask=mask & hit, other=0.0)
        else:
            x = tl.load(x_ptr + row64 * stride_x_row + cols, mask=mask, other=0.0)
        for dest in tl.static_range(WORLD):
            base = tl.load(data_ptrs + dest).to(tl.pointer_type(elem_ty))
            tl.store(base + half + rank * slot_numel + row64 * hidden + cols, x, mask=mask)
    tl.debug_barrier()              # the whole program's stores precede the release below

    for peer in tl.static_range(WORLD):
        if peer != rank:
            peer_flags = tl.load(flag_ptrs + peer).to(tl.pointer_type(tl.int32))
            tl.atomic_xchg(peer_flags + pid * WORLD + rank, epoch, sem="release", scope="sys")
    own_flags = tl.load(flag_ptrs + rank).to(tl.pointer_type(tl.int32))
    for peer in tl.static_range(WORLD):
        if peer != rank:
            seen = tl.atomic_add(own_flags + pid * WORLD + peer, 0, sem="acquire", scope="sys")
            while seen < epoch:
                seen = tl.atomic_add(own_flags + pid * WORLD + peer, 0, sem="acquire",
                                     scope="sys")
    tl.debug_barrier()              # every thread reads after the acquires

    own = tl.load(data_ptrs + rank).to(tl.pointer_type(elem_ty)) + half
    for row in range(pid, num_rows, num_programs):
        row64 = tl.cast(row, tl.int64)
        if GATHER:
            for source in tl.static_range(WORLD):
                part = tl.load(own + source * slot_numel + row64 * hidden + cols, mask=mask,
                               other=0.0, volatile=True)
                tl.store(out_ptr + source * stride_out_source + row64 * stride_out_row + cols,
                         part.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for source in tl.static_range(WORLD):   # rank order: the same sum on every rank
                acc += tl.load(own + source * slot_numel + row64 * hidden + cols, mask=mask,
                               other=0.0, volatile=True).to(tl.float32)
            total = acc.to(elem_ty)
            if NORM:
                residual = tl.load(residual_ptr + row64 * stride_residual_row + cols,
                                   mask=mask, other=0.0)
                total = (total.to(tl.float32) + residual.to(tl.float32)).to(elem_ty)
                tl.store(residual_out_ptr + row64 * stride_residual_out_row + cols, total,
                         mask=mask)
                total_float = total.to(tl.float32)
                variance = tl.sum(total_float * total_float, 0) / hidden
                normed = (total_float * tl.rsqrt(variance + eps)).to(elem_ty).to(tl.float32)
                weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(out_ptr + row64 * stride_out_row + cols,
                         (normed * weight).to(out_ptr.dtype.element_ty), mask=mask)
            else:
                tl.store(out_ptr + row64 * stride_out_row + cols, total, mask=mask)


def _launch(out, residual_out, x, residual, weight, ids, data_ptrs, flag_ptrs, counters,
            rows: int, hidden: int, eps: float, slot_numel: int, rank: int, vocab_start: int = 0,
            num_local_rows: int = 0, stride_out_source: int = 0, norm: bool = False,
            embed: bool = False, gather: bool = False) -> None:
    if rows * hidden > slot_numel:
        raise ValueError(f"{rows} x {hidden} elements exceed the one-shot slot's {slot_numel}")
    block = triton.next_power_of_2(hidden)
    if rows:
        _one_shot_all_reduce_kernel[(min(rows, MAX_PROGRAMS),)](
            out, residual_out, x, residual, weight, ids, data_ptrs, flag_ptrs, counters, rows,
            hidden, eps, slot_numel, rank, vocab_start, num_local_rows, x.stride(0),
            residual.stride(0), out.stride(-2) if out.dim() > 1 else hidden,
            residual_out.stride(0), stride_out_source, WORLD=data_ptrs.shape[0], NORM=norm,
            EMBED=embed, GATHER=gather, BLOCK=block,
            num_warps=4 if block <= 1024 else 8 if block <= 4096 else 16)


def one_shot_all_reduce(x: torch.Tensor, data_ptrs: torch.Tensor, flag_ptrs: torch.Tensor,
                        counters: torch.Tensor, slot_numel: int, rank: int,
                        residual: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                        eps: float = 0.0):
    """Sum ``x`` over the ranks whose buffers ``data_ptrs`` lists; with ``residual`` and
    ``weight`` also add the residual and RMS-normalise.

    x: [rows, hidden] (unit stride on the last dim), this rank's partial sums. data_ptrs,
    flag_ptrs: int64 [world] device tensors, every rank's symmetric data buffer ([2, world,
    slot_numel] elements of x's dtype, module doc) and flag area (int32 [MAX_PROGRAMS, world],
    zeroed before the first call), in rank order. counters: int32 [MAX_PROGRAMS], this rank's
    epochs (zeroed with the flags). Needs rows * hidden <= slot_numel (ValueError). Collective:
    every rank must make the same sequence of calls with the same shapes (of every kind in
    this module: they share the epochs).

    Returns the sum [rows, hidden] (new tensor), or with ``residual`` (same shape and dtype as
    x) the pair ``(rms_norm(sum + residual) * weight, sum + residual)``.
    """
    rows, hidden = x.shape
    norm = residual is not None
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    residual_out = torch.empty_like(x, memory_format=torch.contiguous_format) if norm else out
    residual = residual if norm else x
    _launch(out, residual_out, x, residual, weight if norm else x, x, data_ptrs, flag_ptrs,
            counters, rows, hidden, eps, slot_numel, rank, norm=norm)
    return (out, residual_out) if norm else out


def one_shot_embedding_all_reduce(input_ids: torch.Tensor, weight: torch.Tensor,
                                  vocab_start: int, data_ptrs: torch.Tensor,
                                  flag_ptrs: torch.Tensor, counters: torch.Tensor,
                                  slot_numel: int, rank: int) -> torch.Tensor:
    """A vocabulary-parallel embedding in one launch: each rank looks up the ids that fall in
    its rows [vocab_start, vocab_start + weight.shape[0]) of the table (zeros for the others)
    and the rows are summed over the ranks, so every rank gets the full lookup. Replaces the
    masked lookup's small kernels (about eight) and the all-reduce after it; bit-equal to them (one
    non-zero term per element).

    input_ids: [T] int32/int64; weight: [rows, dim] (this rank's part, unit stride on dim, of
    the buffers' dtype). Returns [T, dim] in weight's dtype. Other arguments and the
    collective contract as ``one_shot_all_reduce``."""
    rows, hidden = input_ids.shape[0], weight.shape[1]
    out = torch.empty(rows, hidden, dtype=weight.dtype, device=weight.device)
    _launch(out, out, weight, out, weight, input_ids, data_ptrs, flag_ptrs, counters, rows,
            hidden, 0.0, slot_numel, rank, vocab_start=vocab_start,
            num_local_rows=weight.shape[0], embed=True)
    return out


GATHER_MIN_ROW = 16
"""The all-gather moves a tensor as rows of a power of two from this up to GATHER_MAX_ROW
elements that divides its size (one program row per iteration)."""
GATHER_MAX_ROW = 1024


def gather_row(numel: int) -> int:
    """The row width ``one_shot_all_gather`` uses for a tensor of ``numel`` elements: the
    largest power of two <= GATHER_MAX_ROW dividing it; 0 when that is < GATHER_MIN_ROW (the
    caller keeps NCCL)."""
    row = GATHER_MAX_ROW
    while row >= GATHER_MIN_ROW and numel % row:
        row //= 2
    return row if row >= GATHER_MIN_ROW else 0


def one_shot_all_gather(x: torch.Tensor, data_ptrs: torch.Tensor, flag_ptrs: torch.Tensor,
                        counters: torch.Tensor, slot_numel: int, rank: int,
                        out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Every rank's ``x`` (any shape, contiguous, of the buffers' dtype), stacked in rank
    order: [world, *x.shape] in ``out_dtype`` (default x's), the layout of NCCL's
    ``all_gather_into_tensor`` (the conversion fused: the LM head's bf16 logits come out in
    float32 for sampling). ValueError when x.numel() has no row width (``gather_row``).
    Collective contract as ``one_shot_all_reduce``."""
    world, numel = data_ptrs.shape[0], x.numel()
    row = gather_row(numel)
    if not row:
        raise ValueError(f"no row width of {GATHER_MIN_ROW}..{GATHER_MAX_ROW} divides {numel}")
    out = torch.empty(world, *x.shape, dtype=out_dtype or x.dtype, device=x.device)
    rows_x = x.reshape(-1, row)                                    # [numel / row, row]
    _launch(out.view(world, -1, row), out, rows_x, rows_x, rows_x, rows_x, data_ptrs,
            flag_ptrs, counters, rows_x.shape[0], row, 0.0, slot_numel, rank,
            stride_out_source=numel, gather=True)
    return out
