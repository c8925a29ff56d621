"""The custom all-reduce's start-up correctness check (``pagellm.distributed.custom_all_reduce``):
bf16 sums of 2, 4 and 8 ranks' values added in different orders (NCCL's ring, a one-shot
kernel's rank order) stay within ``sum_rounding_bound`` of the exact sum, while a sum that
drops or doubles one rank's part does not. The fixed 1e-2 tolerance it replaces rejected the
correct reordered sums at 4+ ranks (TP=4 on H200s fell back to NCCL)."""

from __future__ import annotations

import pytest
import torch

from pagellm.distributed.custom_all_reduce import reduced_close, sum_rounding_bound

DTYPE = torch.bfloat16


def ranks_values(world: int, numel: int = 65536) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(world)
    return [torch.randn(numel, generator=generator).to(DTYPE) for _ in range(world)]


def sum_in_order(values: list[torch.Tensor], order: list[int]) -> torch.Tensor:
    """Adds in ``DTYPE`` (a rounding after every addition), in ``order``."""
    total = values[order[0]].clone()
    for rank in order[1:]:
        total = total + values[rank]
    return total


@pytest.mark.parametrize("world", [2, 4, 8])
def test_reordered_bf16_sums_pass_and_a_missing_or_doubled_rank_fails(world):
    values = ranks_values(world)
    exact = torch.stack([v.float() for v in values]).sum(0)
    magnitude = torch.stack([v.float().abs() for v in values]).sum(0)
    tolerance = sum_rounding_bound(magnitude, world, DTYPE)
    forward, backward = list(range(world)), list(reversed(range(world)))
    ring = [(3 + i) % world for i in range(world)]
    for order in (forward, backward, ring):
        assert reduced_close(sum_in_order(values, order), exact, tolerance), order
    assert reduced_close(exact.to(DTYPE), exact, tolerance)              # rounded once
    assert not reduced_close(sum_in_order(values, forward[:-1]), exact, tolerance)
    assert not reduced_close(sum_in_order(values, forward + [0]), exact, tolerance)


def test_the_fixed_tolerance_rejected_correct_sums_at_eight_ranks():
    from pagellm.distributed.custom_all_reduce import _close
    values = ranks_values(8)
    forward = sum_in_order(values, list(range(8)))
    backward = sum_in_order(values, list(reversed(range(8))))
    assert not _close(forward, backward)         # two correct orders, "different" by 1e-2
