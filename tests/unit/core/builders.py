"""Small constructors for core tests: requests, schedulers, and a runner stand-in."""

from __future__ import annotations

from dataclasses import dataclass

from pagellm.config.cache import CacheConfig
from pagellm.config.scheduler import SchedulerConfig
from pagellm.core.request import Request
from pagellm.core.sched_output import EngineCoreOutputs, ModelRunnerOutput, SchedulerOutput
from pagellm.core.scheduler import Scheduler
from pagellm.sampling_params import SamplingParams

EOS = 2


def make_request(request_id: str, prompt: list[int] | int, max_tokens: int = 16, *,
                 arrival_time: float = 0.0, priority: int = 0, group_id: str | None = None,
                 cache_salt: str | None = None, eos: bool = True, **params) -> Request:
    """A request; ``prompt`` is token ids or a length (tokens 100, 101, ...)."""
    if isinstance(prompt, int):
        prompt = list(range(100, 100 + prompt))
    sampling_params = SamplingParams(max_tokens=max_tokens, **params)
    if eos:
        sampling_params.all_stop_token_ids = {EOS, *sampling_params.stop_token_ids}
    return Request(request_id, prompt, sampling_params, max_tokens, eos_token_id=EOS if eos else None,
                   arrival_time=arrival_time, priority=priority, group_id=group_id,
                   cache_salt=cache_salt)


def make_scheduler(num_blocks: int = 64, block_size: int = 4, max_num_batched_tokens: int = 64,
                   max_num_seqs: int = 16, max_model_len: int = 256, num_swap_blocks: int = 0,
                   enable_prefix_caching: bool = True, max_concurrent_batches: int = 1,
                   **scheduler_options) -> Scheduler:
    scheduler_config = SchedulerConfig(max_num_batched_tokens=max_num_batched_tokens,
                                       max_num_seqs=max_num_seqs, **scheduler_options)
    cache_config = CacheConfig(block_size=block_size, enable_prefix_caching=enable_prefix_caching)
    return Scheduler(scheduler_config, cache_config, max_model_len, num_blocks, num_swap_blocks,
                     max_concurrent_batches)


def play_runner(scheduler: Scheduler, output: SchedulerOutput,
                token_id: int | dict[str, int] = 7) -> ModelRunnerOutput:
    """What the model runner would return: one sampled token for every scheduled request whose
    tokens are all computed after the step (partial prefill chunks sample nothing)."""
    req_ids, sampled = [], []
    for request_id in output.num_scheduled_tokens:
        request = scheduler.requests[request_id]
        if request.num_computed_tokens == request.num_tokens:
            req_ids.append(request_id)
            sampled.append(token_id if isinstance(token_id, int) else token_id.get(request_id, 7))
    return ModelRunnerOutput(req_ids=req_ids, sampled_token_ids=sampled)


def step(scheduler: Scheduler, token_id: int | dict[str, int] = 7):
    """One engine step: schedule, run, update. Returns (scheduler output, engine outputs
    per request, see ``unpack``)."""
    output = scheduler.schedule()
    engine_outputs = scheduler.update_from_output(output, play_runner(scheduler, output, token_id))
    return output, unpack(engine_outputs)


def runner_output(req_ids: list[str], tokens: list[list[int]], **fields) -> ModelRunnerOutput:
    """A runner output with several new tokens per request (speculative decoding)."""
    return ModelRunnerOutput(req_ids, [t for request_tokens in tokens for t in request_tokens],
                             [len(request_tokens) for request_tokens in tokens], **fields)


@dataclass
class OutputRow:
    """One request's part of a step's columnar ``EngineCoreOutputs`` (for assertions)."""
    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None
    stop_reason: int | str | None
    num_cached_tokens: int
    num_preemptions: int

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def unpack(outputs: EngineCoreOutputs) -> list[OutputRow]:
    offsets = outputs.token_offsets()
    return [OutputRow(request_id, outputs.new_token_ids[offsets[i]:offsets[i + 1]],
                      outputs.finish_reasons[i], outputs.stop_reasons[i],
                      outputs.num_cached_tokens[i], outputs.num_preemptions[i])
            for i, request_id in enumerate(outputs.req_ids)]


@dataclass
class CachedRow:
    """One running request's entry in a step's columnar ``CachedRequestData``."""
    request_id: str
    num_computed_tokens: int
    new_block_ids: list[int]
    new_token_ids: list[int]


def cached_rows(output: SchedulerOutput) -> list[CachedRow]:
    cached = output.scheduled_cached_reqs
    new_token_ids = cached.new_token_ids or [[] for _ in cached.req_ids]
    return [CachedRow(request_id, num_computed, blocks or [], tokens)
            for request_id, num_computed, blocks, tokens in zip(
                cached.req_ids, cached.num_computed_tokens, cached.new_block_ids, new_token_ids,
                strict=True)]
