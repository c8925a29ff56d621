"""Adaptive speculation length (``speculative_config["adaptive"]``, beyond vLLM): per request,
how many of its drafts to verify this step, from its recent acceptance; and a per-step cap on
draft tokens for large batches.

The rule (constants in ``speculative_config``, see ``pagellm.config.speculative``):

- Acceptance estimate. Each verified draft of d tokens with a accepted is a run of Bernoulli
  trials that stops at the first rejection: a successes in a + (1 if a < d) trials. A proposal
  that was not verified (k was 0, or the budget cut it) is still checked for free against the
  token that came: 1 trial, a success when its first token equals it ("shadow" check, so a
  request whose speculation is off sees its acceptance recover). Successes and trials are
  exponentially weighted moving sums with decay ``adaptive_ewma_decay`` (lambda) per
  observation, both starting at 1 (an optimistic prior: a new request speculates fully):
  ``alpha = successes / trials``.
- Length. With per-token acceptance alpha, k drafts give 1 + alpha + ... + alpha^k tokens in
  expectation for a step costing 1 + c k decode steps (c = ``draft_token_cost``, the measured
  cost of one more verified position relative to a decode step). The request's k is the
  smallest k in 0..num_speculative_tokens maximising ``(1 + sum_{i<=k} alpha^i) / (1 + c k)``;
  k = 0 turns its speculation off (its proposals keep being shadow-checked).
- Batch budget. ``max_num_draft_tokens_per_step`` (None = no cap) caps the draft tokens of one
  step: at large batch verification is compute-bound and every draft costs a full token.
  Requests with the highest alpha get their drafts first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SpecAcceptance:
    """One request's exponentially weighted acceptance counts (see the module)."""
    successes: float = 1.0
    trials: float = 1.0

    @property
    def rate(self) -> float:
        """alpha: the estimated probability that the next draft token is accepted."""
        return self.successes / self.trials

    def observe(self, num_accepted: int, num_trials: int, decay: float) -> None:
        """Fold one observation in: ``num_accepted`` successes in ``num_trials`` trials."""
        self.successes = decay * self.successes + num_accepted
        self.trials = decay * self.trials + num_trials

    def observe_verified(self, num_drafts: int, num_accepted: int, decay: float) -> None:
        """A verified draft: accepted tokens up to the first rejection (if any)."""
        if num_drafts:
            self.observe(num_accepted, num_accepted + (num_accepted < num_drafts), decay)

    def observe_shadow(self, first_draft: int, token_id: int, decay: float) -> None:
        """An unverified proposal checked against the token that came at its first position."""
        self.observe(int(first_draft == token_id), 1, decay)


def best_num_drafts(rate: float, max_drafts: int, draft_token_cost: float) -> int:
    """The smallest k in 0..max_drafts maximising ``(1 + rate + ... + rate^k) / (1 + cost k)``
    (expected tokens per unit of step time)."""
    best_k, best_gain, expected, power = 0, 1.0, 1.0, 1.0
    for k in range(1, max_drafts + 1):
        power *= rate
        expected += power
        gain = expected / (1.0 + draft_token_cost * k)
        if gain > best_gain * (1 + 1e-9):
            best_k, best_gain = k, gain
    return best_k
