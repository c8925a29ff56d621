"""Triton BGMV-style LoRA kernels: each token reads its own adapter's slot.

shrink: h[t, :] = x[t, :] @ A[slot[t]]^T        x [T, K], A [S, R, K] -> h [T, R] float32
expand: out[t, :] += h[t, :] @ B[slot[t]]^T     h [T, R], B [S, N, R], out [T, N] in place
Tokens with slot -1 (the base model) are left alone. Twin: ``pagellm.lora.ops.lora_delta_torch``
(tests/gpu/test_lora_kernels.py compares them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lora_shrink_kernel(x_ptr, a_ptr, slots_ptr, h_ptr, K, R, stride_xt, stride_as, stride_ar,
                        stride_ht, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    token = tl.program_id(0)
    slot = tl.load(slots_ptr + token)
    if slot >= 0:                       # base-model tokens: nothing to do
        offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
        acc = tl.zeros([BLOCK_R], dtype=tl.float32)
        for k_start in range(0, K, BLOCK_K):
            offs_k = k_start + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + token * stride_xt + offs_k, mask=offs_k < K, other=0.0)
            a = tl.load(a_ptr + slot * stride_as + offs_r[:, None] * stride_ar + offs_k[None, :],
                        mask=(offs_r[:, None] < R) & (offs_k[None, :] < K), other=0.0)
            acc += tl.sum(a.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
        tl.store(h_ptr + token * stride_ht + offs_r, acc, mask=offs_r < R)


@triton.jit
def _lora_expand_kernel(h_ptr, b_ptr, slots_ptr, out_ptr, N, R, stride_ht, stride_bs, stride_bn,
                        stride_ot, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    token = tl.program_id(0)
    slot = tl.load(slots_ptr + token)
    if slot >= 0:                       # base-model tokens: their rows are not touched
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for r_start in range(0, R, BLOCK_R):
            offs_r = r_start + tl.arange(0, BLOCK_R)
            h = tl.load(h_ptr + token * stride_ht + offs_r, mask=offs_r < R, other=0.0)
            b = tl.load(b_ptr + slot * stride_bs + offs_n[:, None] * stride_bn + offs_r[None, :],
                        mask=(offs_n[:, None] < N) & (offs_r[None, :] < R), other=0.0)
            acc += tl.sum(b.to(tl.float32) * h[None, :], axis=1)
        out_mask = offs_n < N
        current = tl.load(out_ptr + token * stride_ot + offs_n, mask=out_mask, other=0.0)
        tl.store(out_ptr + token * stride_ot + offs_n,
                 (current.to(tl.float32) + acc).to(out_ptr.dtype.element_ty), mask=out_mask)


def lora_shrink(x: torch.Tensor, a_slots: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
    """x [T, K], a_slots [S, R, K] (last dim contiguous), token_slots [T] int -> h [T, R]
    float32 (rows of base tokens are zero)."""
    num_tokens, k = x.shape
    rank = a_slots.shape[1]
    x = x.contiguous()
    h = torch.zeros((num_tokens, rank), dtype=torch.float32, device=x.device)   # [T, R]
    block_r = min(max(triton.next_power_of_2(rank), 16), 64)
    grid = (num_tokens, triton.cdiv(rank, block_r))
    _lora_shrink_kernel[grid](x, a_slots, token_slots, h, k, rank, x.stride(0),
                              a_slots.stride(0), a_slots.stride(1), h.stride(0),
                              BLOCK_R=block_r, BLOCK_K=128)
    return h


def lora_expand_(h: torch.Tensor, b_slots: torch.Tensor, token_slots: torch.Tensor,
                 out: torch.Tensor) -> None:
    """out [T, N] (last dim contiguous; may be a column slice of a wider tensor, its row
    stride is used) += h [T, R] @ B[slot]^T per token, B [S, N, R]."""
    num_tokens, rank = h.shape
    n = b_slots.shape[1]
    block_r = min(max(triton.next_power_of_2(rank), 16), 64)
    grid = (num_tokens, triton.cdiv(n, 64))
    _lora_expand_kernel[grid](h, b_slots, token_slots, out, n, rank, h.stride(0),
                              b_slots.stride(0), b_slots.stride(1), out.stride(0),
                              BLOCK_N=64, BLOCK_R=block_r)
