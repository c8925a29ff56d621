"""Draft-model proposer (``speculative_config={"model": DRAFT, "num_speculative_tokens": k}``),
and what it shares with the EAGLE proposer (``pagellm.worker.eagle_proposer``).

Design (the draft's KV cache):
- The draft model has KV tensors of its own (its layers, heads and head_dim), with the SAME
  number of blocks as the target's cache and indexed by the SAME block ids: the draft reads
  and writes through the target's block tables. The block manager (torch-free, in the
  scheduler) therefore needs no change: every block id stands for the target's K/V and the
  draft's K/V of the same tokens. The KV budget pays for both (the worker sizes blocks by
  the sum of the two layouts' bytes per block), and swapping copies both.
- Invariant: the draft's K/V is valid exactly where the target's is (positions below
  ``num_computed_tokens``). After every step, the proposer runs the draft over the positions
  the target just computed, with the now known tokens (the rejected drafts are dropped), plus
  the step's new token when the request proposes: for a request at position L-1 with k'
  drafts of which a were accepted, positions L-1 .. L+a (a + 2 tokens); for a prefill chunk,
  the chunk. So a prompt is prefilled chunk by chunk with the target, a prefix-cache hit
  covers the draft's K/V too (a cached block was computed by both), and recompute after
  preemption refills both.
- Then k - 1 single-token steps append drafts for all proposing requests at once. Their K/V
  lands past ``num_computed_tokens``, in the lookahead slots the scheduler reserved
  (``SpeculativeConfig.num_lookahead_tokens``); whatever a rejected draft left there is
  overwritten by the next round, which starts again at the accepted position.
- Drafts are the draft model's argmax (vLLM's rule): as point masses, the runner's
  verification (accept while the target's own draw equals the draft) keeps the target's
  distribution exactly, greedy or sampled.
A request proposes at most ``min(k, max_model_len - num_tokens - 1, max_tokens left - 1)``
drafts (what the scheduler could schedule), none when the runner says it may not speculate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pagellm.layers.attention_metadata import AttentionMetadata
from pagellm.worker.input_batch import InputBatch, StepInputs
from pagellm.worker.kv_cache import KVCache, KVCacheSpec


@dataclass
class RaggedStep:
    """A proposer forward's inputs: some tokens of some rows, against the target's blocks."""
    input_ids: torch.Tensor         # [T] int64
    positions: torch.Tensor         # [T] int64
    metadata: AttentionMetadata
    last_index: np.ndarray          # [num_rows] flat index of each row's last token
    last_position: np.ndarray       # [num_rows] position of each row's last token


def ragged_step(batch: InputBatch, rows: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                input_ids, device: torch.device) -> RaggedStep:
    """Row ``rows[i]`` runs ``counts[i]`` (>= 1) tokens at positions ``starts[i]`` on, whose
    ids are ``input_ids`` ([sum(counts)], numpy or a device tensor), attending to its
    positions before them. Slots come from the batch's block tables (every position must lie
    in an allocated block: an internal invariant, asserted)."""
    block_size = batch.block_size
    query_start_loc = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=query_start_loc[1:])
    num_tokens = int(query_start_loc[-1])
    token_rows = np.repeat(rows, counts)                                       # [T]
    positions = np.arange(num_tokens) - np.repeat(query_start_loc[:-1] - starts, counts)
    assert (positions // block_size < batch.num_blocks[token_rows]).all(), \
        "a proposer position outside the request's allocated blocks"
    seq_lens = starts + counts
    max_blocks = int(batch.num_blocks[rows].max())
    slot_mapping = (batch.block_table[token_rows, positions // block_size].astype(np.int64)
                    * block_size + positions % block_size)
    metadata = AttentionMetadata(
        num_reqs=len(rows), num_tokens=num_tokens, block_size=block_size,
        query_start_loc=_to(query_start_loc.astype(np.int32), device),
        seq_lens=_to(seq_lens.astype(np.int32), device),
        block_tables=_to(batch.block_table[rows, :max_blocks], device),
        slot_mapping=_to(slot_mapping, device), query_start_loc_cpu=query_start_loc.tolist(),
        seq_lens_cpu=seq_lens.tolist(), max_query_len=int(counts.max()),
        max_seq_len=int(seq_lens.max()))
    if isinstance(input_ids, np.ndarray):
        input_ids = _to(input_ids.astype(np.int64), device)
    return RaggedStep(input_ids, _to(positions, device), metadata, query_start_loc[1:] - 1,
                      seq_lens - 1)


class ModelProposer(ABC):
    """What the draft-model and EAGLE proposers share: their KV cache, how many drafts each
    request may get, and ``propose`` (catch up, first drafts, the batched draft loop).
    Subclasses implement the three model-specific steps: ``catch_up``, ``first_drafts`` and
    ``next_drafts``."""

    def __init__(self, model: nn.Module, num_speculative_tokens: int, max_model_len: int,
                 device: torch.device):
        self.model = model
        self.k = num_speculative_tokens
        self.max_model_len = max_model_len
        self.device = device
        self.kv_cache: KVCache | None = None
        """The proposer's own KV tensors (same block ids as the target's; bound by the worker)."""
        self.num_forwards = 0
        """Proposer forward passes since start."""

    def kv_cache_spec(self, block_size: int, dtype: torch.dtype) -> KVCacheSpec:
        """The proposer's cache layout per block (its layers, KV heads, head_dim)."""
        num_layers, num_kv_heads, head_dim = self.kv_layout()
        return KVCacheSpec(num_layers, block_size, num_kv_heads, head_dim, dtype)

    def kv_layout(self) -> tuple[int, int, int]:
        return self.model.num_layers, self.model.num_kv_heads, self.model.head_dim

    def bind_kv_cache(self, kv_cache: KVCache) -> None:
        self.kv_cache = kv_cache

    def num_drafts(self, batch: InputBatch, rows: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """[S] drafts each sampling row (after this step's tokens) may get: k, cut so the next
        step stays within max_model_len and max_tokens; 0 where not ``allowed``."""
        num_tokens = batch.num_tokens[rows]
        room = np.minimum(self.k, self.max_model_len - num_tokens - 1)
        for index, row in enumerate(rows.tolist()):
            max_tokens = batch.sampling_params[row].max_tokens
            if max_tokens is not None:
                num_output = num_tokens[index] - batch.num_prompt_tokens[row]
                room[index] = min(room[index], max_tokens - num_output - 1)
        return np.where(allowed, np.maximum(room, 0), 0)

    def propose(self, batch: InputBatch, inputs: StepInputs, hidden: torch.Tensor,
                sample_index: np.ndarray, allowed: np.ndarray) -> list[list[int]]:
        """After a verified step (``batch`` holds its accepted tokens): keep the proposer's
        K/V in step with the target's (``catch_up``), then draft. ``hidden``: the target's
        step output [num_tokens, hidden]; ``sample_index``: [S] indices into the step's
        requests that sampled; ``allowed``: [S] bool. Returns S lists of drafts."""
        num_drafts = np.zeros(len(sample_index), dtype=np.int64)
        if len(sample_index):
            num_drafts = self.num_drafts(batch, inputs.rows[sample_index], allowed)
        step, out = self.catch_up(batch, inputs, hidden, sample_index, num_drafts)
        self.num_forwards += 1
        proposals: list[list[int]] = [[] for _ in range(len(sample_index))]
        proposing = np.flatnonzero(num_drafts > 0)
        if not len(proposing):
            return proposals
        last = sample_index[proposing]                  # [P] rows of the catch-up step
        first, carry = self.first_drafts(out, _to(step.last_index[last], self.device))
        prop_rows = inputs.rows[last]
        base = step.last_position[last]                 # the last position the catch-up ran

        def step_fn(active: np.ndarray, j: int, previous: torch.Tensor) -> torch.Tensor:
            ones = np.ones(len(active), dtype=np.int64)
            decode = ragged_step(batch, prop_rows[active], base[active] + j, ones, previous,
                                 self.device)
            return self.next_drafts(decode, active, carry)

        drafted = self.draft_loop(first, num_drafts[proposing], step_fn)
        for index, draft in zip(proposing.tolist(), drafted):
            proposals[index] = draft
        return proposals

    @abstractmethod
    def catch_up(self, batch: InputBatch, inputs: StepInputs, hidden: torch.Tensor,
                 sample_index: np.ndarray, num_drafts: np.ndarray) -> tuple[RaggedStep, object]:
        """One forward over the positions the target just computed (each of the step's rows;
        the sampling rows ``sample_index`` with ``num_drafts`` [S]); returns its RaggedStep
        and the model's output."""
        raise NotImplementedError

    @abstractmethod
    def first_drafts(self, out, last: torch.Tensor) -> tuple[torch.Tensor, object]:
        """(the first drafts [P] from ``out`` at the flat indices ``last`` [P], what the
        later ``next_drafts`` calls need)."""
        raise NotImplementedError

    @abstractmethod
    def next_drafts(self, decode: RaggedStep, active: np.ndarray, carry) -> torch.Tensor:
        """The next drafts [A] of the rows ``active`` (indices into P), one token each
        (``decode``, fed their previous drafts); ``carry`` is what ``first_drafts`` gave."""
        raise NotImplementedError

    def draft_loop(self, first: torch.Tensor, num_drafts: np.ndarray, step_fn) -> list[list[int]]:
        """Drafts 2..m of each proposing row, one batched forward per draft position.
        ``first``: [P] the first drafts (device); ``num_drafts``: [P] m >= 1 each;
        ``step_fn(active, j, previous)`` runs draft position j (1-based, >= 1) for the rows
        ``active`` (indices into P) fed ``previous`` ([A] device ids) and returns their next
        drafts [A]. One host copy at the end. Returns P lists of m ids."""
        drafts = torch.full((len(num_drafts), int(num_drafts.max())), -1, dtype=torch.int64,
                            device=first.device)                     # [P, max m]
        drafts[:, 0] = first
        for j in range(1, int(num_drafts.max())):
            active = np.flatnonzero(num_drafts > j)
            index = _to(active, first.device)
            drafts[index, j] = step_fn(active, j, drafts[index, j - 1])
            self.num_forwards += 1
        host = drafts.cpu().tolist()
        return [ids[:m] for ids, m in zip(host, num_drafts.tolist())]


class DraftModelProposer(ModelProposer):
    """A smaller model of the same vocabulary drafts k tokens (see the module docstring)."""

    def catch_up(self, batch: InputBatch, inputs: StepInputs, hidden: torch.Tensor,
                 sample_index: np.ndarray, num_drafts: np.ndarray):
        """The step's positions, through the step's new token when the row drafts, else
        through its accepted tokens; fed the known token of each position."""
        rows, starts = inputs.rows, np.asarray(inputs.starts, dtype=np.int64)
        ends = starts + np.asarray(inputs.counts, dtype=np.int64)
        if len(sample_index):
            ends[sample_index] = batch.num_tokens[rows[sample_index]] - (num_drafts == 0)
        counts = ends - starts
        token_rows, positions = np.repeat(rows, counts), _positions(starts, counts)
        step = ragged_step(batch, rows, starts, counts, batch.token_ids[token_rows, positions],
                           self.device)
        return step, self.model(step.input_ids, step.positions, self.kv_cache.layers,
                                step.metadata)                       # [T, hidden]

    def first_drafts(self, out: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.model.compute_logits(out[last]).argmax(dim=-1), None        # [P]

    def next_drafts(self, decode: RaggedStep, active: np.ndarray, carry: None) -> torch.Tensor:
        hidden = self.model(decode.input_ids, decode.positions, self.kv_cache.layers,
                            decode.metadata)                         # [A, hidden]
        return self.model.compute_logits(hidden).argmax(dim=-1)


def _positions(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[sum(counts)] positions starts[i] .. starts[i] + counts[i] - 1, row after row."""
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - offsets + np.repeat(starts, counts)


def _to(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
