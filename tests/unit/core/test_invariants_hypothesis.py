"""Random workloads against the scheduler and KV cache manager, with invariants after every
operation: block references, the free queue, the hash map, swap space, the runner's view of
block tables (built only from the diffs it is sent), the KV contents every request reads, and
that every request finishes once no more arrive."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagellm.core.request import RequestStatus
from pagellm.core.sched_output import ModelRunnerOutput, SchedulerOutput
from pagellm.core.scheduler import Scheduler
from tests.unit.core.builders import EOS, cached_rows, make_request, make_scheduler


class FakeRunner:
    """Keeps per-request block tables from the scheduler's diffs only, and a fake KV cache:
    each slot holds the token whose K/V was written there."""

    def __init__(self, scheduler: Scheduler, seed: int):
        self.scheduler = scheduler
        self.block_size = scheduler.block_size
        self.block_tables: dict[str, list[int]] = {}
        self.gpu: dict[int, list[int | None]] = {}
        self.swap: dict[int, list[int | None]] = {}
        self.rng = random.Random(seed)

    def execute(self, output: SchedulerOutput) -> ModelRunnerOutput:
        for request_id in output.finished_req_ids | output.preempted_req_ids:
            self.block_tables.pop(request_id, None)
        for gpu_block, swap_block in output.blocks_to_swap_out:
            self.swap[swap_block] = list(self.gpu.get(gpu_block, [None] * self.block_size))
        for swap_block, gpu_block in output.blocks_to_swap_in:
            self.gpu[gpu_block] = list(self.swap[swap_block])
        for new in output.scheduled_new_reqs:
            assert new.request_id not in self.block_tables
            self.block_tables[new.request_id] = list(new.block_ids)
        for cached in cached_rows(output):
            self.block_tables[cached.request_id].extend(cached.new_block_ids)

        req_ids, sampled = [], []
        for request_id, num_new in output.num_scheduled_tokens.items():
            request = self.scheduler.requests[request_id]
            table = self.block_tables[request_id]
            assert table == self.scheduler.kv.block_ids(request_id)
            start = request.num_computed_tokens - num_new
            for position in range(start, request.num_computed_tokens):
                block = self.gpu.setdefault(table[position // self.block_size],
                                            [None] * self.block_size)
                block[position % self.block_size] = request.all_token_ids[position]
        for request_id in output.num_scheduled_tokens:
            request = self.scheduler.requests[request_id]
            self.check_kv_contents(request_id)
            if request.num_computed_tokens == request.num_tokens:
                req_ids.append(request_id)
                sampled.append(EOS if self.rng.random() < 0.1 else self.rng.randrange(3, 12))
        return ModelRunnerOutput(req_ids=req_ids, sampled_token_ids=sampled)

    def check_kv_contents(self, request_id: str) -> None:
        """Every position the request attends to holds its own token (prefix hits, swap-ins
        and blocks shared within a step included)."""
        request = self.scheduler.requests[request_id]
        table = self.block_tables[request_id]
        for position in range(request.num_computed_tokens):
            block = self.gpu[table[position // self.block_size]]
            assert block[position % self.block_size] == request.all_token_ids[position], (
                request_id, position)


def check_invariants(scheduler: Scheduler) -> None:
    kv, pool = scheduler.kv, scheduler.kv.pool
    running_ids = {r.request_id for r in scheduler.running}
    waiting_ids = {r.request_id for r in scheduler.waiting}
    assert running_ids.isdisjoint(waiting_ids)
    assert running_ids | waiting_ids == set(scheduler.requests)
    assert len(scheduler.running) <= scheduler.config.max_num_seqs
    assert set(kv.req_to_blocks) == running_ids

    holders = Counter()
    for request_id, blocks in kv.req_to_blocks.items():
        ids = [b.block_id for b in blocks]
        assert len(ids) == len(set(ids)), f"{request_id} holds a block twice: {ids}"
        holders.update(ids)
        request = scheduler.requests[request_id]
        assert request.status == RequestStatus.RUNNING
        assert len(blocks) * kv.block_size >= request.num_computed_tokens
    free_ids = pool.free_queue.block_ids()
    assert len(free_ids) == len(set(free_ids)) == pool.num_free_blocks
    for block in pool.blocks:
        assert block.ref_cnt == holders[block.block_id], block
        assert (block.block_id in free_ids) == (block.ref_cnt == 0), block
    assert pool.num_free_blocks + len(holders) == pool.num_blocks
    for block_hash, block in pool.cached_blocks.items():
        assert block.block_hash == block_hash

    held_swap = [b for blocks in kv.req_to_swap_blocks.values() for b in blocks]
    all_swap = kv.free_swap_blocks + held_swap
    assert len(all_swap) == len(set(all_swap)) == kv.num_swap_blocks
    assert set(all_swap) == set(range(kv.num_swap_blocks))
    swapped_ids = {r.request_id for r in scheduler.waiting if r.status == RequestStatus.SWAPPED}
    assert set(kv.req_to_swap_blocks) <= swapped_ids
    for request in scheduler.waiting:
        assert request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED,
                                  RequestStatus.SWAPPED)
        if request.status != RequestStatus.SWAPPED:
            assert request.num_computed_tokens == 0


def check_output(scheduler: Scheduler, output: SchedulerOutput, had_work: bool) -> None:
    ids = [r.request_id for r in output.scheduled_new_reqs] + [
        c.request_id for c in cached_rows(output)]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(output.num_scheduled_tokens)
    assert all(n > 0 for n in output.num_scheduled_tokens.values())
    assert output.total_num_scheduled_tokens == sum(output.num_scheduled_tokens.values())
    assert output.total_num_scheduled_tokens <= scheduler.max_num_batched_tokens
    if output.num_preempted:
        assert output.scheduled_new_reqs == []
    left = scheduler.max_num_batched_tokens - output.total_num_scheduled_tokens
    for request in scheduler.running:
        if request.request_id not in output.num_scheduled_tokens:   # skipped: why?
            num_new = request.num_tokens - request.num_computed_tokens
            assert left == 0 or (not scheduler.config.enable_chunked_prefill and num_new > left)
    if had_work:
        assert output.total_num_scheduled_tokens > 0, "a step with work scheduled nothing"


@st.composite
def configs(draw):
    block_size = draw(st.sampled_from([1, 2, 4, 8]))
    num_blocks = draw(st.integers(2, 8))
    max_model_len = num_blocks * block_size
    chunked = draw(st.booleans())
    low = 1 if chunked else max_model_len
    return dict(
        block_size=block_size, num_blocks=num_blocks, max_model_len=max_model_len,
        enable_chunked_prefill=chunked,
        max_num_batched_tokens=draw(st.integers(low, max_model_len + 8)),
        max_num_seqs=draw(st.integers(1, 5)),
        enable_prefix_caching=draw(st.booleans()),
        preemption_mode=draw(st.sampled_from(["recompute", "swap"])),
        num_swap_blocks=draw(st.integers(0, 12)),
        policy=draw(st.sampled_from(["fcfs", "priority"])),
    )


adds = st.tuples(st.just("add"), st.integers(0, 2), st.floats(0.0, 1.0), st.integers(0, 6),
                st.integers(1, 12), st.integers(1, 3), st.integers(0, 2))
operations = st.lists(st.one_of(
    adds, adds, st.tuples(st.just("step")), st.tuples(st.just("step")),
    st.tuples(st.just("abort"), st.integers(0, 50)),
), min_size=6, max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs(), ops=operations, seed=st.integers(0, 2**16))
def test_random_workloads_keep_invariants_and_finish(config, ops, seed):
    scheduler = make_scheduler(**config)
    runner = FakeRunner(scheduler, seed)
    rng = random.Random(seed)
    bases = [[rng.randrange(3, 12) for _ in range(config["max_model_len"])] for _ in range(3)]
    known_ids: list[str] = []

    def one_step() -> None:
        had_work = scheduler.has_unfinished_requests()
        output = scheduler.schedule()
        check_invariants(scheduler)
        check_output(scheduler, output, had_work)
        scheduler.update_from_output(output, runner.execute(output))
        check_invariants(scheduler)

    for op in ops:
        if op[0] == "add":
            _, base, shared_fraction, tail, max_tokens, n, priority = op
            max_prompt = config["max_model_len"] - 1
            shared = int(shared_fraction * max_prompt)
            prompt = bases[base][:shared] + [rng.randrange(3, 12) for _ in range(tail)]
            prompt = prompt[:max_prompt] or [3]
            group = f"g{len(known_ids)}" if n > 1 else None
            for index in range(n):
                request_id = f"{group}-{index}" if group else f"r{len(known_ids)}"
                scheduler.add_request(make_request(
                    request_id, prompt, max_tokens, group_id=group, priority=priority,
                    arrival_time=float(len(known_ids))))
                known_ids.append(request_id)
        elif op[0] == "step":
            one_step()
        else:
            if known_ids:
                scheduler.abort_requests([known_ids[op[1] % len(known_ids)]])
        check_invariants(scheduler)

    for _ in range(2000):
        if not scheduler.has_unfinished_requests():
            break
        one_step()
    assert not scheduler.has_unfinished_requests(), "livelock: requests never finish"
    scheduler.schedule()       # flush finished ids
    kv = scheduler.kv
    assert kv.pool.num_free_blocks == kv.pool.num_blocks
    assert kv.req_to_blocks == {} and kv.req_to_swap_blocks == {}
    assert sorted(kv.free_swap_blocks) == list(range(kv.num_swap_blocks))
    assert scheduler.requests == {}
