"""Scheduler with LoRA: no step runs more distinct adapters than max_loras (requests whose
adapter would exceed it wait, others pass them), and the adapter id enters the block hash."""

from __future__ import annotations

from pagellm.config.cache import CacheConfig
from pagellm.config.scheduler import SchedulerConfig
from pagellm.core.scheduler import Scheduler
from pagellm.lora.request import LoRARequest
from tests.unit.core.builders import make_request, step


def lora_request(lora_int_id: int) -> LoRARequest:
    return LoRARequest(f"a{lora_int_id}", lora_int_id, f"/adapters/a{lora_int_id}")


def lora_scheduler(max_loras: int) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=16),
                     CacheConfig(block_size=4, enable_prefix_caching=True), 256, 64,
                     max_loras=max_loras)


def add(scheduler, request_id: str, lora_int_id: int, prompt_start: int, max_tokens: int = 2):
    request = make_request(request_id, list(range(prompt_start, prompt_start + 8)), max_tokens)
    request.lora_request = lora_request(lora_int_id) if lora_int_id else None
    scheduler.add_request(request)
    return request


def test_requests_of_a_third_adapter_wait_while_two_run():
    scheduler = lora_scheduler(max_loras=2)
    add(scheduler, "a", 1, 100)
    add(scheduler, "b", 2, 200)
    add(scheduler, "c", 3, 300)       # would be a third adapter: waits
    add(scheduler, "base", 0, 400)    # the base model passes it
    add(scheduler, "d", 1, 500)       # adapter 1 already runs: passes it too
    output, _ = step(scheduler)
    assert set(output.num_scheduled_tokens) == {"a", "b", "base", "d"}
    assert [r.request_id for r in scheduler.waiting] == ["c"]
    assert scheduler.running_loras() == {1, 2}
    assert {new.request_id: new.lora_request.lora_int_id if new.lora_request else 0
            for new in output.scheduled_new_reqs} == {"a": 1, "b": 2, "base": 0, "d": 1}
    step(scheduler)                   # every request but c finishes (max_tokens=2)
    output, _ = step(scheduler)
    assert set(output.num_scheduled_tokens) == {"c"}
    assert scheduler.running_loras() == {3}


def test_adapter_id_enters_the_block_hash():
    scheduler = lora_scheduler(max_loras=2)
    plain = make_request("p", list(range(100, 108)))
    adapted = make_request("q", list(range(100, 108)))
    adapted.lora_request = lora_request(1)
    other = make_request("r", list(range(100, 108)))
    other.lora_request = lora_request(2)
    for request in (plain, adapted, other):
        scheduler.kv.update_block_hashes(request)
    assert len(plain.block_hashes) == len(adapted.block_hashes) == 2
    assert not set(plain.block_hashes) & set(adapted.block_hashes)
    assert not set(adapted.block_hashes) & set(other.block_hashes)
