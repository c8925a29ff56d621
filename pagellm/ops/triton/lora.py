"""Triton SGMV LoRA kernels: tokens grouped by adapter slot, one tensor-core product per block.

The step's adapter tokens are sorted by slot (``LoRABatchMapping.sorted_tokens``); slot s owns
the segment ``sorted_tokens[seg_start[s] : seg_start[s] + seg_len[s]]``. A program takes up to
BLOCK_M tokens of one segment, so an adapter's A and B tiles are read once per block of tokens
rather than once per token (the per-token BGMV form reads them T times), and the products run
on tensor cores (``tl.dot``). This is the segmented-GEMM (SGMV) scheme of Punica (Chen et al.,
2023, "Punica: Multi-Tenant LoRA Serving") and S-LoRA, the way vLLM's current LoRA kernels
group tokens by adapter.

shrink: h[t, :] = x[t, :] @ A[s]^T           x [T, K], A [S, R, K] -> h float32
        (split-K: h is [SPLIT_K, T, R] partial sums when few tokens leave the GPU idle;
        [T, R] otherwise; rows of base tokens are not written)
expand: out[t, :] += sum_k h[k, t, :] @ B[s]^T   B [S, N, R], out [T, N] in place

Grids depend only on T, the slot count and the shapes, never on the step's adapter mix, so
both kernels run inside CUDA graphs (the mapping tensors are static buffers there). Programs
of empty segments return at once. Twin: ``pagellm.lora.ops.lora_delta_torch``
(tests/gpu/test_lora_kernels.py and the interpreter test in tests/unit/test_lora_ops.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _segment_tokens(sorted_ptr, seg_start_ptr, seg_len_ptr, slot, pid_m, BLOCK_M: tl.constexpr):
    """(token indices [BLOCK_M], row mask, any row) of block ``pid_m`` of ``slot``'s segment."""
    length = tl.load(seg_len_ptr + slot)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = offs_m < length
    start = tl.load(seg_start_ptr + slot)
    tokens = tl.load(sorted_ptr + start + offs_m, mask=rows, other=0)
    return tokens, rows, pid_m * BLOCK_M < length


