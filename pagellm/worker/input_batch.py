"""The persistent input batch: per-request state in row-indexed host arrays, kept across
steps and updated from the scheduler's diffs, so a step's inputs are a few vectorised
gathers instead of per-request Python work.

Contract: ``apply(sched)`` is the only mutation from the scheduler's side (forget finished
and preempted requests, add new ones, extend block tables, set computed counts, and under
pipeline parallelism write the tokens sampled on the last stage); the runner counts a sampled token in ``num_tokens`` at launch and writes its value when the
step resolves (async scheduling: one step later). ``build_step_inputs`` and
``sampling_arrays`` only read. On CUDA the step's input tensors go through persistent pinned
host and device buffers (``StagingBuffers``: no new pinned tensor per step); a step's device
tensors are views valid for two steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagellm.core.sched_output import SchedulerOutput
from pagellm.layers.attention_metadata import AttentionMetadata
from pagellm.sampling_params import SamplingParams
from pagellm.worker.staging import StagingBuffers


@dataclass
class StepInputs:
    request_ids: list[str]                 # batch order
    rows: np.ndarray                       # [num_reqs] persistent row of each request
    input_ids: torch.Tensor                # [num_tokens] int64
    positions: torch.Tensor                # [num_tokens] int64
    attn_metadata: AttentionMetadata
    sample_rows: list[int]                 # batch rows that sample a token this step
    logits_indices: torch.Tensor           # [len(sample_rows)] flat index of each one's last token
    starts: list[int]                      # num_computed_tokens per batch row before the step
    counts: list[int]                      # tokens scheduled per batch row
    token_rows: np.ndarray                 # [num_tokens] persistent row of each input token
    token_positions: np.ndarray            # [num_tokens] position of each input token


class InputBatch:
    def __init__(self, max_num_reqs: int, max_model_len: int, block_size: int):
        self.max_num_reqs = max_num_reqs
        self.block_size = block_size
        max_blocks = -(-max_model_len // block_size)
        self.token_ids = np.zeros((max_num_reqs, max_model_len), dtype=np.int32)
        self.num_tokens = np.zeros(max_num_reqs, dtype=np.int64)
        self.num_prompt_tokens = np.zeros(max_num_reqs, dtype=np.int64)
        self.num_computed = np.zeros(max_num_reqs, dtype=np.int64)
        self.block_table = np.zeros((max_num_reqs, max_blocks), dtype=np.int32)
        self.num_blocks = np.zeros(max_num_reqs, dtype=np.int64)
        self.sampling_params: list[SamplingParams | None] = [None] * max_num_reqs
        self.row_of: dict[str, int] = {}
        self.free_rows = list(range(max_num_reqs - 1, -1, -1))
        self.generation = np.zeros(max_num_reqs, dtype=np.int64)
        """Bumped whenever a row is freed or taken, so a late token (async scheduling) of a
        row's former request is recognised and dropped."""
        # per-row sampling values, written once when a request joins
        self.temperature = np.zeros(max_num_reqs, dtype=np.float32)
        self.top_k = np.zeros(max_num_reqs, dtype=np.int64)
        self.top_p = np.ones(max_num_reqs, dtype=np.float32)
        self.min_p = np.zeros(max_num_reqs, dtype=np.float32)
        self.penalties = np.zeros((max_num_reqs, 3), dtype=np.float32)  # presence, frequency, repetition
        self.special = np.zeros(max_num_reqs, dtype=bool)  # needs per-row work: penalties, bias, min_tokens, logprobs
        self.seeded = np.zeros(max_num_reqs, dtype=bool)   # random sampling with its own generator
        self.lora_int_id = np.zeros(max_num_reqs, dtype=np.int64)  # the row's adapter, 0 = base
        self.staging: StagingBuffers | None = None
        """The persistent host/device buffers of the step inputs (made on the first step,
        for its device)."""

    # ---- state updates --------------------------------------------------------------------

    def apply(self, sched: SchedulerOutput) -> None:
        for request_id in sched.finished_req_ids | sched.preempted_req_ids:
            row = self.row_of.pop(request_id, None)
            if row is not None:
                self.sampling_params[row] = None
                self.lora_int_id[row] = 0
                self.generation[row] += 1
                self.free_rows.append(row)
        for new in sched.scheduled_new_reqs:
            row = self.free_rows.pop()
            self.generation[row] += 1
            self.row_of[new.request_id] = row
            n = len(new.token_ids)
            self.token_ids[row, :n] = new.token_ids
            self.num_tokens[row] = n
            self.num_prompt_tokens[row] = new.num_prompt_tokens
            self.num_computed[row] = new.num_computed_tokens
            self.block_table[row, :len(new.block_ids)] = new.block_ids
            self.num_blocks[row] = len(new.block_ids)
            self._set_sampling(row, new.sampling_params)
            self.lora_int_id[row] = new.lora_request.lora_int_id if new.lora_request else 0
        self._apply_cached(sched.scheduled_cached_reqs)

    def _apply_cached(self, cached) -> None:
        """The running requests' columns (``CachedRequestData``): computed counts in one
        gather, block ids for the few that got new blocks, and under pipeline parallelism
        the tokens sampled on the last stage."""
        if not cached.req_ids:
            return
        row_of = self.row_of
        rows = [row_of[request_id] for request_id in cached.req_ids]
        self.num_computed[rows] = cached.num_computed_tokens
        for index, block_ids in enumerate(cached.new_block_ids):
            if block_ids:
                row = rows[index]
                start = self.num_blocks[row]
                self.block_table[row, start:start + len(block_ids)] = block_ids
                self.num_blocks[row] = start + len(block_ids)
        for row, num_computed, token_ids in zip(rows, cached.num_computed_tokens,
                                                cached.new_token_ids):
            if token_ids:       # pipeline parallelism; the last stage has them already
                start = max(num_computed, int(self.num_prompt_tokens[row]))
                end = start + len(token_ids)
                self.token_ids[row, start:end] = token_ids
                self.num_tokens[row] = max(self.num_tokens[row], end)

    def _set_sampling(self, row: int, params: SamplingParams) -> None:
        self.sampling_params[row] = params
        self.temperature[row] = params.temperature
        self.top_k[row] = params.top_k
        self.top_p[row] = params.top_p
        self.min_p[row] = params.min_p
        self.penalties[row] = (params.presence_penalty, params.frequency_penalty,
                               params.repetition_penalty)
        self.seeded[row] = params.seed is not None and not params.greedy
        self.special[row] = bool(
            params.presence_penalty or params.frequency_penalty or params.repetition_penalty != 1.0
            or params.logit_bias or params.min_tokens or params.logprobs is not None)

    def append_sampled(self, rows: np.ndarray, token_ids: list[int]) -> None:
        """Append known tokens to the rows (the runner itself counts at launch and writes at
        resolve; this is the one-call form)."""
        self.token_ids[rows, self.num_tokens[rows]] = token_ids
        self.num_tokens[rows] += 1

    # ---- reads ------------------------------------------------------------------------------

    def output_token_ids(self, row: int) -> list[int]:
        return self.token_ids[row, self.num_prompt_tokens[row]:self.num_tokens[row]].tolist()

    def prompt_token_ids(self, row: int) -> np.ndarray:
        return self.token_ids[row, :self.num_prompt_tokens[row]]

    def build_step_inputs(self, sched: SchedulerOutput, device: torch.device,
                          num_spec: np.ndarray | None = None) -> StepInputs:
        """The step's flattened inputs. ``num_spec``: [num_reqs] draft tokens scheduled after
        each request's last token (speculative decoding; their ids are already written past
        ``num_tokens``); a request samples when its step ends at its last draft."""
        staging = self.staging
        if staging is None or staging.device != device:
            staging = self.staging = StagingBuffers(device)
        staging.begin_step()
        to = staging.to_device
        request_ids = list(sched.num_scheduled_tokens)
        rows = np.fromiter((self.row_of[r] for r in request_ids), dtype=np.int64,
                           count=len(request_ids))
        counts = np.fromiter(sched.num_scheduled_tokens.values(), dtype=np.int64,
                             count=len(request_ids))
        starts = self.num_computed[rows]
        query_start_loc = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=query_start_loc[1:])
        num_tokens = int(query_start_loc[-1])
        token_rows = np.repeat(rows, counts)                                   # [num_tokens]
        # position of each token: its request's start + its index within the request
        positions = np.arange(num_tokens) - np.repeat(query_start_loc[:-1] - starts, counts)
        input_ids = self.token_ids[token_rows, positions].astype(np.int64)
        seq_lens = starts + counts
        max_blocks = int(self.num_blocks[rows].max())
        block_tables = self.block_table[rows, :max_blocks]                    # [num_reqs, max_blocks]
        slot_mapping = (self.block_table[token_rows, positions // self.block_size].astype(np.int64)
                        * self.block_size + positions % self.block_size)
        last = self.num_tokens[rows] if num_spec is None else self.num_tokens[rows] + num_spec
        samples = np.nonzero(seq_lens == last)[0]
        metadata = AttentionMetadata(
            num_reqs=len(rows), num_tokens=num_tokens, block_size=self.block_size,
            query_start_loc=to("query_start_loc", query_start_loc.astype(np.int32)),
            seq_lens=to("seq_lens", seq_lens.astype(np.int32)),
            block_tables=to("block_tables", block_tables),
            slot_mapping=to("slot_mapping", slot_mapping),
            query_start_loc_cpu=query_start_loc.tolist(), seq_lens_cpu=seq_lens.tolist(),
            max_query_len=int(counts.max()), max_seq_len=int(seq_lens.max()))
        inputs = StepInputs(request_ids, rows, to("input_ids", input_ids),
                            to("positions", positions), metadata, samples.tolist(),
                            to("logits_indices", query_start_loc[1:][samples] - 1),
                            starts.tolist(), counts.tolist(), token_rows, positions)
        staging.end_step()
        return inputs

