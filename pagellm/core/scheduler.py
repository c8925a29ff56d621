"""The token-budget scheduler.

Each step decides how many new tokens of which requests to run, within
``max_num_batched_tokens`` and ``max_num_seqs``: running requests first (in admission order),
then waiting ones while budget is left. There is no prefill or decode phase; a request just
has ``num_computed_tokens`` of ``num_tokens``. When blocks run out, the lowest-priority running
request is preempted (recompute: drop its KV; swap: copy it to CPU swap space).

Structured outputs (``structured_output_manager``, see ``pagellm.structured_output.manager``):
a constrained request waits as ``WAITING_FOR_FSM`` while its grammar compiles off this loop;
the requests behind it are admitted meanwhile. Each step's SchedulerOutput carries the token
bitmask of the constrained requests that sample, computed here from their matchers, and
``update_from_output`` advances the matchers over the sampled tokens; a request whose grammar
has ended (a stop token accepted) finishes with "stop".

Contract: ``schedule`` mutates requests (status, ``num_computed_tokens`` advanced by what it
scheduled) and block tables; ``update_from_output`` appends sampled tokens and finishes
requests. Every finished or aborted request's blocks are freed at once.

Several batches in flight (``max_concurrent_batches`` > 1, pipeline parallelism, vLLM's batch
queue): ``schedule`` may be called again before the previous batches' outputs are back, and
every SchedulerOutput must reach ``update_from_output`` in the order it was scheduled. A
request in flight is neither scheduled again nor chosen for preemption until its batch's
output is back; an aborted one's output is dropped. Freeing an in-flight request's blocks
at once is safe: every stage runs the batches in order, so a later batch that reuses a block
writes it after the in-flight batch is done with it.

Async scheduling (``async_scheduling``, vLLM's): two batches in flight, and a request in
flight IS scheduled again. A step that ends at a request's last token will sample one, so
``schedule`` counts a placeholder for it (``Request.num_output_placeholders``) and the next
step already runs that token's position: the runner takes the token from the previous step's
sampled ids on the device. ``update_from_output`` turns the placeholder into the real token
and checks the stop conditions; a request that stopped there may have one more step in
flight, whose token is dropped. A request is not scheduled past max_tokens or max_model_len
counting its placeholders, so only a stop token or string can waste a step. A request under
a grammar (structured outputs) is scheduled every step too (``defers_grammar``, vLLM's split
of execute_model and sample_tokens): its next bitmask needs the token in flight accepted
first, so the step goes out without it (``has_structured_output_requests``) and the engine
core asks ``get_grammar_bitmask`` for it once the step before is back, while the step's
forward runs. With speculative decoding the bitmask is built at schedule time as in the sync
loop, and a constrained request waits for its token in flight instead.

Speculative decoding (``num_speculative_tokens`` > 0): the runner returns drafts per request
with each output (``Request.spec_token_ids``, proposed after ``Request.spec_base`` tokens). A
decode step (one token left to compute) schedules that token plus the drafts, cut to the
request's adaptive k and the step's draft budget (``_plan_drafts``,
``pagellm.core.spec_adaptive``), the token budget, max_tokens and max_model_len
(``SchedulerOutput.scheduled_spec_decode_tokens``); the KV
manager allocates slots for all of them (lookahead slots). ``update_from_output`` gets 1 +
accepted tokens per request, rolls ``num_computed_tokens`` back by the rejected drafts (their
slots stay allocated and are overwritten by the next step), appends the tokens one by one
and stops at the first that ends the request. Requests under a grammar never speculate.
With a draft model or EAGLE head (``num_lookahead_tokens`` = k) every allocation also
reserves k slots past the step, where the proposer writes its drafts' K/V.
With async scheduling drafts are scheduled only when fresh (proposed after the request's last
token, nothing of it in flight); a request whose verify step is in flight is not scheduled
again until its output is back (its number of new tokens is unknown until then), and
``waits_for_drafts`` tells the engine core when to wait for the step in flight instead.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from pagellm.config.cache import CacheConfig
from pagellm.config.scheduler import SchedulerConfig
from pagellm.core.kv_cache_manager import KVCacheManager
from pagellm.core.request import FINISH_REASONS, Request, RequestStatus
from pagellm.core.sched_output import (CachedRequestData, EngineCoreOutputs, GrammarOutput,
                                       ModelRunnerOutput, NewRequestData, SchedulerOutput)
from pagellm.core.spec_adaptive import best_num_drafts
from pagellm.core.stats import SpecDecodingStats

logger = logging.getLogger(__name__)

_FINISHED = RequestStatus.FINISHED_STOPPED      # statuses from here on are finished
_FINISHED_STOPPED = RequestStatus.FINISHED_STOPPED
_FINISHED_ERROR = RequestStatus.FINISHED_ERROR
_FINISH_REASON_OF = [FINISH_REASONS.get(status) for status in RequestStatus]
"""Indexed by a ``RequestStatus``: its finish reason, None for the unfinished ones."""


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig,
                 max_model_len: int, num_blocks: int, num_swap_blocks: int = 0,
                 max_concurrent_batches: int = 1, structured_output_manager=None,
                 async_scheduling: bool = False, num_speculative_tokens: int = 0,
                 max_loras: int = 0, num_lookahead_tokens: int = 0, use_eagle: bool = False,
                 spec_adaptive: dict | None = None):
        self.config = scheduler_config
        self.max_loras = max_loras
        """enable_lora: distinct adapters allowed among running requests (0 = LoRA off)."""
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = scheduler_config.max_num_batched_tokens or 8192
        self.block_size = cache_config.block_size
        self.kv = KVCacheManager(num_blocks, cache_config.block_size,
                                 cache_config.enable_prefix_caching, num_swap_blocks,
                                 num_lookahead_tokens, max_model_len, use_eagle)
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()    # to tell the runner next step
        self.preempted_req_ids: set[str] = set()
        self.num_preemptions = 0
        self.max_concurrent_batches = max_concurrent_batches
        self.async_scheduling = async_scheduling
        if num_speculative_tokens and max_concurrent_batches > 1 and not async_scheduling:
            raise ValueError("speculative decoding does not combine with pipeline parallelism")
        self.num_speculative_tokens = num_speculative_tokens
        spec_adaptive = spec_adaptive or {}
        self.spec_adaptive = spec_adaptive if spec_adaptive.get("adaptive") else None
        """Adaptive k settings (``pagellm.config.spec_adaptive``); None: every request
        verifies all its drafts."""
        self.max_num_draft_tokens_per_step = spec_adaptive.get("max_num_draft_tokens_per_step")
        self._draft_caps: dict[str, int] = {}
        """This step's drafts allowed per request (``_plan_drafts``)."""
        self._drafts_in_flight: set[str] = set()
        """Async scheduling: requests whose step in flight verifies drafts (their new token
        count is unknown until it is back, so they are not scheduled again before)."""
        self.spec_stats = SpecDecodingStats.new(num_speculative_tokens)
        """Speculative decoding counters since start (drafts, draft and accepted tokens)."""
        self.pipelined = max_concurrent_batches > 1 and not async_scheduling
        """Batches may be scheduled before earlier ones' outputs are back (see the module)."""
        self._step_requests: dict[int, dict[str, Request]] = {}
        """Async only: id(SchedulerOutput) -> the request objects it scheduled (an id may be
        reused after an abort while a step is in flight)."""
        self.in_flight: dict[str, Request] = {}
        """Pipelined only: requests of the batches whose outputs are not back yet."""
        # scheduler_delay_factor bookkeeping (vLLM's _passed_delay)
        self._prev_step_time = 0.0
        self._prev_step_had_prompt = False
        self._last_prompt_latency = 0.0
        self.structured_output_manager = structured_output_manager
        self._late_grammar: dict[int, list[Request]] = {}
        """``defers_grammar``: id(SchedulerOutput) -> its constrained requests that sample,
        whose bitmask ``get_grammar_bitmask`` builds."""
        self.waiting_for_fsm: list[Request] = []
        """Requests whose grammar is still compiling (also in ``waiting``, never scheduled)."""
        self._failed: list[Request] = []
        """Requests that ended before running (their grammar failed to compile), reported by
        the next ``update_from_output``."""

    # ---- requests in and out ------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        if request.sampling_params.structured_outputs is not None:
            if self.structured_output_manager is None:
                raise ValueError("a structured outputs request needs a structured_output_manager")
            request.structured_output = self.structured_output_manager.grammar_init(
                request.sampling_params)
            request.status = RequestStatus.WAITING_FOR_FSM
            self.waiting_for_fsm.append(request)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort_requests(self, request_ids, status=RequestStatus.FINISHED_ABORTED) -> list[str]:
        """Finish the given requests now (unknown or finished ids are ignored); returns the ids
        actually aborted."""
        aborted = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
                if request.status == RequestStatus.WAITING_FOR_FSM:
                    self.waiting_for_fsm.remove(request)
            request.status = status
            self._free(request)
            aborted.append(request_id)
        return aborted

    def _free(self, request: Request) -> None:
        self.kv.free(request)
        self._drafts_in_flight.discard(request.request_id)
        self.finished_req_ids.add(request.request_id)
        del self.requests[request.request_id]

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    def has_unfinished_requests(self) -> bool:
        return self.num_unfinished_requests > 0

    # ---- one step ---------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        step = _StepState(self.max_num_batched_tokens, self._micro_batch_size(),
                          self._prefill_cap())
        if self.num_speculative_tokens:
            self._draft_caps = self._plan_drafts()
        self._schedule_running(step)
        # Called every step, even one with a preemption, so the prompt latency it measures
        # spans exactly one step.
        passed_delay = self._passed_delay(time.time())
        if not step.preempted and passed_delay:
            self._schedule_waiting(step)
        cached = step.cached
        if self.pipelined:
            self._mark_in_flight(step)
        for request in step.scheduled:
            request.num_computed_tokens += step.num_tokens[request.request_id]
        if self.async_scheduling:
            for request in step.scheduled:
                if request.request_id in step.spec_tokens:
                    self._drafts_in_flight.add(request.request_id)
                elif request.num_computed_tokens == request.num_tokens + request.num_output_placeholders:
                    request.num_output_placeholders += 1     # this step samples its next token
        self._prev_step_had_prompt = step.had_prompt
        finished, self.finished_req_ids = self.finished_req_ids, set()
        preempted, self.preempted_req_ids = self.preempted_req_ids - finished, set()
        late = self.defers_grammar and self._sampling_constrained(step.scheduled)
        bitmask_rows, bitmask = ({}, None) if late else self._grammar_bitmask(step.scheduled)
        sched = SchedulerOutput(
            scheduled_new_reqs=step.new_reqs, scheduled_cached_reqs=cached,
            num_scheduled_tokens=step.num_tokens,
            total_num_scheduled_tokens=self.max_num_batched_tokens - step.budget,
            finished_req_ids=finished, preempted_req_ids=preempted,
            blocks_to_swap_out=step.swap_out,
            blocks_to_swap_in=step.swap_in, num_preempted=len(step.preempted),
            scheduled_spec_decode_tokens=step.spec_tokens,
            structured_output_request_ids=bitmask_rows, grammar_bitmask=bitmask,
            has_structured_output_requests=bool(late))
        if self.async_scheduling:
            self._step_requests[id(sched)] = {r.request_id: r for r in step.scheduled}
        if late:
            self._late_grammar[id(sched)] = late
        return sched

    @property
    def defers_grammar(self) -> bool:
        """Async scheduling with a batch queue (not the Ray executor's one-step loop), without
        speculation: a constrained request is scheduled while its token is in flight and its
        step's bitmask is built late (``get_grammar_bitmask``)."""
        return (self.async_scheduling and self.max_concurrent_batches > 1
                and not self.num_speculative_tokens)

    def _sampling_constrained(self, scheduled: list[Request]) -> list[Request]:
        """The constrained requests among ``scheduled`` that sample this step: all their
        tokens computed (async: up to the placeholder this step added)."""
        if not self.async_scheduling:
            return [r for r in scheduled if r.structured_output is not None
                    and r.num_computed_tokens == len(r.all_token_ids)]
        return [r for r in scheduled if r.structured_output is not None
                and r.num_output_placeholders and r.num_computed_tokens
                == len(r.all_token_ids) + r.num_output_placeholders - 1]

    def _grammar_bitmask(self, scheduled: list[Request]):
        """(request id -> bitmask row, bitmask) for the constrained requests among
        ``scheduled`` that sample this step; ({}, None) if none."""
        if self.structured_output_manager is None:
            return {}, None
        sampling = self._sampling_constrained(scheduled)
        if not sampling:
            return {}, None
        return self.structured_output_manager.grammar_bitmask(sampling)

    def get_grammar_bitmask(self, sched: SchedulerOutput) -> GrammarOutput:
        """The bitmask of a step scheduled with ``has_structured_output_requests``; call it
        once the steps before ``sched`` are through ``update_from_output`` (the matchers
        have accepted every token before the one this step samples). Requests that finished
        meanwhile get no row (the token they sample is dropped)."""
        requests = [r for r in self._late_grammar.pop(id(sched), ()) if not r.is_finished]
        if not requests:
            return GrammarOutput({}, None)
        return GrammarOutput(*self.structured_output_manager.grammar_bitmask(requests))

    def _promote_compiled(self) -> None:
        """Requests whose grammar compile finished become WAITING (schedulable); those whose
        compile failed finish with "error" (their output goes out with the next update)."""
        still = []
        for request in self.waiting_for_fsm:
            if not request.structured_output.is_ready():
                still.append(request)
            elif request.structured_output.error is None:
                request.status = RequestStatus.WAITING
            else:
                self.waiting.remove(request)
                request.status = RequestStatus.FINISHED_ERROR
                request.stop_reason = request.structured_output.error
                self._free(request)
                self._failed.append(request)
        self.waiting_for_fsm = still

    def _micro_batch_size(self) -> int:
        """Requests one batch may take: all of them, or when pipelined an equal share of the
        unfinished requests per batch in flight, so the stages get as many batches as they
        can hold (one batch with every request would leave all but one stage idle)."""
        if not self.pipelined:
            return self.config.max_num_seqs
        return max(1, -(-self.num_unfinished_requests // self.max_concurrent_batches))

    def _mark_in_flight(self, step: "_StepState") -> None:
        """Record the step's requests as in flight and give each running one the tokens the
        earlier pipeline stages have not seen (their ranks never sample)."""
        requests, cached = self.requests, step.cached
        cached.new_token_ids = [
            requests[request_id].all_token_ids[max(num_computed,
                                                   requests[request_id].num_prompt_tokens):]
            for request_id, num_computed in zip(cached.req_ids, cached.num_computed_tokens)]
        for request in step.scheduled:
            self.in_flight[request.request_id] = request

    def _prefill_cap(self) -> int | None:
        """Prompt tokens this step may run (``long_prefill_token_threshold``), or None when
        uncapped: the knob is off, prompts cannot be chunked, or no running request decodes."""
        threshold = self.config.long_prefill_token_threshold
        if threshold <= 0 or not self.config.enable_chunked_prefill:
            return None
        if not any(r.num_computed_tokens >= r.num_prompt_tokens for r in self.running):
            return None
        return threshold

    def _num_new_tokens(self, request: Request, budget: int) -> int:
        """Tokens to run for a request now: all it lacks, chunked to the budget if allowed;
        0 when it cannot run this step."""
        num_new = request.num_tokens - request.num_computed_tokens
        if num_new > budget and not self.config.enable_chunked_prefill:
            return 0
        return min(num_new, budget)

    def _schedule_running(self, step: "_StepState") -> None:
        index, running, allocate_slots = 0, self.running, self.kv.allocate_slots
        in_flight, draft_caps, scheduled = self.in_flight, self._draft_caps, step.scheduled
        drafts_in_flight, max_num_reqs = self._drafts_in_flight, step.max_num_reqs
        while index < len(running) and step.budget > 0 and len(scheduled) < max_num_reqs:
            request = running[index]
            request_id = request.request_id
            if (in_flight and request_id in in_flight) or (
                    drafts_in_flight and request_id in drafts_in_flight):
                # its previous batch is still in the pipeline, or (async) how many of its
                # drafts are accepted is not known yet
                index += 1
                continue
            num_new = (len(request.all_token_ids) + request.num_output_placeholders
                       - request.num_computed_tokens)
            if request.num_output_placeholders and (self._at_limit(request) or (
                    request.structured_output is not None and not self.defers_grammar)):
                # the token in flight is its last one, or (speculation on) its grammar must
                # accept that token before the next bitmask exists: wait for it
                index += 1
                continue
            if step.prefill_left is not None and request.num_computed_tokens < request.num_prompt_tokens:
                num_new = min(num_new, step.prefill_left)     # the step's prompt allowance
                if num_new <= 0:
                    index += 1
                    continue
            if num_new > step.budget:
                num_new = self._num_new_tokens(request, step.budget)
                if num_new == 0:
                    index += 1
                    continue
            drafts = self._drafts_to_schedule(request, num_new, step.budget) if draft_caps else ()
            num_new += len(drafts)
            new_blocks = allocate_slots(request, num_new)
            if new_blocks is None:
                new_blocks, index = self._preempt_for(request, num_new, index, step)
                if new_blocks is None:
                    continue      # the request itself was preempted; running shrank under index
            step.add_cached(request, num_new,
                            [b.block_id for b in new_blocks] if new_blocks else None)
            if drafts:
                step.spec_tokens[request_id] = drafts
            index += 1

    def _preempt_for(self, request: Request, num_new: int, index: int, step: "_StepState"):
        """Blocks are short for ``request`` (at ``running[index]``): preempt victims until
        its slots fit or it is the victim itself. Returns (its new blocks or None when it was
        preempted, its index in ``running`` after the victims left)."""
        while True:
            victim = self._pick_victim()
            self._preempt(victim, step)
            if victim is request:
                return None, index
            if self.running.index(request) < index:   # a scheduled victim shifted the list
                index -= 1
            new_blocks = self.kv.allocate_slots(request, num_new)
            if new_blocks is not None:
                return new_blocks, index

    def _drafts_to_schedule(self, request: Request, num_new: int, budget: int) -> list[int]:
        """The request's drafts that fit this step (only when its one remaining token is a
        decode token): cut to its ``_plan_drafts`` cap, the budget, max_tokens and
        max_model_len; none under a grammar."""
        cap = self._draft_caps.get(request.request_id, 0)
        if not cap or num_new != 1 or request.structured_output is not None:
            return []
        room = min(cap, budget - 1, request.max_tokens - len(request.output_token_ids) - 1,
                   self.max_model_len - len(request.all_token_ids) - 1)
        return request.spec_token_ids[:max(room, 0)]

    def _plan_drafts(self) -> dict[str, int]:
        """Request id -> how many of its drafts it may verify this step: all of them, or
        under ``adaptive`` its k from recent acceptance (``pagellm.core.spec_adaptive``); then
        ``max_num_draft_tokens_per_step`` shared out, highest acceptance first. Only fresh
        drafts count (proposed after the request's last token, none in flight)."""
        candidates = [r for r in self.running if r.spec_token_ids
                      and r.spec_base == r.num_tokens and not r.num_output_placeholders]
        adaptive, k = self.spec_adaptive, self.num_speculative_tokens
        caps = {}
        for request in candidates:
            cap = k if adaptive is None else best_num_drafts(
                request.spec_acceptance.rate, k, adaptive["draft_token_cost"])
            caps[request.request_id] = min(cap, len(request.spec_token_ids))
        budget = self.max_num_draft_tokens_per_step
        if budget is not None:
            for request in sorted(candidates, key=lambda r: -r.spec_acceptance.rate):
                cap = caps[request.request_id] = min(caps[request.request_id], budget)
                budget -= cap
        return caps

    def waits_for_drafts(self) -> bool:
        """Async scheduling with speculation: whether the next step should wait for the one
        in flight, because a verify is in flight or a running request has drafts it would
        verify (adaptive k > 0), usable only once nothing of it is in flight. Requests
        without proposals (or with k = 0) keep the overlap (see EngineCore)."""
        if not self.num_speculative_tokens:
            return False
        if self._drafts_in_flight:
            return True
        adaptive, k = self.spec_adaptive, self.num_speculative_tokens
        return any(r.spec_token_ids and r.structured_output is None and (
            adaptive is None or best_num_drafts(r.spec_acceptance.rate, k,
                                                adaptive["draft_token_cost"]) > 0)
            for r in self.running)

    def has_constrained_running(self) -> bool:
        """Whether a running request decodes under a grammar and its bitmask is not built
        late (async scheduling with speculation then runs synchronously: see
        EngineCore._step_with_batch_queue)."""
        return not self.defers_grammar and any(r.structured_output is not None
                                               for r in self.running)

    def _at_limit(self, request: Request) -> bool:
        """Async: the tokens in flight already reach max_tokens or max_model_len."""
        placeholders = request.num_output_placeholders
        return (len(request.output_token_ids) + placeholders >= request.max_tokens
                or len(request.all_token_ids) + placeholders >= self.max_model_len)

    def _pick_victim(self) -> Request:
        """The running request to preempt: the latest (or lowest-priority) one that is not in
        flight (the request asking for blocks never is, so there always is one)."""
        candidates = self.running
        if self.in_flight or self._drafts_in_flight:
            busy = self.in_flight.keys() | self._drafts_in_flight
            candidates = [r for r in candidates if r.request_id not in busy]
        if self.config.policy == "priority":
            return max(candidates, key=lambda r: (r.priority, r.arrival_time))
        return candidates[-1]

    def _preempt(self, request: Request, step: "_StepState") -> None:
        self.running.remove(request)
        step.unschedule(request)
        mode = self.config.preemption_mode
        mapping = self.kv.swap_out(request) if mode == "swap" else None
        if mapping is not None:
            step.swap_out.extend(mapping)
            request.status = RequestStatus.SWAPPED
        else:
            mode = "recompute"
            self.kv.free(request)
            request.num_computed_tokens = 0
            request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        request.spec_token_ids = []
        self.num_preemptions += 1
        self.waiting.appendleft(request)
        step.preempted.append(request)
        self.preempted_req_ids.add(request.request_id)
        logger.warning(
            "Sequence group %s is preempted by PreemptionMode.%s mode because there is not "
            "enough KV cache space. This can affect the end-to-end performance. Increase "
            "gpu_memory_utilization or tensor_parallel_size to provide more KV cache memory. "
            "total_cumulative_preemption_cnt=%d", request.request_id, mode.upper(),
            self.num_preemptions)

    def _next_waiting(self) -> Request | None:
        """The waiting request to admit next (skipping those whose grammar compiles)."""
        waiting = self.waiting
        if self.waiting_for_fsm:
            waiting = [r for r in waiting if r.status != RequestStatus.WAITING_FOR_FSM]
        loras = self.running_loras() if self.max_loras else set()
        if len(loras) >= self.max_loras > 0:
            # another adapter would exceed max_loras: those requests wait (vLLM skips them)
            waiting = [r for r in waiting if r.lora_int_id == 0 or r.lora_int_id in loras]
        if not waiting:
            return None
        if self.config.policy == "priority":
            return min(waiting, key=lambda r: (r.priority, r.arrival_time))
        return waiting[0]

    def running_loras(self) -> set[int]:
        """Adapter ids of the running requests (at most ``max_loras``)."""
        return {r.lora_int_id for r in self.running if r.lora_request is not None}

    def _schedule_waiting(self, step: "_StepState") -> None:
        if self.waiting_for_fsm:
            self._promote_compiled()
        while (self.waiting and step.budget > 0 and step.has_room
               and len(self.running) < self.config.max_num_seqs):
            request = self._next_waiting()
            if request is None:
                return
            if self.in_flight and request.request_id in self.in_flight:
                return      # an aborted request of the same id is still in flight
            if request.status == RequestStatus.SWAPPED:
                if not self._admit_swapped(request, step):
                    return
            elif not self._admit_fresh(request, step):
                return
            self.waiting.remove(request)
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            if request.first_scheduled_time is None:
                request.first_scheduled_time = time.time()
            step.add_new(request, self.kv.block_ids(request.request_id))

    def _admit_fresh(self, request: Request, step: "_StepState") -> bool:
        hit_blocks, num_hit_tokens = self.kv.get_computed_blocks(request)
        num_new = request.num_tokens - num_hit_tokens
        if step.prefill_left is not None:
            num_new = min(num_new, step.prefill_left)
            if num_new <= 0:
                return False
        if num_new > step.budget:
            if not self.config.enable_chunked_prefill:
                return False
            num_new = step.budget
        if self.kv.allocate_slots(request, num_new, hit_blocks) is None:
            return False
        if request.num_cached_tokens < 0:
            request.num_cached_tokens = num_hit_tokens
        if self.kv.caches(request):
            self.kv.record_prefix_lookup(request.num_tokens, num_hit_tokens)
        step.num_tokens[request.request_id] = num_new
        step.budget -= num_new
        step.had_prompt = True
        if step.prefill_left is not None:
            step.prefill_left -= num_new
        return True

    def _admit_swapped(self, request: Request, step: "_StepState") -> bool:
        num_new = self._num_new_tokens(request, step.budget)
        if num_new == 0 or not self.kv.can_swap_in(request, num_new):
            return False
        step.swap_in.extend(self.kv.swap_in(request))
        if self.kv.allocate_slots(request, num_new) is None:
            raise AssertionError("swap-in reserved too few blocks")
        step.num_tokens[request.request_id] = num_new
        step.budget -= num_new
        return True

    def _passed_delay(self, now: float) -> bool:
        """scheduler_delay_factor: hold new prompts until the oldest waiting request has waited
        delay × the last prompt step's latency (or nothing is running)."""
        if self._prev_step_had_prompt:
            self._last_prompt_latency = now - self._prev_step_time
        self._prev_step_time = now
        delay = self.config.scheduler_delay_factor
        if delay <= 0 or not self.waiting or not self.running:
            return True
        oldest_arrival = min(r.arrival_time for r in self.waiting)
        return now - oldest_arrival > delay * self._last_prompt_latency

    # ---- after the forward ------------------------------------------------------------------

    def update_from_output(self, sched: SchedulerOutput,
                           runner_output: ModelRunnerOutput) -> EngineCoreOutputs:
        """Append the step's sampled tokens, finish the requests they end; returns the
        outputs (new tokens, prompt logprobs, finishes) as one columnar ``EngineCoreOutputs``.
        Tokens of requests aborted while the step ran are dropped."""
        reported, self._failed = self._failed, []        # ended before running: no tokens
        num_new = [0] * len(reported)
        requests = self.requests
        aborted: set[str] = set()
        if self.pipelined:      # this batch's request objects: an id may be reused after abort
            requests = {request_id: self.in_flight.pop(request_id)
                        for request_id in sched.num_scheduled_tokens}
            aborted = {request_id for request_id, r in requests.items() if r.is_finished}
        elif self.async_scheduling:
            requests = self._step_requests.pop(id(sched), {})
            aborted = {request_id for request_id, r in requests.items() if r.is_finished}
        # looked up before the tokens are appended: a request they finish leaves self.requests
        prompt_requests = {request_id: requests.get(request_id)
                           for request_id in runner_output.prompt_logprobs}
        new_token_ids, logprob_rows = self._append_step_tokens(
            sched, runner_output, requests, reported, num_new)
        outputs = EngineCoreOutputs(num_new_tokens=num_new, new_token_ids=new_token_ids)
        if runner_output.prompt_logprobs:
            self._add_prompt_logprobs(outputs, runner_output.prompt_logprobs, prompt_requests,
                                      aborted, reported, num_new)
        outputs.req_ids = [r.request_id for r in reported]
        outputs.finish_reasons = [_FINISH_REASON_OF[r.status] for r in reported]
        outputs.stop_reasons = [r.stop_reason for r in reported]
        outputs.num_cached_tokens = [max(r.num_cached_tokens, 0) for r in reported]
        outputs.first_scheduled_times = [r.first_scheduled_time for r in reported]
        outputs.num_preemptions = [r.num_preemptions for r in reported]
        if runner_output.logprobs is not None:
            outputs.new_logprobs = runner_output.logprobs.rows(
                np.asarray(logprob_rows, dtype=np.int64))
        return outputs

    def _append_step_tokens(self, sched: SchedulerOutput, runner_output: ModelRunnerOutput,
                            requests: dict[str, Request], reported: list[Request],
                            num_new: list[int]) -> tuple[list[int], list[int]]:
        """Append each live request's new tokens (checking stops), finish those they end;
        the reported requests and their token counts go to ``reported`` / ``num_new``.
        Returns the appended tokens flattened and their rows in the runner's logprobs."""
        spec_drafts = sched.scheduled_spec_decode_tokens
        proposals = runner_output.spec_token_ids
        counts = runner_output.num_sampled_tokens
        tokens = runner_output.sampled_token_ids
        want_rows = runner_output.logprobs is not None
        new_token_ids: list[int] = []
        logprob_rows: list[int] = []
        shadow = self.spec_adaptive is not None
        end = 0
        for index, request_id in enumerate(runner_output.req_ids):
            first = end
            end += 1 if counts is None else counts[index]
            request = requests.get(request_id)
            if request is None or request.status >= _FINISHED:
                continue    # aborted while the step ran, or stopped by an earlier step's token
            if spec_drafts and request_id in spec_drafts:
                self._rollback_rejected(request, len(spec_drafts[request_id]), end - first)
            elif shadow:
                self._shadow_check(request, tokens[first])
            appended = self._append_tokens(request, tokens, first, end)
            if appended == 1:
                new_token_ids.append(tokens[first])
            else:
                new_token_ids.extend(tokens[first:first + appended])
            if want_rows:
                logprob_rows.extend(range(first, first + appended))
            reported.append(request)
            num_new.append(appended)
            if request.status >= _FINISHED:
                self.running.remove(request)
                self._free(request)
            elif proposals is not None:
                request.spec_token_ids, request.spec_base = proposals[index], request.num_tokens
        return new_token_ids, logprob_rows

    @staticmethod
    def _add_prompt_logprobs(outputs: EngineCoreOutputs, prompt_logprobs: dict,
                             requests: dict[str, Request], aborted: set[str],
                             reported: list[Request], num_new: list[int]) -> None:
        """Pass the step's prompt logprobs on; a request that sampled nothing this step (a
        prompt chunk) is reported with no tokens."""
        seen = {r.request_id for r in reported}
        for request_id, value in prompt_logprobs.items():
            if request_id in aborted:
                continue
            request = requests.get(request_id)
            if request is None:
                continue
            outputs.new_prompt_logprobs[request_id] = value
            if request_id not in seen:
                reported.append(request)
                num_new.append(0)

    def _append_tokens(self, request: Request, tokens: list[int], first: int, end: int) -> int:
        """Append the request's new tokens ``tokens[first:end]`` one by one, checking the stop
        conditions after each; returns how many were appended (cut after the first that
        finishes the request). Newly full blocks are hashed once, after the last."""
        count = 0
        for position in range(first, end):
            token_id = tokens[position]
            count += 1
            if request.num_output_placeholders:
                request.num_output_placeholders -= 1
            request.output_token_ids.append(token_id)
            request.all_token_ids.append(token_id)
            if request.structured_output is not None:
                self._accept_token(request, token_id)
            if self._check_stop(request, token_id):
                break
        kv = self.kv
        if ((len(request.all_token_ids) - kv.hash_next_tokens) // kv.block_size
                > len(request.block_hashes)):
            kv.update_block_hashes(request)
        return count

    def _rollback_rejected(self, request: Request, num_drafts: int, num_new_tokens: int) -> None:
        """Speculative decoding: the step computed 1 + num_drafts positions and produced
        ``num_new_tokens`` (accepted drafts + 1); the rejected drafts' KV is not the
        request's, so ``num_computed_tokens`` goes back to the accepted ones (their slots stay
        allocated as lookahead for the next step). Counts the draft in ``spec_stats``."""
        num_accepted = num_new_tokens - 1
        if not 0 <= num_accepted <= num_drafts:
            raise AssertionError(f"{num_new_tokens} new tokens for {num_drafts} drafts")
        request.num_computed_tokens -= num_drafts - num_accepted
        self._drafts_in_flight.discard(request.request_id)
        self.spec_stats.observe(num_drafts, num_accepted)
        if self.spec_adaptive is not None:
            request.spec_acceptance.observe_verified(num_drafts, num_accepted,
                                                     self.spec_adaptive["adaptive_ewma_decay"])

    def _shadow_check(self, request: Request, token_id: int) -> None:
        """Adaptive k: a proposal that was not verified, checked for free against the token
        that came at its first position (``SpecAcceptance.observe_shadow``)."""
        if request.spec_token_ids and request.spec_base == request.num_tokens:
            request.spec_acceptance.observe_shadow(request.spec_token_ids[0], token_id,
                                                   self.spec_adaptive["adaptive_ewma_decay"])

    @staticmethod
    def _accept_token(request: Request, token_id: int) -> None:
        """Advance the request's grammar over its new token. A token the grammar refuses
        (the runner masks every other one, so this is a bug) ends the request with "error"
        rather than let it return output that breaks its constraint."""
        if not request.structured_output.grammar.accept_tokens([token_id]):
            logger.error("structured outputs: request %s sampled token %d, which its grammar "
                         "does not allow; ending it", request.request_id, token_id)
            request.status = RequestStatus.FINISHED_ERROR
            request.stop_reason = f"token {token_id} breaks the structured outputs grammar"

    def _check_stop(self, request: Request, token_id: int) -> bool:
        """Finish the request if ``token_id`` (just appended) ends it; True if it did."""
        if request.structured_output is not None:
            if request.status == _FINISHED_ERROR:
                return True
            if request.structured_output.grammar.is_terminated():
                request.status = _FINISHED_STOPPED
                if token_id in request.sampling_params.stop_token_ids:
                    request.stop_reason = token_id
                return True
        params = request.sampling_params
        num_output = len(request.output_token_ids)
        if num_output >= params.min_tokens:
            if token_id in params.stop_token_ids:
                request.status, request.stop_reason = _FINISHED_STOPPED, token_id
                return True
            if not params.ignore_eos and token_id in params.all_stop_token_ids:
                request.status = _FINISHED_STOPPED
                return True
        if num_output >= request.max_tokens or len(request.all_token_ids) >= self.max_model_len:
            request.status = RequestStatus.FINISHED_LENGTH
            return True
        return False

    # ---- stats ----------------------------------------------------------------------------

    def kv_cache_usage(self) -> float:
        return self.kv.usage()


class _StepState:
    """What one ``schedule`` call has decided so far."""

    def __init__(self, budget: int, max_num_reqs: int, prefill_cap: int | None = None):
        self.budget = budget
        self.max_num_reqs = max_num_reqs
        self.prefill_left = prefill_cap
        """Prompt tokens this step may still run (long_prefill_token_threshold); None = any."""
        self.num_tokens: dict[str, int] = {}
        self.new_reqs: list[NewRequestData] = []
        self.cached = CachedRequestData()
        """The running requests scheduled so far, as the step message's columns."""
        self.scheduled: list[Request] = []
        self.preempted: list[Request] = []
        self.swap_out: list[tuple[int, int]] = []
        self.swap_in: list[tuple[int, int]] = []
        self.spec_tokens: dict[str, list[int]] = {}
        self.had_prompt = False

    @property
    def has_room(self) -> bool:
        """Fewer requests scheduled than the batch may take."""
        return len(self.scheduled) < self.max_num_reqs

    def add_cached(self, request: Request, num_new: int, new_block_ids: list[int] | None) -> None:
        """A running request scheduled for ``num_new`` tokens (``new_block_ids``: blocks it
        got this step, None if none)."""
        request_id, num_computed = request.request_id, request.num_computed_tokens
        self.num_tokens[request_id] = num_new
        self.budget -= num_new
        self.scheduled.append(request)
        cached = self.cached
        cached.req_ids.append(request_id)
        cached.num_computed_tokens.append(num_computed)
        cached.new_block_ids.append(new_block_ids)
        if num_computed < len(request.prompt_token_ids):
            self.had_prompt = True
            if self.prefill_left is not None:
                self.prefill_left -= num_new

    def add_new(self, request: Request, block_ids: list[int]) -> None:
        self.scheduled.append(request)
        self.new_reqs.append(NewRequestData(
            request.request_id, list(request.all_token_ids), request.num_prompt_tokens,
            request.sampling_params, block_ids, request.num_computed_tokens,
            request.lora_request))

    def unschedule(self, request: Request) -> None:
        """Undo this step's scheduling of a request that is being preempted."""
        if request.request_id not in self.num_tokens:
            return
        self.budget += self.num_tokens.pop(request.request_id)
        self.spec_tokens.pop(request.request_id, None)
        self.scheduled.remove(request)
        cached = self.cached
        if request.request_id in cached.req_ids:
            index = cached.req_ids.index(request.request_id)
            for column in (cached.req_ids, cached.num_computed_tokens, cached.new_block_ids):
                del column[index]
