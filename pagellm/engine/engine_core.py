"""EngineCore: schedule -> execute -> update, one step at a time.

Owns the scheduler and the executor. It sees token ids only; text lives in the frontend.
Under pipeline parallelism or async scheduling (``executor.max_concurrent_batches`` > 1) it
keeps a batch queue (vLLM's ``step_with_batch_queue``): a step schedules and sends a new batch
while earlier ones are still running, and only waits for the oldest when the queue is full or
nothing else can be scheduled, so every stage (or, with async scheduling, the one GPU) has
work while the host schedules, prepares inputs and processes outputs. Under async scheduling
a step whose constrained requests sample gets its grammar bitmask after its forward is
launched (``_execute_with_late_bitmask``): the host's grammar work overlaps the forward.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable

import torch

from pagellm.config.engine_args import EngineConfig
from pagellm.core.request import Request
from pagellm.core.stats import EngineStats
from pagellm.core.scheduler import Scheduler
from pagellm.core.sched_output import EngineCoreOutputs, ModelRunnerOutput
from pagellm.distributed.executor import make_executor
from pagellm.platforms import Platform, current_platform
from pagellm.structured_output.manager import StructuredOutputManager, make_backend

logger = logging.getLogger(__name__)

FAULT_INJECT_ENV = "PAGELLM_FAULT_INJECT_STEP"
"""Test-only: ``PAGELLM_FAULT_INJECT_STEP=N`` makes the N-th forward pass of every EngineCore
built while it is set raise ``InjectedFault`` (how the tests kill an engine-core process)."""


SLOW_STEP_ENV = "PAGELLM_FAULT_INJECT_STEP_DELAY_S"
"""Test-only: ``PAGELLM_FAULT_INJECT_STEP_DELAY_S=X`` sleeps X seconds before every forward
pass, so a test can hold a request in flight (for the shutdown-drain tests)."""


class InjectedFault(RuntimeError):
    """The failure ``PAGELLM_FAULT_INJECT_STEP`` asks for; never raised in normal runs."""


def model_dtype(platform: Platform, config: EngineConfig, hf_config) -> torch.dtype:
    """The dtype the model runs in: the configured one, or the checkpoint's under 'auto'."""
    # ``dtype`` first: transformers >= 4.56 warns on every read of the deprecated
    # ``torch_dtype`` attribute; configs from older releases only have ``torch_dtype``.
    checkpoint_dtype = getattr(hf_config, "dtype", None)
    if checkpoint_dtype is None and "torch_dtype" in getattr(hf_config, "__dict__", {}):
        checkpoint_dtype = hf_config.__dict__["torch_dtype"]
    if isinstance(checkpoint_dtype, str):
        checkpoint_dtype = getattr(torch, checkpoint_dtype, None)
    return platform.resolve_dtype(config.model.dtype, checkpoint_dtype)


