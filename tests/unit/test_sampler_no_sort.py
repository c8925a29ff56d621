"""Top-k / top-p without a vocabulary sort, and the one-uniform-per-row draw.

The sorted implementation (``apply_top_k_top_p_sorted_``) is the oracle: on random logits the
kept sets must be equal token for token; where a tie straddles the nucleus boundary the new
code keeps the whole tie (asserted exactly)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pagellm.layers.sampler import Sampler
from pagellm.ops.sampling import (
    apply_top_k_top_p_,
    apply_top_k_top_p_sorted_,
    inverse_cdf_sample,
    top_p_threshold,
)
from tests.unit.test_sampler import make_metadata

NEG_INF = float("-inf")


class OpRecorder(TorchDispatchMode):
    """Records the name of every aten op that runs inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._schema.name)
        return func(*args, **(kwargs or {}))


def random_case(seed: int, num_rows: int = 48, vocab_size: int = 1000):
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand((num_rows, 1), generator=generator) * 6  # flat to peaked rows
    logits = torch.randn((num_rows, vocab_size), generator=generator) * scale  # [B, V]
    top_k = torch.randint(0, 60, (num_rows,), generator=generator)  # [B]; 0 = off
    top_p = torch.rand((num_rows,), generator=generator).clamp_min(0.02)  # [B]
    # Edge values in fixed rows: k = 1, k = V, k > V, p = 1, both off.
    top_k[:5] = torch.tensor([1, vocab_size, vocab_size + 7, 0, 0])
    top_p[:5] = torch.tensor([0.5, 0.9, 1.0, 1.0, 1.0])
    return logits, top_k, top_p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kept_sets_equal_the_sorted_reference(seed):
    logits, top_k, top_p = random_case(seed)
    expected = apply_top_k_top_p_sorted_(logits.clone(), top_k, top_p) > NEG_INF  # [B, V]
    masked = apply_top_k_top_p_(logits.clone(), top_k, top_p, max_top_k=int(top_k.max()))
    assert torch.equal(masked > NEG_INF, expected)
    kept = masked > NEG_INF
    assert torch.equal(masked[kept], logits[kept])  # kept logits untouched


@pytest.mark.parametrize("which", ["top_k", "top_p"])
def test_each_filter_alone_equals_the_sorted_reference(which):
    logits, top_k, top_p = random_case(7)
    args = (top_k, None) if which == "top_k" else (None, top_p)
    expected = apply_top_k_top_p_sorted_(logits.clone(), *args) > NEG_INF
    assert torch.equal(apply_top_k_top_p_(logits.clone(), *args) > NEG_INF, expected)


def test_top_k_one_and_whole_vocabulary():
    logits = torch.tensor([[0.3, 2.0, -1.0, 0.5], [0.3, 2.0, -1.0, 0.5]])
    masked = apply_top_k_top_p_(logits.clone(), torch.tensor([1, 4]), None, max_top_k=4)
    assert (masked > NEG_INF).tolist() == [[False, True, False, False], [True] * 4]


def test_top_k_keeps_every_token_tied_with_the_kth():
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    masked = apply_top_k_top_p_(logits.clone(), torch.tensor([2]), None, max_top_k=2)
    assert (masked > NEG_INF).tolist() == [[False, True, True, True, False]]


def test_a_tie_across_the_nucleus_boundary_is_kept_whole():
    # Probabilities 0.4, 0.2, 0.2, 0.2: top_p 0.5 needs one of the 0.2s; all three are kept.
    logits = torch.tensor([[math.log(0.4), math.log(0.2), math.log(0.2), math.log(0.2)]])
    masked = apply_top_k_top_p_(logits.clone(), None, torch.tensor([0.5]))
    assert (masked > NEG_INF).tolist() == [[True, True, True, True]]
    reference = apply_top_k_top_p_sorted_(logits.clone(), None, torch.tensor([0.5])) > NEG_INF
    assert int(reference.sum()) == 2 and bool(reference[0, 0])  # an arbitrary part of the tie


def test_tie_below_the_boundary_is_dropped_whole():
    # 0.5, 0.3, 0.1, 0.1: top_p 0.8 is reached by the first two; both 0.1s go.
    logits = torch.tensor([[math.log(p) for p in (0.1, 0.5, 0.1, 0.3)]])
    masked = apply_top_k_top_p_(logits.clone(), None, torch.tensor([0.8]))
    assert (masked > NEG_INF).tolist() == [[False, True, False, True]]


def test_top_p_threshold_is_the_smallest_kept_probability():
    logits, _, top_p = random_case(3, num_rows=16, vocab_size=3000)
    probs = logits.softmax(-1)  # [B, V]
    reference_kept = apply_top_k_top_p_sorted_(logits.clone(), None, top_p) > NEG_INF
    smallest_kept = torch.where(reference_kept, probs, float("inf")).amin(-1, keepdim=True)  # [B, 1]
    smallest_kept = torch.where(top_p.unsqueeze(1) >= 1.0, 0.0, smallest_kept)
    assert torch.equal(top_p_threshold(probs, top_p), smallest_kept)


