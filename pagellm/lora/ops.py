"""The batched multi-adapter product ``out[t] += x[t] @ A[slot[t]]^T @ B[slot[t]]^T``.

Slots hold the adapters loaded on the device: A [max_loras, R, in], B [max_loras, out, R]
(scaling already folded into B). ``token_slots`` [T] gives each token's slot, -1 for the base
model. The torch twin groups tokens by slot (one pair of small GEMMs per adapter in the batch;
the CPU path and the oracle of the Triton kernels); CUDA runs ``pagellm.ops.triton.lora`` (SGMV:
the same grouping, one tensor-core product per block of a slot's tokens) at every step size.
Shrink (``lora_shrink``, h = x A^T) and expand (``lora_expand_``, out += h B^T) are separate
steps so that fully sharded LoRA layers can gather or reduce h across ranks in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagellm.platforms import use_triton_kernels


@dataclass
class LoRABatchMapping:
    """One step's adapter placement, built once per step (``make_mapping``) and read by every
    LoRA layer. The segment tensors feed the Triton kernels: ``sorted_tokens`` [T] int64 holds
    the adapter tokens sorted by slot (its tail past the last segment is unused), slot s owns
    ``sorted_tokens[seg_start[s]:seg_start[s] + seg_len[s]]``; seg_start, seg_len [S] int64."""
    token_slots: torch.Tensor                        # [T] int64 on the device, -1 = base
    groups: list[tuple[int, torch.Tensor]]           # (slot, [n] token indices) per adapter in the batch
    sorted_tokens: torch.Tensor | None = None        # [T] int64
    seg_start: torch.Tensor | None = None            # [S] int64
    seg_len: torch.Tensor | None = None              # [S] int64

    @property
    def segments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.sorted_tokens is None:
            raise ValueError("this LoRABatchMapping has no segments: build it with make_mapping")
        return self.sorted_tokens, self.seg_start, self.seg_len


def make_mapping(token_slots: np.ndarray, num_slots: int, device: torch.device
                 ) -> LoRABatchMapping:
    """The mapping of one step from its per-token slots ([T] int, -1 = base): groups for the
    torch twin and segments for the Triton kernels, moved to ``device`` in one copy."""
    token_slots = np.asarray(token_slots, dtype=np.int64)
    num_tokens = len(token_slots)
    adapter = np.flatnonzero(token_slots >= 0)
    order = adapter[np.argsort(token_slots[adapter], kind="stable")]       # [n] by slot
    seg_len = np.bincount(token_slots[adapter], minlength=num_slots)[:num_slots]
    seg_start = np.concatenate(([0], np.cumsum(seg_len)[:-1]))
    packed = np.zeros(2 * num_tokens + 2 * num_slots, dtype=np.int64)
    packed[:num_tokens] = token_slots
    packed[num_tokens:num_tokens + len(order)] = order
    packed[2 * num_tokens:2 * num_tokens + num_slots] = seg_start
    packed[2 * num_tokens + num_slots:] = seg_len
    tensor = torch.from_numpy(packed)
    if device.type != "cpu":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    sorted_tokens = tensor[num_tokens:2 * num_tokens]
    groups = []
    for slot in np.flatnonzero(seg_len).tolist():
        start = int(seg_start[slot])
        groups.append((slot, sorted_tokens[start:start + int(seg_len[slot])]))
    return LoRABatchMapping(tensor[:num_tokens], groups, sorted_tokens,
                            tensor[2 * num_tokens:2 * num_tokens + num_slots],
                            tensor[2 * num_tokens + num_slots:])


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


def lora_shrink(x: torch.Tensor, a_slots: torch.Tensor, mapping: LoRABatchMapping
                ) -> torch.Tensor:
    """The step's shrink: h float32 = x[t] @ A[slot[t]]^T. x [T, K], a_slots [S, R, K].
    The torch twin returns [T, R] with zero rows for base tokens; the Triton kernel [T, R]
    or split-K partial sums [SPLIT_K, T, R], base rows unwritten (``lora_expand_`` takes
    either; sum(0) gives [T, R])."""
    if use_triton_kernels(x):
        from pagellm.ops.triton.lora import lora_shrink as triton_shrink

        return triton_shrink(x, a_slots, *mapping.segments)
    return lora_shrink_torch(x, a_slots, mapping.groups)


def lora_expand_(h: torch.Tensor, b_slots: torch.Tensor, mapping: LoRABatchMapping,
                 out: torch.Tensor) -> None:
    """The step's expand, in place: out[t] += h[t] @ B[slot[t]]^T for adapter tokens.
    h float32 [T, R] (or the Triton shrink's [SPLIT_K, T, R]), b_slots [S, N, R], out [T, N]
    (last dim contiguous; may be a column slice)."""
    if use_triton_kernels(h):
        from pagellm.ops.triton.lora import lora_expand_ as triton_expand_

        triton_expand_(h, b_slots, *mapping.segments, out)
        return
    lora_expand_torch_(h, b_slots, mapping.groups, out)


def apply_lora(x: torch.Tensor, a_slots: torch.Tensor, b_slots: torch.Tensor,
               mapping: LoRABatchMapping, out: torch.Tensor) -> None:
    """Add every adapter token's delta to ``out`` [T, N] in place (Triton on CUDA); one
    rank's whole product, no communication."""
    lora_expand_(lora_shrink(x, a_slots, mapping), b_slots, mapping, out)
