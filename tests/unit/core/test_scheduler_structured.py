"""The scheduler with structured outputs: WAITING_FOR_FSM does not block others, bitmask rows
for the constrained requests that sample, matcher advance, grammar end = "stop", compile
failure = "error", preemption keeps the matcher in step with the output."""

from __future__ import annotations

from concurrent.futures import wait

from pagellm.core.request import RequestStatus
from pagellm.sampling_params import StructuredOutputsParams
from pagellm.structured_output.manager import StructuredOutputManager
from pagellm.config.cache import CacheConfig
from pagellm.config.scheduler import SchedulerConfig
from pagellm.core.sched_output import ModelRunnerOutput
from pagellm.core.scheduler import Scheduler
from tests.unit.core.builders import EOS, make_request, make_scheduler, play_runner, step, unpack
from tests.unit.test_structured_output import VOCAB, GatedBackend, allowed, byte_id


def constrained_scheduler(**options):
    backend = GatedBackend()
    scheduler = make_scheduler(**options)
    scheduler.structured_output_manager = StructuredOutputManager(backend, VOCAB)
    return scheduler, backend


def choice_request(request_id, choices, prompt=4, **params):
    return make_request(request_id, prompt, structured_outputs=StructuredOutputsParams(
        choice=choices), **params)


def wait_ready(scheduler):
    wait([r.structured_output.future for r in scheduler.waiting_for_fsm], timeout=30)


def test_compiling_request_waits_without_blocking_the_next():
    scheduler, backend = constrained_scheduler()
    scheduler.add_request(choice_request("c", ["ab"]))
    scheduler.add_request(make_request("free", 4))
    assert scheduler.requests["c"].status == RequestStatus.WAITING_FOR_FSM
    out, _ = step(scheduler)
    assert list(out.num_scheduled_tokens) == ["free"]
    assert out.grammar_bitmask is None and out.structured_output_request_ids == {}
    backend.gate.set()
    wait_ready(scheduler)
    out, _ = step(scheduler, {"c": byte_id("a")})
    assert list(out.num_scheduled_tokens) == ["free", "c"]
    assert out.structured_output_request_ids == {"c": 0}
    assert allowed(out.grammar_bitmask, 0) == {byte_id("a")}
    assert scheduler.waiting_for_fsm == []


def test_grammar_end_finishes_with_stop_and_length_otherwise():
    scheduler, backend = constrained_scheduler()
    backend.gate.set()
    scheduler.add_request(choice_request("done", ["ab"], max_tokens=8))
    scheduler.add_request(choice_request("short", ["abcdef"], max_tokens=2))
    wait_ready(scheduler)
    tokens = iter([byte_id("a"), byte_id("b"), EOS])
    finishes = {}
    for _ in range(3):
        token = next(tokens)
        out, outputs = step(scheduler, {"done": token, "short": token})
        finishes.update({o.request_id: o.finish_reason for o in outputs if o.finished})
        if token == byte_id("b"):
            assert allowed(out.grammar_bitmask, out.structured_output_request_ids["done"]) == \
                {byte_id("b")}
    assert finishes == {"short": "length", "done": "stop"}


def test_grammar_end_stops_even_with_ignore_eos():
    scheduler, backend = constrained_scheduler()
    backend.gate.set()
    scheduler.add_request(choice_request("r", ["a"], ignore_eos=True))
    wait_ready(scheduler)
    step(scheduler, byte_id("a"))
    _, outputs = step(scheduler, EOS)
    assert outputs[0].finish_reason == "stop"


def test_partial_prefill_gets_no_bitmask_row():
    scheduler, backend = constrained_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=True)
    backend.gate.set()
    scheduler.add_request(choice_request("r", ["a"], prompt=12))
    wait_ready(scheduler)
    out, _ = step(scheduler)
    assert out.num_scheduled_tokens == {"r": 8} and out.grammar_bitmask is None
    out, _ = step(scheduler, byte_id("a"))
    assert out.structured_output_request_ids == {"r": 0}


def test_failed_compile_ends_the_request_with_error():
    scheduler, backend = constrained_scheduler()
    backend.gate.set()
    scheduler.add_request(make_request("bad", 4, structured_outputs=StructuredOutputsParams(
        regex="(unclosed")))
    wait_ready(scheduler)
    _, outputs = step(scheduler)
    assert [(o.request_id, o.finish_reason) for o in outputs] == [("bad", "error")]
    assert "parenthesis" in outputs[0].stop_reason
    assert not scheduler.has_unfinished_requests()


def test_abort_while_compiling():
    scheduler, _ = constrained_scheduler()
    scheduler.add_request(choice_request("r", ["a"]))
    assert scheduler.abort_requests(["r"]) == ["r"]
    assert scheduler.waiting_for_fsm == [] and not scheduler.has_unfinished_requests()


