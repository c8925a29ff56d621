"""Executors run the worker(s) for the engine core. Only the in-process one exists yet; the
multiprocess (tensor parallel) and Ray executors plug in behind the same methods."""

from __future__ import annotations

import torch

from pagellm.config.engine_args import EngineConfig
from pagellm.core.sched_output import ModelRunnerOutput, SchedulerOutput
from pagellm.platforms import Platform


class UniProcExecutor:
    """Rank 0 in the engine-core process."""

    def __init__(self, config: EngineConfig, platform: Platform, hf_config, dtype: torch.dtype):
        from pagellm.worker.worker import Worker

        self.worker = Worker(config, platform, hf_config, dtype)

    def determine_num_blocks(self) -> tuple[int, int]:
        return self.worker.determine_num_blocks()

    def initialize_cache(self, num_blocks: int, num_swap_blocks: int) -> None:
        self.worker.initialize_cache(num_blocks, num_swap_blocks)

    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        return self.worker.execute_model(sched)

    def shutdown(self) -> None:
        self.worker = None