def test_no_sort_runs_when_max_top_k_is_below_the_vocabulary():
    logits, top_k, top_p = random_case(4)
    top_k[1:3] = 50  # no row asks for k >= V
    metadata = make_metadata([1.0] * len(top_k), top_k=top_k.tolist(), top_p=top_p.tolist())
    metadata.max_top_k = int(top_k.max())
    with OpRecorder() as recorder:
        Sampler()(logits, metadata)
    assert "aten::topk" in recorder.ops and "aten::scatter_add_" in recorder.ops
    assert not {"aten::sort", "aten::argsort"} & recorder.ops
    with OpRecorder() as recorder:  # the reference does sort: the recorder sees it
        apply_top_k_top_p_sorted_(logits.clone(), top_k, top_p)
    assert "aten::sort" in recorder.ops


def test_inverse_cdf_sample_matches_the_distribution_and_skips_zeros():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    num_rows = 40_000
    torch.manual_seed(11)
    tokens = inverse_cdf_sample(probs.repeat(num_rows, 1) * 3.0, {})  # unnormalised rows
    observed = torch.bincount(tokens, minlength=7).double()  # [V]
    assert observed[[0, 2, 6]].tolist() == [0.0, 0.0, 0.0]
    expected = probs.double()[[1, 3, 4, 5]] * num_rows
    chi_square = float(((observed[[1, 3, 4, 5]] - expected) ** 2 / expected).sum())
    assert chi_square < 16.3  # 3 degrees of freedom, p = 0.001


def test_inverse_cdf_sample_at_the_top_of_the_range_picks_the_last_positive_token(monkeypatch):
    """u x total rounding up to the total (u within 2^-53 of 1, forced here with u = 1) must
    not run off the cumulative sums onto the trailing zero-probability tokens."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.15, 0.05, 0.0, 0.0]])
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.ones_like(
        real_rand(*args, **kwargs)))
    assert inverse_cdf_sample(probs, {}).tolist() == [5]


def test_top_p_sampling_distribution_is_the_renormalised_nucleus():
    # 0.4, 0.3, 0.2, 0.1 with top_p 0.75: nucleus {0, 1, 2}, renormalised 4/9, 3/9, 2/9.
    logits = torch.tensor([math.log(p) for p in (0.4, 0.3, 0.2, 0.1)])
    num_rows = 6_000
    torch.manual_seed(12)
    out = Sampler()(logits.repeat(num_rows, 1), make_metadata([1.0] * num_rows, top_p=[0.75] * num_rows))
    observed = torch.bincount(out.sampled_token_ids, minlength=4).double()
    assert observed[3] == 0
    expected = torch.tensor([4 / 9, 3 / 9, 2 / 9], dtype=torch.float64) * num_rows
    chi_square = float(((observed[:3] - expected) ** 2 / expected).sum())
    assert chi_square < 13.8  # 2 degrees of freedom, p = 0.001


def test_seeded_draws_repeat_and_ignore_the_row_position():
    logits, top_k, top_p = random_case(5, num_rows=8)

    def run(rows_of_seeded: list[int]) -> list[list[int]]:
        generators = {row: torch.Generator().manual_seed(123) for row in rows_of_seeded}
        steps = []
        for _ in range(4):
            metadata = make_metadata([1.0] * 8, top_k=top_k.tolist(), top_p=top_p.tolist(),
                                     generators=generators)
            tokens = Sampler()(logits.clone(), metadata).sampled_token_ids
            steps.append([int(tokens[row]) for row in rows_of_seeded])
        return steps

    first, again = run([6]), run([6])
    assert first == again
    # Row 6's logits in row 2: the same tokens when the stream follows the logits.
    moved_logits = logits.clone()
    moved_logits[2], moved_logits[6] = logits[6], logits[2]
    top_k[2], top_k[6] = int(top_k[6]), int(top_k[2])
    top_p[2], top_p[6] = float(top_p[6]), float(top_p[2])
    logits = moved_logits
    assert run([2]) == first


def test_unnormalized_probs_sample_as_softmax_does():
    """The small-batch CUDA path of ``sampling_probs`` (exp(logits - max), no normalisation)
    draws the same tokens as softmax from the same seeded draws, with min-p applied, and CPU
    batches keep softmax."""
    from pagellm.ops.sampling import (apply_min_p_, inverse_cdf_sample, sampling_probs,
                                      shifted_exp)

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5000, generator=gen) * 4
    logits[1, :2500] = float("-inf")
    torch.testing.assert_close(sampling_probs(logits), logits.softmax(dim=-1))
    shifted = shifted_exp(logits)
    torch.testing.assert_close(shifted / shifted.sum(-1, keepdim=True), logits.softmax(-1))
    assert torch.equal(shifted.amax(-1), torch.ones(3)) and (shifted[1, :2500] == 0).all()
    min_p = torch.tensor([0.0, 0.05, 0.2])
    for seed in range(20):
        draws = {}
        for probs in (logits.softmax(-1), shifted_exp(logits)):
            generators = {row: torch.Generator().manual_seed(seed * 3 + row) for row in range(3)}
            draws[len(draws)] = inverse_cdf_sample(apply_min_p_(probs, min_p), generators)
        assert torch.equal(draws[0], draws[1]), seed
