"""EngineCore: schedule -> execute -> update, one step at a time.

Owns the scheduler and the executor. It sees token ids only; text lives in the frontend.
"""

from __future__ import annotations

import logging

from dataclasses import dataclass

import torch

from pagellm.config.engine_args import EngineConfig
from pagellm.core.request import Request
from pagellm.core.scheduler import Scheduler
from pagellm.core.sched_output import EngineCoreOutput
from pagellm.distributed.executor import UniProcExecutor
from pagellm.platforms import Platform

logger = logging.getLogger(__name__)


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_steps: int


class EngineCore:
    def __init__(self, config: EngineConfig, platform: Platform, hf_config, dtype: torch.dtype):
        self.config = config
        self.executor = UniProcExecutor(config, platform, hf_config, dtype)
        num_blocks, num_swap_blocks = self.executor.determine_num_blocks()
        if config.scheduler.preemption_mode != "swap":
            num_swap_blocks = 0     # swap space is only reserved when it can be used
        self.executor.initialize_cache(num_blocks, num_swap_blocks)
        self.scheduler = Scheduler(config.scheduler, config.cache, config.model.max_model_len,
                                   num_blocks, num_swap_blocks)
        self.num_blocks = num_blocks
        self.num_steps = 0

    def add_request(self, request: Request) -> None:
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids) -> list[str]:
        return self.scheduler.abort_requests(request_ids)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> list[EngineCoreOutput]:
        """Run one scheduled batch; returns the new tokens and finishes of this step."""
        sched = self.scheduler.schedule()
        if sched.is_empty and not sched.finished_req_ids and not sched.blocks_to_swap_out:
            return []
        runner_output = self.executor.execute_model(sched)
        self.num_steps += 1
        return self.scheduler.update_from_output(sched, runner_output)

    def stats(self) -> EngineStats:
        scheduler = self.scheduler
        return EngineStats(
            num_running=len(scheduler.running), num_waiting=len(scheduler.waiting),
            kv_cache_usage=scheduler.kv_cache_usage(), num_preemptions=scheduler.num_preemptions,
            prefix_cache_queries=scheduler.kv.prefix_stats.queries,
            prefix_cache_hits=scheduler.kv.prefix_stats.hits, num_steps=self.num_steps)

    def shutdown(self) -> None:
        self.executor.shutdown()


