"""N-gram (prompt lookup) proposer, vLLM's ``NgramProposer`` rule, vectorised over the batch
with numpy on the host.

For each request, take the last ``n`` tokens of its context for n = prompt_lookup_max down to
prompt_lookup_min; the first n with an earlier occurrence in the context wins, and the
proposal is the (up to) k tokens that followed its LAST earlier occurrence. No match: no
proposal. The context is the runner's persistent ``InputBatch.token_ids`` row.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class NgramProposer:
    def __init__(self, num_speculative_tokens: int, prompt_lookup_min: int,
                 prompt_lookup_max: int):
        self.k = num_speculative_tokens
        self.min_n = prompt_lookup_min
        self.max_n = prompt_lookup_max

    def propose(self, token_ids: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
        """Drafts for a batch of contexts.

        token_ids: [B, L] int (row b's context is ``token_ids[b, :lengths[b]]``, L >=
        max(lengths)); lengths: [B] int. Returns B lists of 0..k token ids.
        """
        batch = len(lengths)
        proposals: list[list[int]] = [[] for _ in range(batch)]
        if batch == 0:
            return proposals
        width = int(lengths.max())
        context = token_ids[:, :width]
        starts = np.full(batch, -1, dtype=np.int64)      # where the proposal begins
        arange_b = np.arange(batch)
        for n in range(self.max_n, self.min_n - 1, -1):
            todo = (starts < 0) & (lengths > n)
            if not todo.any() or width <= n:
                continue
            windows = sliding_window_view(context, n, axis=1)        # [B, width - n + 1, n]
            suffix_cols = lengths[:, None] - n + np.arange(n)        # [B, n]
            suffix = context[arange_b[:, None], np.clip(suffix_cols, 0, width - 1)]
            match = (windows == suffix[:, None, :]).all(axis=-1)     # [B, width - n + 1]
            # an earlier occurrence: it must end before the context's last token
            match &= np.arange(match.shape[1])[None, :] < (lengths - n)[:, None]
            found = todo & match.any(axis=1)
            last = match.shape[1] - 1 - np.argmax(match[:, ::-1], axis=1)
            starts[found] = last[found] + n
        for b in np.flatnonzero(starts >= 0).tolist():
            end = min(int(starts[b]) + self.k, int(lengths[b]))
            proposals[b] = token_ids[b, starts[b]:end].tolist()
        return proposals
