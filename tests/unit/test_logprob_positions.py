"""One position's logprobs as the output processor builds them from a step's arrays: a chosen
token tied with a token listed before it keeps its place in its own top-k list (a tester saw
top_logprobs=1 come back empty, and 4 entries for top_logprobs=5: the model's bf16 logits tie
often)."""

from __future__ import annotations

import numpy as np

from pagellm.core.sched_output import TopLogprobs
from pagellm.engine.output_processor import _LogprobRows
from pagellm.ops.sampling import compute_logprobs_topk


def _position(logprobs: list[float], chosen: int, k: int) -> dict[int, tuple[float, int]]:
    import torch

    ids, values, ranks = compute_logprobs_topk(torch.tensor([logprobs]), torch.tensor([chosen]), k)
    rows = _LogprobRows(TopLogprobs(ids.numpy(), values.numpy(), ranks.numpy()), 0, 1)
    return {token: (entry.logprob, entry.rank)
            for token, entry in rows.position(0, k, lambda t: str(t)).items()}


def _top(position: dict, k: int) -> list[int]:
    """What the chat API lists: the entries of rank 1..k."""
    return sorted((t for t, (_, rank) in position.items() if 1 <= rank <= k),
                  key=lambda t: position[t][1])


def test_a_chosen_token_tied_at_the_top_stays_in_its_top_1():
    position = _position([-0.5, -2.0, -0.5, -3.0], chosen=2, k=1)    # tokens 0 and 2 tie
    assert len(_top(position, 1)) == 1 and _top(position, 1)[0] in (0, 2)


def test_top_k_has_exactly_k_entries_with_ties_anywhere():
    rng = np.random.default_rng(0)
    for _ in range(200):
        logprobs = (np.round(rng.normal(size=12) * 4) / 8).tolist()     # steps of 0.125: ties
        chosen, k = int(rng.integers(12)), int(rng.integers(1, 6))
        position = _position(logprobs, chosen, k)
        top = _top(position, k)
        assert len(top) == k, (logprobs, chosen, k, position)
        assert len(set(position[t][1] for t in top)) == k         # ranks 1..k, each once
        assert position[chosen][0] == logprobs[chosen]
