"""Structured outputs: mask the logits of the tokens a grammar does not allow.

Bitmask layout (pagellm.structured_output.backend): int32 words, bit ``t % 32`` of word
``t // 32`` set = token ``t`` allowed. ``apply_token_bitmask_`` is xgrammar's
``apply_token_bitmask_inplace`` (its CUDA/Triton kernel on GPU, its CPU kernel on CPU);
``apply_token_bitmask_torch_`` is the pure-torch twin and the test oracle.
"""

from __future__ import annotations

import torch


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor,
                         indices: list[int]) -> None:
    """Set ``logits[i, t]`` to -inf for every row i in ``indices`` and token t whose bit in
    ``bitmask[i]`` is clear; other rows are untouched. logits: [B, V] (any float dtype),
    bitmask: [B, W] int32 on the same device with W * 32 >= V (ids >= the tokenizer's
    vocabulary have clear bits, so padded vocabulary entries are masked too)."""
    import xgrammar

    if bitmask.shape[1] * 32 < logits.shape[1]:
        raise ValueError(f"bitmask covers {bitmask.shape[1] * 32} tokens, logits have "
                         f"{logits.shape[1]}")
    xgrammar.apply_token_bitmask_inplace(logits, bitmask, indices=indices,
                                         vocab_size=logits.shape[1])


def apply_token_bitmask_torch_(logits: torch.Tensor, bitmask: torch.Tensor,
                               indices: list[int]) -> None:
    """The same as ``apply_token_bitmask_`` in plain torch (unpacks the bits)."""
    rows = torch.tensor(indices, dtype=torch.long, device=logits.device)
    vocab_size = logits.shape[1]
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    bits = (bitmask[rows].unsqueeze(-1) >> shifts) & 1           # [R, W, 32]
    allowed = bits.reshape(len(indices), -1)[:, :vocab_size].bool()  # [R, V]
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
