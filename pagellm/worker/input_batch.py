"""Per-request state kept by the runner across steps, and the flattened step inputs built
from it.

Contract: ``RequestStates.apply(sched)`` is the only mutation from the scheduler's side
(forget finished/preempted, add new, extend block tables); ``append_sampled`` records the
tokens the runner sampled. ``build_step_inputs`` reads and never mutates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pagellm.core.sched_output import SchedulerOutput
from pagellm.layers.attention_metadata import AttentionMetadata
from pagellm.sampling_params import SamplingParams


@dataclass(slots=True)
class RequestState:
    request_id: str
    token_ids: list[int]          # prompt + output, including tokens sampled by this runner
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]


@dataclass
class StepInputs:
    request_ids: list[str]                 # batch order
    input_ids: torch.Tensor                # [num_tokens] int64
    positions: torch.Tensor                # [num_tokens] int64
    attn_metadata: AttentionMetadata
    sample_rows: list[int]                 # batch rows that sample a token this step
    logits_indices: torch.Tensor           # [len(sample_rows)] flat index of each one's last token
    starts: list[int] = field(default_factory=list)    # num_computed_tokens per row before the step
    counts: list[int] = field(default_factory=list)    # tokens scheduled per row


class RequestStates:
    def __init__(self):
        self.states: dict[str, RequestState] = {}

    def apply(self, sched: SchedulerOutput) -> None:
        for request_id in sched.finished_req_ids | sched.preempted_req_ids:
            self.states.pop(request_id, None)
        for new in sched.scheduled_new_reqs:
            self.states[new.request_id] = RequestState(
                new.request_id, list(new.token_ids), new.num_prompt_tokens, new.sampling_params,
                list(new.block_ids), new.num_computed_tokens)
        for cached in sched.scheduled_cached_reqs:
            state = self.states[cached.request_id]
            state.block_ids.extend(cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens

    def build_step_inputs(self, sched: SchedulerOutput, block_size: int,
                          device: torch.device) -> StepInputs:
        request_ids = list(sched.num_scheduled_tokens)
        states = [self.states[r] for r in request_ids]
        counts = [sched.num_scheduled_tokens[r] for r in request_ids]
        starts = [s.num_computed_tokens for s in states]
        num_tokens = sum(counts)
        input_ids = np.empty(num_tokens, dtype=np.int64)
        positions = np.empty(num_tokens, dtype=np.int64)
        max_blocks = max(len(s.block_ids) for s in states)
        block_table = np.zeros((len(states), max_blocks), dtype=np.int32)
        query_start_loc = [0]
        sample_rows, logits_indices = [], []
        for row, (state, start, count) in enumerate(zip(states, starts, counts)):
            offset = query_start_loc[-1]
            input_ids[offset:offset + count] = state.token_ids[start:start + count]
            positions[offset:offset + count] = np.arange(start, start + count)
            block_table[row, :len(state.block_ids)] = state.block_ids
            query_start_loc.append(offset + count)
            if start + count == len(state.token_ids):
                sample_rows.append(row)
                logits_indices.append(offset + count - 1)
        seq_lens = [start + count for start, count in zip(starts, counts)]
        # slot of each new token: block_table[row, pos // block_size] * block_size + pos % block_size
        rows = np.repeat(np.arange(len(states)), counts)
        slot_mapping = block_table[rows, positions // block_size].astype(np.int64) * block_size \
            + positions % block_size
        metadata = AttentionMetadata(
            num_reqs=len(states), num_tokens=num_tokens, block_size=block_size,
            query_start_loc=_to(np.asarray(query_start_loc, dtype=np.int32), device),
            seq_lens=_to(np.asarray(seq_lens, dtype=np.int32), device),
            block_tables=_to(block_table, device),
            slot_mapping=_to(slot_mapping, device),
            query_start_loc_cpu=query_start_loc, seq_lens_cpu=seq_lens,
            max_query_len=max(counts), max_seq_len=max(seq_lens))
        return StepInputs(request_ids, _to(input_ids, device), _to(positions, device), metadata,
                          sample_rows, _to(np.asarray(logits_indices, dtype=np.int64), device),
                          starts, counts)


def _to(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
