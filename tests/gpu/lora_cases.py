"""LoRA kernel cases shared by the GPU test and the CPU interpreter check: random slots, a
token->slot map with base tokens (-1), the Triton shrink/expand against the torch twin."""

from __future__ import annotations

import torch


def check_lora_kernels(num_tokens: int, num_slots: int, rank: int, in_features: int,
                       out_features: int, device: str, dtype: torch.dtype, seed: int = 0,
                       column_offset: int = 0) -> float:
    """Max |kernel - twin| of ``out += x @ A[slot]^T @ B[slot]^T``, relative to the largest
    |output| when that exceeds 1 (half-precision rounding grows with magnitude: the outputs
    here reach ~20, where a bf16 ulp is 0.125); base rows must stay bit-identical (asserted).
    ``column_offset`` > 0: ``out`` is columns [offset, offset + out_features) of a wider
    tensor (a fully sharded row-parallel layer's expand); the other columns must stay
    bit-identical (asserted)."""
    from pagellm.lora.ops import lora_delta_torch, make_mapping
    from pagellm.ops.triton.lora import lora_expand_, lora_shrink

    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    x = rand(num_tokens, in_features)                                   # [T, K]
    a_slots = rand(num_slots, rank, in_features) * 0.1                  # [S, R, K]
    b_slots = rand(num_slots, out_features, rank) * 0.1                 # [S, N, R]
    slots = torch.randint(-1, num_slots, (num_tokens,), generator=generator)
    slots[0] = -1
    wide = rand(num_tokens, out_features + 2 * column_offset)          # [T, N (+ 2 offset)]
    wide_expected = wide.clone()
    out = wide.narrow(1, column_offset, out_features)                   # [T, N] view
    expected = wide_expected.narrow(1, column_offset, out_features)
    groups = [(s, torch.nonzero(slots == s).flatten().to(device)) for s in range(num_slots)
              if bool((slots == s).any())]
    lora_delta_torch(x, a_slots, b_slots, groups, expected)
    segments = make_mapping(slots.numpy(), num_slots, torch.device(device)).segments
    lora_expand_(lora_shrink(x, a_slots, *segments), b_slots, *segments, out)
    base = (slots == -1).to(device)
    assert torch.equal(out[base], expected[base])
    outside = torch.ones(wide.shape[1], dtype=torch.bool, device=device)
    outside[column_offset:column_offset + out_features] = False
    assert torch.equal(wide[:, outside], wide_expected[:, outside])
    error = float((out.float() - expected.float()).abs().max())
    return error / max(1.0, float(expected.float().abs().max()))
