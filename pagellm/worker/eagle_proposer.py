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

from pagellm.worker.draft_proposer import (ModelProposer, RaggedStep, _positions, _to,
                                           ragged_step)
from pagellm.worker.input_batch import InputBatch, StepInputs


class EagleProposer(ModelProposer):
    """Drafts with an EAGLE head fed by the target's hidden states."""

    def __init__(self, head, target, num_speculative_tokens: int, max_model_len: int,
                 device: torch.device):
        super().__init__(head, num_speculative_tokens, max_model_len, device)
        self.target = target

    def kv_layout(self) -> tuple[int, int, int]:
        return self.model.kv_layout

    def catch_up(self, batch: InputBatch, inputs: StepInputs, hidden: torch.Tensor,
                 sample_index: np.ndarray, num_drafts: np.ndarray):
        """The step's positions whose next token is known (module docstring), each fed that
        token and the target's hidden state of the position (``hidden``: the target's step
        output [num_tokens, hidden]; EAGLE-3 also reads the target's auxiliary hidden
        states). Returns the step and the head's (logits hidden, next hidden), [T, hidden]
        each."""
        rows, starts = inputs.rows, np.asarray(inputs.starts, dtype=np.int64)
        counts = np.asarray(inputs.counts, dtype=np.int64).copy()
        if len(sample_index):
            counts[sample_index] = (batch.num_tokens[rows[sample_index]] - 1
                                    - starts[sample_index])
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
        return step, self.model(step.input_ids, step.positions, head_hidden,
                                self.kv_cache.layers, step.metadata)

    def first_drafts(self, out: tuple[torch.Tensor, torch.Tensor],
                     last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(draft 1 [P], the head's hidden state at those positions [P, hidden]: the state
        the next position is fed, updated in place by ``next_drafts``)."""
        logits_hidden, next_hidden = out
        return self.model.greedy_token_ids(logits_hidden[last]), next_hidden[last]

    def next_drafts(self, decode: RaggedStep, active: np.ndarray,
                    state: torch.Tensor) -> torch.Tensor:
        index = _to(active, self.device)
        logits_h, next_h = self.model(decode.input_ids, decode.positions, state[index],
                                      self.kv_cache.layers, decode.metadata)
        state[index] = next_h
        return self.model.greedy_token_ids(logits_h)