class EngineCore:
    def __init__(self, config: EngineConfig, platform: Platform, hf_config, dtype: torch.dtype):
        self.config = config
        self.executor = make_executor(config, platform, hf_config, dtype)
        num_blocks, num_swap_blocks = self.executor.determine_num_blocks()
        if config.scheduler.preemption_mode != "swap":
            num_swap_blocks = 0     # swap space is only reserved when it can be used
        self.executor.initialize_cache(num_blocks, num_swap_blocks)
        self.batch_queue_size = getattr(self.executor, "max_concurrent_batches", 1)
        """Batches in flight at most (1: no batch queue, each step waits for its output)."""
        self.batch_queue: deque = deque()
        """(SchedulerOutput, StepFuture) of the batches in flight, oldest first."""
        self.max_batches_in_flight = 0
        """The most batches that were in flight at once (1 without pipeline parallelism)."""
        self.structured_output_manager = make_structured_output_manager(
            config, self.executor.vocab_size)
        self.scheduler = Scheduler(config.scheduler, config.cache, config.model.max_model_len,
                                   num_blocks, num_swap_blocks, self.batch_queue_size,
                                   self.structured_output_manager,
                                   bool(config.scheduler.async_scheduling),
                                   config.speculative.num_spec_tokens,
                                   config.lora.max_loras if config.lora.enable_lora else 0,
                                   config.speculative.num_lookahead_tokens,
                                   config.speculative.method in ("eagle", "eagle3"),
                                   config.speculative.adaptive)
        self.num_blocks = num_blocks
        self.num_swap_blocks = num_swap_blocks
        self.num_steps = 0
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.last_step_num_tokens = 0
        """Tokens (prompt + generated) the last forward pass ran."""
        self.on_scheduled: Callable[[], None] | None = None
        """Called after each step is scheduled, before its forward pass (the engine-core
        process pushes the new gauges from here, so they show during a long step)."""
        self._fault_step = int(os.environ.get(FAULT_INJECT_ENV) or 0)   # test-only, 0 = off
        self._step_delay_s = float(os.environ.get(SLOW_STEP_ENV) or 0)  # test-only, 0 = off

    def add_request(self, request: Request) -> None:
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids) -> list[str]:
        return self.scheduler.abort_requests(request_ids)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> EngineCoreOutputs:
        """Run one scheduled batch; returns the new tokens and finishes of this step (one
        columnar ``EngineCoreOutputs``, empty when nothing came back)."""
        if self.batch_queue_size > 1:
            return self._step_with_batch_queue()
        sched = self.scheduler.schedule()
        if not self._has_work(sched):
            self._wait_for_grammars()
            return EngineCoreOutputs()
        self._before_execute(sched)
        runner_output = self.executor.execute_model(sched)
        return self._after_execute(sched, runner_output)

    def _step_with_batch_queue(self) -> EngineCoreOutputs:
        """Send a new batch when the queue has room and something can be scheduled; return
        at once while the queue is not full, else wait for the oldest batch and return its
        outputs. Every SchedulerOutput goes back to the scheduler, in order."""
        queue = self.batch_queue
        if queue and self.scheduler.async_scheduling and (
                self.scheduler.has_constrained_running() or self.scheduler.waits_for_drafts()):
            # with speculation, a grammar's next bitmask, or the next drafts (they follow
            # the request's last token), need the token in flight: finish that step first,
            # so those requests still advance every step (without the overlap); without
            # speculation the bitmask comes late instead (_execute_with_late_bitmask)
            return self._finish_oldest_batch()
        if len(queue) < self.batch_queue_size:
            sched = self.scheduler.schedule()
            if self._has_work(sched):
                self._before_execute(sched)
                if sched.has_structured_output_requests:
                    return self._execute_with_late_bitmask(sched)
                queue.append((sched, self.executor.execute_model(sched, non_block=True)))
                self.max_batches_in_flight = max(self.max_batches_in_flight, len(queue))
                if len(queue) < self.batch_queue_size and not sched.is_empty:
                    return EngineCoreOutputs()
            else:
                # nothing new to run (every request is in flight): the step still counts
                self.scheduler.update_from_output(sched, ModelRunnerOutput([], []))
                if not queue:
                    self._wait_for_grammars()
        if not queue:
            return EngineCoreOutputs()
        return self._finish_oldest_batch()

    def _execute_with_late_bitmask(self, sched) -> EngineCoreOutputs:
        """Async scheduling, constrained requests sample in ``sched`` (vLLM's
        execute_model / sample_tokens split): launch its forward, then, while it runs, wait
        for the step in flight, let its tokens advance the matchers, build ``sched``'s
        bitmask and hand it to the runner, which masks and samples right after the forward.
        Returns the outputs of the step in flight (none if there was none)."""
        self.executor.execute_model(sched, non_block=True)
        self.max_batches_in_flight = max(self.max_batches_in_flight, len(self.batch_queue) + 1)
        outputs = self._finish_oldest_batch() if self.batch_queue else EngineCoreOutputs()
        grammar_output = self.scheduler.get_grammar_bitmask(sched)
        self.batch_queue.append((sched, self.executor.sample_tokens(grammar_output,
                                                                    non_block=True)))
        return outputs

    def _finish_oldest_batch(self) -> EngineCoreOutputs:
        """Wait for the oldest batch in flight and hand its output to the scheduler."""
        sched, future = self.batch_queue.popleft()
        return self._after_execute(sched, future.result())

    def _wait_for_grammars(self) -> None:
        """Nothing could run: if requests wait for their grammar, block briefly on the
        compiles instead of spinning the engine loop (new input is read within 10 ms)."""
        if self.scheduler.waiting_for_fsm:
            self.structured_output_manager.wait_for_compiles(self.scheduler.waiting_for_fsm,
                                                             timeout_s=0.01)

    @staticmethod
    def _has_work(sched) -> bool:
        """Whether the workers must see ``sched``: tokens to run, or requests to forget
        (finished or preempted: a request that preempted itself leaves a step with no
        tokens, and the runner must still drop its row) or blocks to swap out."""
        return not (sched.is_empty and not sched.finished_req_ids and not sched.preempted_req_ids
                    and not sched.blocks_to_swap_out)

    def _before_execute(self, sched) -> None:
        self._count_prompt_tokens(sched)
        if self.on_scheduled is not None:
            self.on_scheduled()
        if self._fault_step and self.num_steps + 1 == self._fault_step:
            raise InjectedFault(f"{FAULT_INJECT_ENV}={self._fault_step}: forward pass "
                                f"{self._fault_step} fails on purpose")
        if self._step_delay_s:
            time.sleep(self._step_delay_s)

    def _after_execute(self, sched, runner_output) -> EngineCoreOutputs:
        self.num_steps += 1
        self.last_step_num_tokens = sched.total_num_scheduled_tokens
        self.num_generation_tokens += runner_output.num_tokens
        return self.scheduler.update_from_output(sched, runner_output)

    def _count_prompt_tokens(self, sched) -> None:
        """Count each prompt once, in the step that samples its first token (like vLLM)."""
        requests = self.scheduler.requests
        for request_id in sched.num_scheduled_tokens:
            request = requests[request_id]
            if request.output_token_ids:
                continue        # decoding (the common case): counted when its prompt ended
            # async scheduling: a later step may be scheduled before the first token is back
            if (request.num_computed_tokens >= request.num_prompt_tokens
                    and request.num_output_placeholders <= 1):
                self.num_prompt_tokens += request.num_prompt_tokens

    def stats(self) -> EngineStats:
        scheduler = self.scheduler
        spec = scheduler.spec_stats
        return EngineStats(
            num_running=len(scheduler.running), num_waiting=len(scheduler.waiting),
            kv_cache_usage=scheduler.kv_cache_usage(), num_preemptions=scheduler.num_preemptions,
            prefix_cache_queries=scheduler.kv.prefix_stats.queries,
            prefix_cache_hits=scheduler.kv.prefix_stats.hits, num_steps=self.num_steps,
            prompt_tokens=self.num_prompt_tokens, generation_tokens=self.num_generation_tokens,
            spec_decode_num_drafts=spec.num_drafts,
            spec_decode_num_draft_tokens=spec.num_draft_tokens,
            spec_decode_num_accepted_tokens=spec.num_accepted_tokens,
            spec_decode_num_accepted_tokens_per_pos=list(spec.num_accepted_tokens_per_pos),
            running_lora_adapters=_lora_names(scheduler.running),
            waiting_lora_adapters=_lora_names(scheduler.waiting))

    def shutdown(self) -> None:
        self.executor.shutdown()
        if self.structured_output_manager is not None:
            self.structured_output_manager.shutdown()


def _lora_names(requests) -> list[str]:
    """Sorted names of the adapters the requests use (empty without LoRA)."""
    return sorted({r.lora_request.lora_name for r in requests if r.lora_request is not None})


def make_structured_output_manager(config: EngineConfig,
                                   vocab_size: int) -> StructuredOutputManager | None:
    """The grammar manager (None under skip_tokenizer_init: there is no tokenizer to compile
    with, and the input processor refuses constrained requests). The tokenizer is loaded on
    the first constrained request, in a compile thread."""
    if config.model.skip_tokenizer_init:
        return None
    from pagellm.engine.tokenizer import load_tokenizer

    tokenizer_path = config.model.tokenizer or config.model.model
    backend = make_backend(config.structured_outputs.structured_outputs_backend,
                           lambda: load_tokenizer(tokenizer_path), vocab_size)
    return StructuredOutputManager(backend, vocab_size)


def make_engine_core(config: EngineConfig, hf_config) -> EngineCore:
    """An EngineCore on the configured device, in the model's dtype."""
    platform = current_platform(config.parallel.device)
    return EngineCore(config, platform, hf_config, model_dtype(platform, config, hf_config))
