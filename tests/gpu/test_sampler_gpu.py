"""The sampler's probabilities on CUDA: below SOFTMAX_ROWS_MIN rows exp(logits - max) (many
thread blocks) instead of torch's one-block-per-row softmax; the same tokens from the same
seeded draws, with min-p, at a 128k vocabulary."""

from __future__ import annotations

import pytest
import torch

from pagellm.ops.sampling import (SOFTMAX_ROWS_MIN, apply_min_p_, inverse_cdf_sample,
                                  sampling_probs, shifted_exp)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rows", [1, 4, SOFTMAX_ROWS_MIN])
def test_small_batches_sample_as_softmax_does(rows):
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(rows, 128256, device="cuda", generator=gen) * 3
    probs = sampling_probs(logits)
    if rows < SOFTMAX_ROWS_MIN:
        assert torch.equal(probs, shifted_exp(logits))
    else:
        assert torch.equal(probs, logits.softmax(-1))
    torch.testing.assert_close(probs / probs.sum(-1, keepdim=True), logits.softmax(-1))
    min_p = torch.full((rows,), 0.01, device="cuda")
    for seed in range(10):
        draws = []
        for candidate in (logits.softmax(-1), probs.clone()):
            generators = {row: torch.Generator(device="cuda").manual_seed(seed * 100 + row)
                          for row in range(rows)}
            draws.append(inverse_cdf_sample(apply_min_p_(candidate, min_p), generators))
        assert torch.equal(draws[0], draws[1]), seed
