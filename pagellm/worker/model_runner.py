"""The model runner: request states -> one flattened batch -> forward -> sample.

The same code runs on CPU and CUDA; device specifics come from the platform and the
attention backend. One device-to-host copy of the sampled ids (and logprobs) per step.
"""

from __future__ import annotations

import torch

from pagellm.core.sched_output import ModelRunnerOutput, SchedulerOutput, TopLogprobs
from pagellm.layers.sampler import Sampler, SamplingMetadata
from pagellm.ops.sampling import compute_logprobs_topk, host_to_device
from pagellm.platforms import Platform
from pagellm.worker.input_batch import RequestState, RequestStates, StepInputs
from pagellm.worker.kv_cache import KVCache


class ModelRunner:
    def __init__(self, model: torch.nn.Module, platform: Platform, block_size: int,
                 max_num_logprobs: int, seed: int = 0):
        self.model = model
        self.platform = platform
        self.device = platform.device
        self.block_size = block_size
        self.max_num_logprobs = max_num_logprobs
        self.vocab_size = model.vocab_size
        self.sampler = Sampler()
        self.requests = RequestStates()
        self.generators: dict[str, torch.Generator] = {}   # seeded requests, alive until finished
        self.kv_cache: KVCache | None = None
        self.cuda_graphs = None      # CudaGraphRunner once captured (CUDA, not enforce_eager)
        torch.manual_seed(seed)

    def bind_kv_cache(self, kv_cache: KVCache) -> None:
        self.kv_cache = kv_cache

    @torch.inference_mode()
    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        for request_id in sched.finished_req_ids:
            self.generators.pop(request_id, None)
        self.requests.apply(sched)
        self.kv_cache.swap_out(sched.blocks_to_swap_out)
        self.kv_cache.swap_in(sched.blocks_to_swap_in)
        if sched.total_num_scheduled_tokens == 0:
            return ModelRunnerOutput([], [])
        inputs = self.requests.build_step_inputs(sched, self.block_size, self.device)
        if self.cuda_graphs is not None and self.cuda_graphs.can_run(inputs.attn_metadata):
            hidden = self.cuda_graphs.run(inputs.input_ids, inputs.positions, inputs.attn_metadata)
        else:
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_cache.layers,
                                inputs.attn_metadata)              # [num_tokens, hidden]
        prompt_logprobs = self._prompt_logprobs(inputs, hidden)
        if not inputs.sample_rows:
            return ModelRunnerOutput([], [], prompt_logprobs=prompt_logprobs)
        logits = self.model.compute_logits(hidden[inputs.logits_indices])  # [num_samples, vocab]
        states = [self.requests.states[inputs.request_ids[r]] for r in inputs.sample_rows]
        out = self.sampler(logits, self._sampling_metadata(states))
        sampled = out.sampled_token_ids.tolist()                   # the step's one host copy
        for state, token_id in zip(states, sampled):
            state.token_ids.append(token_id)
        logprobs = None
        if out.logprobs is not None:
            logprobs = TopLogprobs(out.logprob_token_ids.tolist(), out.logprobs.tolist(),
                                   out.sampled_token_ranks.tolist())
        return ModelRunnerOutput([s.request_id for s in states], sampled, logprobs,
                                 prompt_logprobs)

    def _sampling_metadata(self, states: list[RequestState]) -> SamplingMetadata:
        params = [s.sampling_params for s in states]
        device = self.device
        generators = {}
        for row, state in enumerate(states):
            seed = state.sampling_params.seed
            if seed is not None and not state.sampling_params.greedy:
                if state.request_id not in self.generators:
                    generator = torch.Generator(device=device)
                    generator.manual_seed(seed)
                    self.generators[state.request_id] = generator
                generators[row] = self.generators[state.request_id]
        use_penalties = any(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
                            for p in params)
        min_tokens_mask = [
            (row, sorted(set(p.stop_token_ids) | p.all_stop_token_ids))
            for row, (p, s) in enumerate(zip(params, states))
            if len(s.output_token_ids) < p.min_tokens]
        logprob_counts = [p.logprobs for p in params if p.logprobs is not None]
        return SamplingMetadata(
            temperature=host_to_device([p.temperature for p in params], torch.float32, device),
            all_greedy=all(p.greedy for p in params),
            all_random=not any(p.greedy for p in params),
            top_k=_optional([p.top_k for p in params], 0, torch.int64, device),
            top_p=_optional([p.top_p for p in params], 1.0, torch.float32, device),
            min_p=_optional([p.min_p for p in params], 0.0, torch.float32, device),
            generators=generators,
            presence_penalties=_tensor_if([p.presence_penalty for p in params], use_penalties, device),
            frequency_penalties=_tensor_if([p.frequency_penalty for p in params], use_penalties, device),
            repetition_penalties=_tensor_if([p.repetition_penalty for p in params], use_penalties, device),
            prompt_token_ids=self._padded_prompts(states) if use_penalties else None,
            output_token_ids=[s.output_token_ids for s in states],
            logit_bias=[p.logit_bias for p in params],
            min_tokens_mask=min_tokens_mask,
            max_num_logprobs=max(logprob_counts) if logprob_counts else None)

    def _padded_prompts(self, states: list[RequestState]) -> torch.Tensor:
        width = max(s.num_prompt_tokens for s in states)
        padded = torch.full((len(states), width), self.vocab_size, dtype=torch.int64)
        for row, state in enumerate(states):
            padded[row, :state.num_prompt_tokens] = torch.tensor(
                state.token_ids[:state.num_prompt_tokens], dtype=torch.int64)
        return padded.to(self.device, non_blocking=True)             # [num_samples, max_prompt]

    def _prompt_logprobs(self, inputs: StepInputs, hidden: torch.Tensor) -> dict:
        """Logprobs of prompt tokens 1..P-1 covered by this step's chunk of each request that
        asked for them: the hidden state at position p scores prompt token p + 1."""
        result = {}
        for row, request_id in enumerate(inputs.request_ids):
            state = self.requests.states[request_id]
            k = state.sampling_params.prompt_logprobs
            start, count = inputs.starts[row], inputs.counts[row]
            end = min(start + count, state.num_prompt_tokens - 1)
            if k is None or start >= end:
                continue
            offset = inputs.attn_metadata.query_start_loc_cpu[row]
            logits = self.model.compute_logits(hidden[offset:offset + end - start])  # [n, vocab]
            targets = torch.tensor(state.token_ids[start + 1:end + 1], device=self.device)
            ids, values, ranks = compute_logprobs_topk(torch.log_softmax(logits.float(), dim=-1), targets, k)
            result[request_id] = (start + 1, TopLogprobs(ids.tolist(), values.tolist(),
                                                         ranks.tolist()))
        return result


def _optional(values: list, neutral, dtype: torch.dtype, device: torch.device):
    if all(v == neutral for v in values):
        return None
    return host_to_device(values, dtype, device)


def _tensor_if(values: list[float], wanted: bool, device: torch.device):
    return host_to_device(values, torch.float32, device) if wanted else None
