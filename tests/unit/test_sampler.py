"""Sampler and sampling kernels on hand-made logits, with exact expected values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from pagellm.layers.sampler import Sampler, SamplingMetadata
from pagellm.ops.sampling import (
    apply_min_p_,
    apply_penalties_,
    apply_temperature_,
    apply_top_k_top_p_,
    compute_logprobs_topk,
)

NEG_INF = float("-inf")
# A hand-made distribution: probabilities 0.5, 0.25, 0.15, 0.1.
FOUR_PROBS = [0.5, 0.25, 0.15, 0.1]


def make_metadata(
    temperature: list[float],
    *,
    top_k: list[int] | None = None,
    top_p: list[float] | None = None,
    min_p: list[float] | None = None,
    seeds: dict[int, int] | None = None,
    generators: dict[int, torch.Generator] | None = None,
    presence: list[float] | None = None,
    frequency: list[float] | None = None,
    repetition: list[float] | None = None,
    prompt_token_ids: list[list[int]] | None = None,
    output_token_ids: list[list[int]] | None = None,
    logit_bias: list[dict[int, float] | None] | None = None,
    min_tokens_mask: list[tuple[int, list[int]]] | None = None,
    max_num_logprobs: int | None = None,
    vocab_size: int = 0,
) -> SamplingMetadata:
    """Builds metadata the way the model runner does: optional tensors only when used."""
    batch_size = len(temperature)
    if generators is None:
        generators = {row: torch.Generator().manual_seed(seed) for row, seed in (seeds or {}).items()}
    prompt_tensor = None
    if prompt_token_ids is not None:
        width = max(len(row) for row in prompt_token_ids)
        prompt_tensor = torch.tensor([row + [vocab_size] * (width - len(row)) for row in prompt_token_ids])

    def floats(values):
        return None if values is None else torch.tensor(values, dtype=torch.float32)

    return SamplingMetadata(
        temperature=torch.tensor(temperature, dtype=torch.float32),
        all_greedy=all(t == 0.0 for t in temperature),
        all_random=all(t != 0.0 for t in temperature),
        top_k=None if top_k is None else torch.tensor(top_k, dtype=torch.int64),
        top_p=floats(top_p),
        min_p=floats(min_p),
        generators=generators,
        presence_penalties=floats(presence),
        frequency_penalties=floats(frequency),
        repetition_penalties=floats(repetition),
        prompt_token_ids=prompt_tensor,
        output_token_ids=output_token_ids or [[] for _ in range(batch_size)],
        logit_bias=logit_bias or [None] * batch_size,
        min_tokens_mask=min_tokens_mask or [],
        max_num_logprobs=max_num_logprobs,
    )


def repeated_rows(values: list[float], num_rows: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).repeat(num_rows, 1)  # [num_rows, V]


def support(tokens: torch.Tensor) -> set[int]:
    return set(tokens.tolist())


# ---- greedy -----------------------------------------------------------------------------

def test_greedy_is_argmax():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    expected = logits.argmax(dim=-1)
    out = Sampler()(logits.clone(), make_metadata([0.0] * 8))
    assert out.sampled_token_ids.dtype == torch.int64
    assert torch.equal(out.sampled_token_ids, expected)
    assert out.logprobs is None and out.logprob_token_ids is None and out.sampled_token_ranks is None


def test_greedy_rows_in_a_mixed_batch_are_argmax():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    expected = logits.argmax(dim=-1)
    temperature = [0.0, 1.0, 0.0, 2.0, 0.0, 1.0]
    out = Sampler()(logits.clone(), make_metadata(temperature, top_k=[0, 3, 0, 5, 0, 0]))
    for row in (0, 2, 4):
        assert out.sampled_token_ids[row] == expected[row]


# ---- seeds ------------------------------------------------------------------------------

def run_steps(build_batch, num_steps: int = 6) -> list[int]:
    """Samples num_steps steps; build_batch(generator) -> (logits, metadata, row of interest).
    The same generator object is kept across steps, as the model runner does."""
    generator = torch.Generator().manual_seed(1234)
    tokens = []
    for step in range(num_steps):
        logits, metadata, row = build_batch(generator, step)
        tokens.append(int(Sampler()(logits, metadata).sampled_token_ids[row]))
    return tokens


def seeded_logits(step: int) -> torch.Tensor:
    # Near-flat over 1,000 tokens: a different draw almost surely gives a different token.
    return torch.randn(1000, generator=torch.Generator().manual_seed(100 + step)) * 0.1  # [V]


def test_seeded_row_is_independent_of_batch_composition_and_row():
    def alone(generator, step):
        logits = seeded_logits(step).unsqueeze(0)  # [1, V]
        return logits, make_metadata([1.0], generators={0: generator}), 0

    def third_of_four(generator, step):
        other = torch.randn(3, 1000)  # [3, V]; unseeded rows use the default generator
        logits = torch.cat([other[:2], seeded_logits(step).unsqueeze(0), other[2:]])  # [4, V]
        others = {0: torch.Generator().manual_seed(7)}
        metadata = make_metadata([0.7, 1.0, 1.0, 0.0], generators={**others, 2: generator},
                                 top_k=[10, 0, 0, 0])
        return logits, metadata, 2

    def first_with_logprobs(generator, step):
        logits = torch.cat([seeded_logits(step).unsqueeze(0), torch.randn(2, 1000)])  # [3, V]
        metadata = make_metadata([1.0, 1.0, 0.5], generators={0: generator}, max_num_logprobs=3)
        return logits, metadata, 0

    reference = run_steps(alone)
    assert run_steps(third_of_four) == reference
    assert run_steps(first_with_logprobs) == reference
    assert len(set(reference)) > 1  # the generator state advances between steps


def test_different_seeds_give_different_tokens():
    logits = seeded_logits(0).repeat(2, 1)  # [2, V]
    out = Sampler()(logits, make_metadata([1.0, 1.0], seeds={0: 1, 1: 2}))
    assert out.sampled_token_ids[0] != out.sampled_token_ids[1]


def test_same_seed_in_two_rows_gives_the_same_token():
    logits = seeded_logits(0).repeat(2, 1)  # [2, V]
    out = Sampler()(logits, make_metadata([1.0, 1.0], seeds={0: 5, 1: 5}))
    assert out.sampled_token_ids[0] == out.sampled_token_ids[1]


# ---- top-k / top-p / min-p ---------------------------------------------------------------

def test_top_k_leaves_exactly_k_candidates():
    vocab_logits = torch.randn(40, generator=torch.Generator().manual_seed(3))  # distinct values
    num_rows = 4000
    logits = vocab_logits.repeat(num_rows, 1)  # [num_rows, V]
    metadata = make_metadata([50.0] * num_rows, top_k=[5] * num_rows, seeds={0: 0})
    torch.manual_seed(0)
    tokens = Sampler()(logits, metadata).sampled_token_ids
    assert support(tokens) == set(vocab_logits.topk(5).indices.tolist())


def test_top_k_zero_and_above_vocab_are_off():
    logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    masked = apply_top_k_top_p_(logits, torch.tensor([0, 7, 2]), None)
    assert torch.equal(masked[0], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(masked[1], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(masked[2], torch.tensor([NEG_INF, 2.0, 3.0]))


@pytest.mark.parametrize("top_p, kept", [(0.4, {0}), (0.7, {0, 1}), (0.8, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_nucleus(top_p, kept):
    # Shuffled so the kernel's sort matters: token ids 2, 0, 3, 1 carry 0.5, 0.25, 0.15, 0.1.
    order = [2, 0, 3, 1]
    logits = torch.full((1, 4), 0.0)
    for token, prob in zip(order, FOUR_PROBS):
        logits[0, token] = math.log(prob)
    masked = apply_top_k_top_p_(logits.clone(), None, torch.tensor([top_p]))
    kept_tokens = {order[i] for i in kept}
    assert {i for i in range(4) if masked[0, i] > NEG_INF} == kept_tokens
    for token in kept_tokens:  # kept logits are untouched
        assert masked[0, token] == logits[0, token]


def test_top_p_applies_after_top_k():
    logits = torch.tensor([[math.log(p) for p in FOUR_PROBS]] * 2)  # [2, 4]
    # Without top-k, 0.8 needs 3 tokens; within the top 3 (0.556, 0.278, 0.167) it needs 2.
    masked = apply_top_k_top_p_(logits, torch.tensor([0, 3]), torch.tensor([0.8, 0.8]))
    assert (masked[0] > NEG_INF).tolist() == [True, True, True, False]
    assert (masked[1] > NEG_INF).tolist() == [True, True, False, False]


def test_top_p_sampling_support():
    num_rows = 3000
    logits = repeated_rows([math.log(p) for p in FOUR_PROBS], num_rows)
    torch.manual_seed(1)
    tokens = Sampler()(logits, make_metadata([1.0] * num_rows, top_p=[0.7] * num_rows)).sampled_token_ids
    assert support(tokens) == {0, 1}


def test_min_p_drops_tokens_below_fraction_of_top():
    probs = torch.tensor([FOUR_PROBS, FOUR_PROBS, FOUR_PROBS])  # [3, 4]
    out = apply_min_p_(probs, torch.tensor([0.4, 0.0, 1.0]))
    assert out[0].tolist() == [0.5, 0.25, 0.0, 0.0]
    assert torch.equal(out[1], torch.tensor(FOUR_PROBS))
    assert out[2].tolist() == [0.5, 0.0, 0.0, 0.0]


def test_min_p_sampling_support():
    num_rows = 3000
    logits = repeated_rows([math.log(p) for p in FOUR_PROBS], num_rows)
    torch.manual_seed(2)
    tokens = Sampler()(logits, make_metadata([1.0] * num_rows, min_p=[0.4] * num_rows)).sampled_token_ids
    assert support(tokens) == {0, 1}


def test_temperature_divides_random_rows_only():
    logits = torch.tensor([[2.0, -4.0], [2.0, -4.0], [2.0, -4.0]])
    apply_temperature_(logits, torch.tensor([0.5, 0.0, 2.0]))
    assert logits.tolist() == [[4.0, -8.0], [2.0, -4.0], [1.0, -2.0]]


# ---- penalties, bias, min_tokens -----------------------------------------------------------

PENALTY_LOGITS = [2.0, -1.0, 0.5, 3.0, -2.0]
# prompt holds tokens 0 and 1; output so far holds 1 once and 3 twice.
PROMPT, OUTPUT = [0, 1], [1, 3, 3]


def penalized(presence=0.0, frequency=0.0, repetition=1.0) -> list[float]:
    logits = torch.tensor([PENALTY_LOGITS, PENALTY_LOGITS])  # [2, 5]; row 1 has every penalty off
    prompt = torch.tensor([PROMPT + [5], [4, 5, 5]])  # padded with vocab_size = 5
    apply_penalties_(logits, prompt, [OUTPUT, [2]], torch.tensor([presence, 0.0]),
                     torch.tensor([frequency, 0.0]), torch.tensor([repetition, 1.0]))
    assert logits[1].tolist() == PENALTY_LOGITS
    return logits[0].tolist()


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    # token 0 (prompt, +), 1 (prompt and output, -), 3 (output, +); 2 and 4 unseen.
    assert penalized(repetition=2.0) == [1.0, -2.0, 0.5, 1.5, -2.0]


def test_frequency_penalty_subtracts_count_times_penalty():
    assert penalized(frequency=0.5) == [2.0, -1.5, 0.5, 2.0, -2.0]


def test_presence_penalty_subtracts_once_per_output_token():
    assert penalized(presence=0.25) == [2.0, -1.25, 0.5, 2.75, -2.0]


def test_penalties_combined_in_order():
    # repetition first: [1, -2, .5, 1.5, -2]; then -0.5*count; then -0.25 if present.
    assert penalized(presence=0.25, frequency=0.5, repetition=2.0) == [1.0, -2.75, 0.5, 0.25, -2.0]


def test_negative_penalties_reward_repeats():
    assert penalized(presence=-1.0, frequency=-0.5) == [2.0, 0.5, 0.5, 5.0, -2.0]


def test_penalties_change_the_greedy_choice():
    logits = torch.tensor([[3.0, 2.9, 0.0]])
    metadata = make_metadata([0.0], presence=[0.5], frequency=[0.0], repetition=[1.0],
                             output_token_ids=[[0]])
    assert Sampler()(logits, metadata).sampled_token_ids.tolist() == [1]


def test_repetition_penalty_without_prompt_tensor_uses_output_only():
    logits = torch.tensor([[2.0, 2.0]])
    apply_penalties_(logits, None, [[1]], None, None, torch.tensor([4.0]))
    assert logits.tolist() == [[2.0, 0.5]]


def test_logit_bias_is_added_per_row():
    logits = torch.zeros(3, 5)
    metadata = make_metadata([0.0] * 3, logit_bias=[{4: 100.0, 1: -3.0}, None, {2: 7.5}])
    out = Sampler()(logits, metadata)
    assert out.sampled_token_ids.tolist() == [4, 0, 2]
    assert logits.tolist() == [[0.0, -3.0, 0.0, 0.0, 100.0], [0.0] * 5, [0.0, 0.0, 7.5, 0.0, 0.0]]


def test_min_tokens_masks_eos_and_stop_ids():
    eos, stop_id = 3, 1
    logits = torch.tensor([[0.0, 5.0, 1.0, 9.0], [0.0, 5.0, 1.0, 9.0]])
    # Row 0 is still below min_tokens; ids past the vocabulary can never be sampled: ignored.
    metadata = make_metadata([0.0, 0.0], min_tokens_mask=[(0, [eos, stop_id, 10_000])])
    out = Sampler()(logits, metadata)
    assert out.sampled_token_ids.tolist() == [2, eos]
    assert logits[0].tolist() == [0.0, NEG_INF, 1.0, NEG_INF]


def test_min_tokens_keeps_stop_tokens_where_nothing_else_is_allowed():
    # Row 0: a grammar already masked all but EOS (3): masking EOS too would leave no token,
    # so min_tokens yields there. Row 1 has other tokens left: EOS is masked as usual.
    eos = 3
    logits = torch.tensor([[NEG_INF, NEG_INF, NEG_INF, 2.0], [NEG_INF, 0.5, NEG_INF, 9.0]])
    metadata = make_metadata([0.0, 0.0], min_tokens_mask=[(0, [eos]), (1, [eos])])
    out = Sampler()(logits, metadata)
    assert out.sampled_token_ids.tolist() == [eos, 1]
    assert logits.tolist() == [[NEG_INF, NEG_INF, NEG_INF, 2.0], [NEG_INF, 0.5, NEG_INF, NEG_INF]]


def test_min_tokens_mask_holds_in_random_rows():
    num_rows = 2000
    logits = repeated_rows([0.0, 0.0, 0.0, 0.0], num_rows)
    metadata = make_metadata([1.0] * num_rows, min_tokens_mask=[(row, [0, 2]) for row in range(num_rows)])
    torch.manual_seed(3)
    assert support(Sampler()(logits, metadata).sampled_token_ids) == {1, 3}


# ---- logprobs -----------------------------------------------------------------------------

def test_logprobs_are_of_the_raw_distribution():
    raw = torch.randn(5, 30, generator=torch.Generator().manual_seed(4))
    expected = raw.log_softmax(dim=-1)
    metadata = make_metadata(
        [0.0, 1.0, 0.3, 0.0, 2.0], top_k=[0, 4, 0, 0, 2], top_p=[1.0, 1.0, 0.5, 1.0, 1.0],
        presence=[1.0] * 5, frequency=[0.5] * 5, repetition=[1.3] * 5,
        output_token_ids=[[1, 2], [3], [], [4, 4], [0]], logit_bias=[{7: 5.0}, None, None, None, None],
        seeds={1: 11}, max_num_logprobs=4)
    out = Sampler()(raw.clone(), metadata)
    sampled = out.sampled_token_ids
    assert out.logprob_token_ids.shape == (5, 5) and out.logprobs.shape == (5, 5)
    assert out.logprobs.dtype == torch.float32 and out.logprob_token_ids.dtype == torch.int64
    assert torch.equal(out.logprob_token_ids[:, 0], sampled)
    assert torch.equal(out.logprob_token_ids[:, 1:], expected.topk(4).indices)
    torch.testing.assert_close(out.logprobs, expected.gather(1, out.logprob_token_ids))
    for row in range(5):
        order = expected[row].argsort(descending=True).tolist()
        assert out.sampled_token_ranks[row] == order.index(int(sampled[row])) + 1


def test_zero_logprobs_returns_only_the_sampled_column():
    raw = torch.tensor([[1.0, 3.0, 2.0]])
    out = Sampler()(raw.clone(), make_metadata([0.0], max_num_logprobs=0))
    assert out.logprob_token_ids.tolist() == [[1]]
    torch.testing.assert_close(out.logprobs, raw.log_softmax(-1)[:, 1:2])
    assert out.sampled_token_ranks.tolist() == [1]


def test_compute_logprobs_topk_for_given_tokens():
    logprobs = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]).log()  # [2, 3]
    ids, vals, ranks = compute_logprobs_topk(logprobs, torch.tensor([2, 0]), 2)
    assert ids.tolist() == [[2, 1, 2], [0, 2, 0]] or ids.tolist() == [[2, 1, 2], [0, 2, 1]]
    torch.testing.assert_close(vals, logprobs.gather(1, ids))
    # A tie counts every token at least as likely: token 0 ties token 1 for second place.
    assert ranks.tolist() == [2, 3]


def test_half_precision_logits_are_sampled_in_float32():
    raw = torch.tensor([[0.0, 1.0, 4.0, 2.0]], dtype=torch.bfloat16)
    out = Sampler()(raw, make_metadata([0.0], max_num_logprobs=1))
    assert out.sampled_token_ids.tolist() == [2]
    assert out.logprobs.dtype == torch.float32


# ---- distribution -------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampling_matches_softmax(temperature):
    vocab_logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0])
    num_rows = 20_000
    torch.manual_seed(5)
    tokens = Sampler()(vocab_logits.repeat(num_rows, 1), make_metadata([temperature] * num_rows))
    observed = torch.bincount(tokens.sampled_token_ids, minlength=6).double()  # [V]
    expected = (vocab_logits / temperature).softmax(-1).double() * num_rows  # [V]
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square < 20.5  # 5 degrees of freedom, p = 0.001


def test_seeded_sampling_matches_softmax():
    probs = [0.6, 0.3, 0.1]
    logits = torch.tensor([[math.log(p) for p in probs]])
    generator = torch.Generator().manual_seed(9)
    counts = [0, 0, 0]
    for _ in range(3000):
        token = Sampler()(logits.clone(), make_metadata([1.0], generators={0: generator})).sampled_token_ids
        counts[int(token)] += 1
    chi_square = sum((c - p * 3000) ** 2 / (p * 3000) for c, p in zip(counts, probs))
    assert chi_square < 13.8  # 2 degrees of freedom, p = 0.001


# ---- properties ---------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-5.0, 5.0, width=32), min_size=2, max_size=12, unique=True),
       top_k=st.integers(0, 14), top_p=st.floats(0.05, 1.0))
def test_top_k_top_p_keeps_the_minimal_set(values, top_k, top_p):
    logits = torch.tensor([values], dtype=torch.float32)  # [1, V]
    masked = apply_top_k_top_p_(logits.clone(), torch.tensor([top_k]), torch.tensor([top_p]))
    kept = masked[0] > NEG_INF  # [V]
    vocab_size = len(values)
    k = vocab_size if top_k == 0 else min(top_k, vocab_size)
    ranked = logits[0].argsort(descending=True)  # [V]
    num_kept = int(kept.sum())
    assert 1 <= num_kept <= k
    assert kept[ranked[:num_kept]].all()  # kept tokens are a prefix of the ranking
    assert torch.equal(masked[0][kept], logits[0][kept])
    probs = logits[0][ranked[:k]].softmax(-1)  # [k], renormalised after top-k
    mass = probs.cumsum(-1)  # [k]
    tolerance = 1e-5
    assert num_kept == k or mass[num_kept - 1] >= top_p - tolerance
    # Minimal, except that a probability tie across the boundary is kept whole (distinct
    # logits can round to equal probabilities).
    assert num_kept == 1 or mass[num_kept - 2] < top_p + tolerance \
        or probs[num_kept - 1] == probs[num_kept - 2]