def test_preempted_request_resumes_with_its_matcher_state():
    # 4 blocks of 4 tokens: two 6-token prompts fit, growing them preempts the later one;
    # every bitmask row must allow exactly the next character of the request's own output
    scheduler, backend = constrained_scheduler(num_blocks=4)
    backend.gate.set()
    text = "xyzxyzxyz"
    for request_id in ("a", "b"):
        scheduler.add_request(choice_request(request_id, [text], prompt=6, max_tokens=16))
    wait_ready(scheduler)
    finishes, preempted = {}, 0
    while scheduler.has_unfinished_requests():
        produced = {r: len(request.output_token_ids) for r, request in scheduler.requests.items()}
        out = scheduler.schedule()
        preempted += out.num_preempted
        for request_id, row in out.structured_output_request_ids.items():
            count = produced[request_id]
            assert allowed(out.grammar_bitmask, row) == \
                ({byte_id(text[count])} if count < len(text) else {EOS})
        tokens = {r: byte_id(text[n]) if n < len(text) else EOS for r, n in produced.items()}
        outputs = unpack(scheduler.update_from_output(out, play_runner(scheduler, out, tokens)))
        finishes.update({o.request_id: o.finish_reason for o in outputs if o.finished})
    assert preempted >= 1
    assert finishes == {"a": "stop", "b": "stop"}


def async_constrained_scheduler(num_speculative_tokens: int = 0):
    backend = GatedBackend()
    backend.gate.set()
    manager = StructuredOutputManager(backend, VOCAB)
    return Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8),
                     CacheConfig(block_size=4, enable_prefix_caching=False), 256, 64,
                     max_concurrent_batches=2, structured_output_manager=manager,
                     async_scheduling=True, num_speculative_tokens=num_speculative_tokens)


def test_async_constrained_request_is_scheduled_every_step_with_a_late_bitmask():
    """Async scheduling: the constrained request runs in consecutive steps while its token is
    in flight; each step's bitmask is built late, after the step before it is accepted, and
    allows exactly the next character."""
    scheduler = async_constrained_scheduler()
    text = "abcab"
    scheduler.add_request(choice_request("c", [text], prompt=5, max_tokens=16))
    scheduler.add_request(make_request("free", 3, max_tokens=16, ignore_eos=True))
    wait([r.structured_output.future for r in scheduler.waiting_for_fsm], timeout=30)
    in_flight, steps, finish = None, 0, None
    while finish is None:
        sched = scheduler.schedule()
        steps += 1
        assert "c" in sched.num_scheduled_tokens            # every step, token in flight or not
        assert sched.has_structured_output_requests and sched.grammar_bitmask is None
        if in_flight is not None:
            assert scheduler.requests["c"].num_output_placeholders == 2
            outputs = scheduler.update_from_output(in_flight, play_async(scheduler, in_flight, text))
            finish = next((o.finish_reason for o in unpack(outputs)
                           if o.request_id == "c" and o.finished), None)
        grammar = scheduler.get_grammar_bitmask(sched)
        produced = len(scheduler.requests["c"].output_token_ids) if finish is None else None
        if finish is None:
            expected = {byte_id(text[produced])} if produced < len(text) else {EOS}
            assert allowed(grammar.grammar_bitmask, grammar.structured_output_request_ids["c"]) \
                == expected
        else:       # finished meanwhile: its token in this step is dropped, no row
            assert grammar.structured_output_request_ids == {} and grammar.grammar_bitmask is None
        in_flight = sched
    assert finish == "stop" and steps == len(text) + 2   # 5 letters + EOS, then the dropped step
    assert scheduler._late_grammar == {}


def play_async(scheduler, sched, text: str) -> ModelRunnerOutput:
    """The runner's answer to an async step: "c" samples the next character of ``text``
    (EOS after it), every other request token 7."""
    ids = list(sched.num_scheduled_tokens)
    produced = len(scheduler.requests["c"].output_token_ids)
    tokens = [(byte_id(text[produced]) if produced < len(text) else EOS) if request_id == "c"
              else 7 for request_id in ids]
    return ModelRunnerOutput(ids, tokens)


def test_async_with_speculation_builds_the_bitmask_at_schedule_time():
    """With speculative decoding the bitmask is not late: a constrained request waits for its
    token in flight and its step carries the bitmask."""
    scheduler = async_constrained_scheduler(num_speculative_tokens=2)
    scheduler.add_request(choice_request("c", ["ab"], prompt=5, max_tokens=16))
    wait([r.structured_output.future for r in scheduler.waiting_for_fsm], timeout=30)
    first = scheduler.schedule()
    assert not first.has_structured_output_requests
    assert allowed(first.grammar_bitmask, first.structured_output_request_ids["c"]) == {byte_id("a")}
    assert scheduler.has_constrained_running()
    second = scheduler.schedule()            # its token is in flight: not scheduled
    assert second.num_scheduled_tokens == {} and not second.has_structured_output_requests
