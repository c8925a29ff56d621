"""``speculative_config`` keys of adaptive speculation length (beyond vLLM; the rule is in
``pagellm.core.spec_adaptive``):

- ``"adaptive"``: bool, per-request k from recent acceptance (default ``ADAPTIVE_DEFAULT``).
- ``"adaptive_ewma_decay"``: float in (0, 1), weight kept by the old counts per observation.
- ``"draft_token_cost"``: float >= 0, cost of one more verified position relative to a decode
  step (0 = drafts are free: every request with any acceptance speculates fully).
- ``"max_num_draft_tokens_per_step"``: int >= 0 or None, the draft tokens one step may verify
  (large batches: verification is compute-bound). Applies with or without ``adaptive``.
"""

from __future__ import annotations

from pagellm.errors import ClientError

ADAPTIVE_KEYS = ("adaptive", "adaptive_ewma_decay", "draft_token_cost",
                 "max_num_draft_tokens_per_step")
ADAPTIVE_DEFAULT = False
"""Off by default: on this CPU at batch 1 a verified draft costs only ~0.05-0.1 of a decode
step, so speculation pays at almost any acceptance and adaptive k measured within noise of
fixed k on W10 (benchmarks/RESULTS.md, "W10 adaptive k"). Turn it on where verification is
expensive (large batches, compute-bound GPUs), with ``draft_token_cost`` measured there
(benchmarks/spec_verify_cost.py)."""
ADAPTIVE_EWMA_DECAY = 0.5
"""An observation's weight halves with each newer one: about the last 2-3 steps count."""
DRAFT_TOKEN_COST = 0.1
"""One more verified position costs ~0.05-0.1 of a decode step for the default model at batch
1 on this CPU (benchmarks/spec_verify_cost.py, RESULTS.md): k drafts pay off above alpha ~ 0.1."""


def adaptive_settings(spec: dict) -> dict:
    """{"adaptive": bool, "adaptive_ewma_decay", "draft_token_cost",
    "max_num_draft_tokens_per_step"} from ``spec``, defaults filled. ClientError for a bad
    value (naming the key and the allowed range)."""
    adaptive = spec.get("adaptive", ADAPTIVE_DEFAULT)
    decay = spec.get("adaptive_ewma_decay", ADAPTIVE_EWMA_DECAY)
    cost = spec.get("draft_token_cost", DRAFT_TOKEN_COST)
    budget = spec.get("max_num_draft_tokens_per_step")
    if not isinstance(adaptive, bool):
        _fail(f"adaptive must be true or false, got {adaptive!r}")
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
        _fail(f"adaptive_ewma_decay must be a number in (0, 1), got {decay!r}")
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0:
        _fail(f"draft_token_cost must be a number >= 0, got {cost!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                               or budget < 0):
        _fail(f"max_num_draft_tokens_per_step must be an integer >= 0 or null, got {budget!r}")
    return {"adaptive": adaptive, "adaptive_ewma_decay": float(decay),
            "draft_token_cost": float(cost), "max_num_draft_tokens_per_step": budget}


def _fail(message: str) -> None:
    raise ClientError(f"speculative_config: {message}", param="speculative_config")
