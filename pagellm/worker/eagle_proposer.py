"""EAGLE / EAGLE-3 proposer (``speculative_config={"method": "eagle" | "eagle3", "model": HEAD,
"num_speculative_tokens": k}``); the heads are ``pagellm.models.llama_eagle``.

The head's position p takes the target's hidden state at p (EAGLE-1: the target's output;
EAGLE-3: fc over three auxiliary hidden states) and the token at p + 1, and predicts the
token at p + 2. Its KV cache follows the draft-model design (``pagellm.worker.draft_proposer``:
own tensors, the target's block ids, lookahead slots, valid where the target's is), with one
shift: after a step, the head runs over the positions the target just computed whose next
token is known, each with the target's hidden state of that position (for a request at
position L-1 whose a of k' drafts were accepted: positions L-1 .. L-1+a, fed the tokens
L .. L+a, the last being the step's new token; for a prefill chunk, the chunk). That pass
IS the first draft: its output at the last position gives draft 1 (no extra forward, as in
vLLM). Drafts 2..m feed the previous draft and the head's own hidden state at the next
position. Since a block's last head position depends on the next block's first token, a block's
prefix-cache hash also covers that token (``KVCacheManager(use_eagle=True)``).
Drafts are the head's argmax (mapped through ``d2t`` for EAGLE-3): point masses, verified
exactly by the runner.
"""

from __future__ import annotations

import numpy as np
import torch

from pagellm.worker.draft_proposer import ModelProposer, _positions, _to, ragged_step
from pagellm.worker.input_batch import InputBatch, StepInputs


class EagleProposer(ModelProposer):
    """Drafts with an EAGLE head fed by the target's hidden states."""

    def __init__(self, head, target, num_speculative_tokens: int, max_model_len: int,
                 device: torch.device):
        super().__init__(head, num_speculative_tokens, max_model_len, device)
        self.target = target

    def kv_layout(self) -> tuple[int, int, int]:
        return self.model.kv_layout

    def propose(self, batch: InputBatch, inputs: StepInputs, hidden: torch.Tensor,
                sample_index: np.ndarray, allowed: np.ndarray) -> list[list[int]]:
        """As ``DraftModelProposer.propose``; ``hidden``: the target's step output
        [num_tokens, hidden] (EAGLE-3 also reads the target's auxiliary hidden states)."""
        rows, starts = inputs.rows, np.asarray(inputs.starts, dtype=np.int64)
        counts = np.asarray(inputs.counts, dtype=np.int64).copy()
        num_drafts = np.zeros(len(sample_index), dtype=np.int64)
        if len(sample_index):
            sample_rows = rows[sample_index]
            num_drafts = self.num_drafts(batch, sample_rows, allowed)
            counts[sample_index] = batch.num_tokens[sample_rows] - 1 - starts[sample_index]
        token_rows, positions = np.repeat(rows, counts), _positions(starts, counts)
        query_start = np.asarray(inputs.attn_metadata.query_start_loc_cpu[:-1], dtype=np.int64)
        # the target's rows for these positions: the first counts[i] of each request's range
        target_index = _to(np.repeat(query_start, counts) + positions
                           - np.repeat(starts, counts), self.device)
        aux = getattr(self.target.model, "aux_hidden_states", [])
        head_hidden = self.model.combine_hidden_states(
            hidden[target_index], [state[target_index] for state in aux])     # [T, hidden]
        step = ragged_step(batch, rows, starts, counts,
                           batch.token_ids[token_rows, positions + 1], self.device)
        logits_hidden, next_hidden = self.model(step.input_ids, step.positions, head_hidden,
                                                self.kv_cache.layers, step.metadata)
        self.num_forwards += 1
        proposals: list[list[int]] = [[] for _ in range(len(sample_index))]
        proposing = np.flatnonzero(num_drafts > 0)
        if not len(proposing):
            return proposals
        last = _to(step.last_index[sample_index[proposing]], self.device)
        first = self.model.greedy_token_ids(logits_hidden[last])            # [P]
        state = next_hidden[last]                                           # [P, hidden]
        prop_rows = rows[sample_index[proposing]]
        base = batch.num_tokens[prop_rows] - 2     # the last position pass 1 ran

        def step_fn(active: np.ndarray, j: int, previous: torch.Tensor) -> torch.Tensor:
            index = _to(active, self.device)
            ones = np.ones(len(active), dtype=np.int64)
            decode = ragged_step(batch, prop_rows[active], base[active] + j, ones, previous,
                                 self.device)
            logits_h, next_h = self.model(decode.input_ids, decode.positions, state[index],
                                          self.kv_cache.layers, decode.metadata)
            state[index] = next_h
            return self.model.greedy_token_ids(logits_h)

        drafted = self.draft_loop(first, num_drafts[proposing], step_fn)
        for index, draft in zip(proposing.tolist(), drafted):
            proposals[index] = draft
        return proposals
