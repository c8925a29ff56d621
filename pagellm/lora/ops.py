"""The batched multi-adapter product ``out[t] += x[t] @ A[slot[t]]^T @ B[slot[t]]^T``.

Slots hold the adapters loaded on the device: A [max_loras, R, in], B [max_loras, out, R]
(scaling already folded into B). ``token_slots`` [T] gives each token's slot, -1 for the base
model. The torch twin groups tokens by slot (one pair of small GEMMs per adapter in the batch;
the CPU path and the oracle of the Triton kernels); CUDA runs ``pagellm.ops.triton.lora``.
Shrink (``lora_shrink``, h = x A^T) and expand (``lora_expand_``, out += h B^T) are separate
steps so that fully sharded LoRA layers can gather or reduce h across ranks in between.
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


def lora_shrink_torch(x: torch.Tensor, a_slots: torch.Tensor,
                      groups: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """h [T, R] float32 = x[idx] @ A[s]^T per adapter group (rows of base tokens zero).
    x [T, K], a_slots [S, R, K]."""
    h = torch.zeros((x.shape[0], a_slots.shape[1]), dtype=torch.float32, device=x.device)
    for slot, index in groups:
        rows = x.index_select(0, index).float()                       # [n, K]
        h.index_copy_(0, index, rows @ a_slots[slot].float().t())      # [n, R]
    return h


def lora_expand_torch_(h: torch.Tensor, b_slots: torch.Tensor,
                       groups: list[tuple[int, torch.Tensor]], out: torch.Tensor) -> None:
    """out [T, N] += h[idx] @ B[s]^T per adapter group, computed in float32 and added in
    out's dtype (``out`` may be a column slice of a wider tensor). h [T, R] float32,
    b_slots [S, N, R]."""
    for slot, index in groups:
        delta = h.index_select(0, index) @ b_slots[slot].float().t()  # [n, N]
        out.index_add_(0, index, delta.to(out.dtype))


def lora_delta_torch(x: torch.Tensor, a_slots: torch.Tensor, b_slots: torch.Tensor,
                     groups: list[tuple[int, torch.Tensor]], out: torch.Tensor) -> None:
    """out [T, N] += per-adapter group: (x[idx] @ A[s]^T) @ B[s]^T, computed in float32 and
    added in out's dtype. x [T, K], a_slots [S, R, K], b_slots [S, N, R]."""
    lora_expand_torch_(lora_shrink_torch(x, a_slots, groups), b_slots, groups, out)


def _use_bgmv(num_tokens: int, tensor: torch.Tensor) -> bool:
    """The per-token Triton kernels: CUDA steps of at most LORA_BGMV_MAX_TOKENS tokens."""
    return num_tokens <= LORA_BGMV_MAX_TOKENS and use_triton_kernels(tensor)


def lora_shrink(x: torch.Tensor, a_slots: torch.Tensor, mapping: LoRABatchMapping
                ) -> torch.Tensor:
    """The step's shrink: h [T, R] float32 = x[t] @ A[slot[t]]^T (zero rows for base
    tokens). x [T, K], a_slots [S, R, K]."""
    if _use_bgmv(x.shape[0], x):
        from pagellm.ops.triton.lora import lora_shrink as triton_shrink

        return triton_shrink(x, a_slots, mapping.token_slots)
    return lora_shrink_torch(x, a_slots, mapping.groups)


def lora_expand_(h: torch.Tensor, b_slots: torch.Tensor, mapping: LoRABatchMapping,
                 out: torch.Tensor) -> None:
    """The step's expand, in place: out[t] += h[t] @ B[slot[t]]^T for adapter tokens.
    h [T, R] float32, b_slots [S, N, R], out [T, N] (last dim contiguous; may be a column
    slice)."""
    if _use_bgmv(h.shape[0], h):
        from pagellm.ops.triton.lora import lora_expand_ as triton_expand_

        triton_expand_(h, b_slots, mapping.token_slots, out)
        return
    lora_expand_torch_(h, b_slots, mapping.groups, out)


def apply_lora(x: torch.Tensor, a_slots: torch.Tensor, b_slots: torch.Tensor,
               mapping: LoRABatchMapping, out: torch.Tensor) -> None:
    """Add every adapter token's delta to ``out`` [T, N] in place (Triton on CUDA for steps
    of at most LORA_BGMV_MAX_TOKENS tokens); one rank's whole product, no communication."""
    lora_expand_(lora_shrink(x, a_slots, mapping), b_slots, mapping, out)
