"""The batched multi-adapter product ``out[t] += x[t] @ A[slot[t]]^T @ B[slot[t]]^T``.

Slots hold the adapters loaded on the device: A [max_loras, R, in], B [max_loras, out, R]
(scaling already folded into B). ``token_slots`` [T] gives each token's slot, -1 for the base
model. The torch twin groups tokens by slot (one pair of small GEMMs per adapter in the batch;
the CPU path and the oracle of the Triton kernels); CUDA runs ``pagellm.ops.triton.lora``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagellm.platforms import use_triton_kernels

LORA_BGMV_MAX_TOKENS = 512
"""CUDA: steps of at most this many tokens run the per-token Triton kernels; larger ones
(prefill chunks) the grouped GEMMs. Each BGMV program reads its adapter's whole A (R x K) and
B (N x R), so its L2 traffic grows with tokens x adapter size, while a group's GEMM reads each
adapter once. The cut is an estimate from those byte counts (W11 measures it), not a
measured optimum."""


@dataclass
class LoRABatchMapping:
    """One step's adapter placement, built once per step and read by every LoRA layer."""
    token_slots: torch.Tensor                        # [T] int64 on the device, -1 = base
    groups: list[tuple[int, torch.Tensor]]           # (slot, [n] token indices) per adapter in the batch


def lora_delta_torch(x: torch.Tensor, a_slots: torch.Tensor, b_slots: torch.Tensor,
                     groups: list[tuple[int, torch.Tensor]], out: torch.Tensor) -> None:
    """out [T, N] += per-adapter group: (x[idx] @ A[s]^T) @ B[s]^T, computed in float32 and
    added in out's dtype. x [T, K], a_slots [S, R, K], b_slots [S, N, R]."""
    for slot, index in groups:
        rows = x.index_select(0, index).float()                       # [n, K]
        h = rows @ a_slots[slot].float().t()                           # [n, R]
        out.index_add_(0, index, (h @ b_slots[slot].float().t()).to(out.dtype))


def apply_lora(x: torch.Tensor, a_slots: torch.Tensor, b_slots: torch.Tensor,
               mapping: LoRABatchMapping, out: torch.Tensor) -> None:
    """Add every adapter token's delta to ``out`` [T, N] in place (Triton on CUDA for steps
    of at most LORA_BGMV_MAX_TOKENS tokens)."""
    if x.shape[0] <= LORA_BGMV_MAX_TOKENS and use_triton_kernels(x):
        from pagellm.ops.triton.lora import lora_expand_, lora_shrink

        h = lora_shrink(x, a_slots, mapping.token_slots)               # [T, R] float32
        lora_expand_(h, b_slots, mapping.token_slots, out)
        return
    lora_delta_torch(x, a_slots, b_slots, mapping.groups, out)