@triton.jit
def _lora_shrink_kernel(x_ptr, a_ptr, sorted_ptr, seg_start_ptr, seg_len_ptr, h_ptr, K, R,
                        k_per_split, stride_xt, stride_as, stride_ar, stride_hs, stride_ht,
                        SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    slot = tl.program_id(2) // SPLIT_K
    split = tl.program_id(2) % SPLIT_K
    tokens, rows, active = _segment_tokens(sorted_ptr, seg_start_ptr, seg_len_ptr, slot, pid_m,
                                           BLOCK_M)
    if active:
        offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
        k_start = split * k_per_split
        k_end = tl.minimum(k_start + k_per_split, K)
        for k0 in range(k_start, k_end, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < k_end
            x = tl.load(x_ptr + tokens[:, None] * stride_xt + offs_k[None, :],
                        mask=rows[:, None] & k_mask[None, :], other=0.0)      # [M, BK]
            a = tl.load(a_ptr + slot * stride_as + offs_r[None, :] * stride_ar + offs_k[:, None],
                        mask=(offs_r[None, :] < R) & k_mask[:, None], other=0.0)  # [BK, BR]
            acc += tl.dot(x, a, input_precision=PRECISION)
        tl.store(h_ptr + split * stride_hs + tokens[:, None] * stride_ht + offs_r[None, :], acc,
                 mask=rows[:, None] & (offs_r[None, :] < R))


@triton.jit
def _lora_expand_kernel(h_ptr, b_ptr, sorted_ptr, seg_start_ptr, seg_len_ptr, out_ptr, N, R,
                        stride_hs, stride_ht, stride_bs, stride_bn, stride_ot,
                        SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_R: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    slot = tl.program_id(2)
    tokens, rows, active = _segment_tokens(sorted_ptr, seg_start_ptr, seg_len_ptr, slot, pid_m,
                                           BLOCK_M)
    if active:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            r_mask = offs_r < R
            h = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
            for split in range(SPLIT_K):                    # the shrink's partial sums
                h += tl.load(h_ptr + split * stride_hs + tokens[:, None] * stride_ht
                             + offs_r[None, :], mask=rows[:, None] & r_mask[None, :], other=0.0)
            b = tl.load(b_ptr + slot * stride_bs + offs_n[None, :] * stride_bn + offs_r[:, None],
                        mask=n_mask[None, :] & r_mask[:, None], other=0.0)    # [BR, BN]
            acc += tl.dot(h, b.to(tl.float32), input_precision=PRECISION)
        out_ptrs = out_ptr + tokens[:, None] * stride_ot + offs_n[None, :]
        out_mask = rows[:, None] & n_mask[None, :]
        current = tl.load(out_ptrs, mask=out_mask, other=0.0)
        tl.store(out_ptrs, (current.to(tl.float32) + acc).to(out_ptr.dtype.element_ty),
                 mask=out_mask)


def _block_m(num_tokens: int) -> int:
    return 16 if num_tokens <= 64 else 64


def shrink_split_k(num_tokens: int, k: int) -> int:
    """Split-K factor of the shrink: decode-sized steps (<= 64 tokens) would otherwise run a
    handful of programs that each stream a whole A (R x K) through one SM; chunks of >= 512
    of K, at most 16. Larger steps have enough token blocks to fill the GPU."""
    if num_tokens > 64:
        return 1
    return max(1, min(16, k // 512))


def lora_shrink(x: torch.Tensor, a_slots: torch.Tensor, sorted_tokens: torch.Tensor,
                seg_start: torch.Tensor, seg_len: torch.Tensor) -> torch.Tensor:
    """x [T, K] (last dim contiguous), a_slots [S, R, K] -> h float32: [T, R], or
    [SPLIT_K, T, R] partial sums (``shrink_split_k``) that ``lora_expand_`` adds up. Rows of
    base tokens are left unwritten (never read). Mapping tensors: see the module docstring."""
    num_tokens, k = x.shape
    num_slots, rank = a_slots.shape[:2]
    split_k = shrink_split_k(num_tokens, k)
    h = torch.empty((split_k, num_tokens, rank), dtype=torch.float32, device=x.device)
    block_m = _block_m(num_tokens)
    block_r = min(max(triton.next_power_of_2(rank), 16), 64)
    block_k = 64
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    grid = (triton.cdiv(num_tokens, block_m), triton.cdiv(rank, block_r), num_slots * split_k)
    _lora_shrink_kernel[grid](
        x, a_slots, sorted_tokens, seg_start, seg_len, h, k, rank, k_per_split, x.stride(0),
        a_slots.stride(0), a_slots.stride(1), h.stride(0), h.stride(1), SPLIT_K=split_k,
        BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=block_k,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32")
    return h[0] if split_k == 1 else h


def lora_expand_(h: torch.Tensor, b_slots: torch.Tensor, sorted_tokens: torch.Tensor,
                 seg_start: torch.Tensor, seg_len: torch.Tensor, out: torch.Tensor) -> None:
    """out [T, N] (last dim contiguous; may be a column slice) += h @ B[slot]^T per adapter
    token, h float32 [T, R] or [SPLIT_K, T, R] (summed here), B [S, N, R]."""
    h3 = h if h.dim() == 3 else h.unsqueeze(0)
    split_k, num_tokens, rank = h3.shape
    num_slots, n = b_slots.shape[:2]
    block_m = _block_m(num_tokens)
    block_n = 64 if num_tokens <= 64 else 128
    block_r = min(max(triton.next_power_of_2(rank), 16), 32)
    grid = (triton.cdiv(num_tokens, block_m), triton.cdiv(n, block_n), num_slots)
    _lora_expand_kernel[grid](
        h3, b_slots, sorted_tokens, seg_start, seg_len, out, n, rank, h3.stride(0),
        h3.stride(1), b_slots.stride(0), b_slots.stride(1), out.stride(0), SPLIT_K=split_k,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r,
        PRECISION="ieee" if out.dtype == torch.float32 else "tf32")
