"""Small constructors for core tests: requests, schedulers, and a runner stand-in."""

from __future__ import annotations

from pagellm.config.cache import CacheConfig
from pagellm.config.scheduler import SchedulerConfig
from pagellm.core.request import Request
from pagellm.core.sched_output import ModelRunnerOutput, SchedulerOutput
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
    """One engine step: schedule, run, update. Returns (scheduler output, engine outputs)."""
    output = scheduler.schedule()
    engine_outputs = scheduler.update_from_output(output, play_runner(scheduler, output, token_id))
    return output, engine_outputs
