"""W7: engine CPU overhead per step with a null model.

256 running decode requests, block size 16, prefix caching on. Times, per step, the
scheduler (schedule + update_from_output) and the runner's input preparation (request-state
diffs, flattened inputs, attention metadata, sampling metadata) — everything but the forward
and the sampler. Run: PYTHONPATH=. python benchmarks/w7_engine_overhead.py [--device cuda]
Also timed, outside the total: the step's messages through msgpack (encode + decode) as the
process split sends them, executor -> worker (``ExecuteModel``) and engine core -> API process
(``EngineCoreOutputs``).
``--profile N``: run the timed steps under cProfile and print the N functions with the most
cumulative time, per step in µs (the profiler inflates Python time about 3x).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import time

import numpy as np
import torch

from pagellm.config import CacheConfig, SchedulerConfig
from pagellm.core.request import Request
from pagellm.core.scheduler import Scheduler
from pagellm.core.sched_output import ModelRunnerOutput
from pagellm.sampling_params import SamplingParams
from pagellm.worker.model_runner import ModelRunner


class _NullModel(torch.nn.Module):
    vocab_size = 32000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=args.num_requests, max_num_batched_tokens=8192),
                          CacheConfig(block_size=16, enable_prefix_caching=True),
                          max_model_len=4096, num_blocks=args.num_requests * 80)
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=10**6, ignore_eos=True)
    for i in range(args.num_requests):
        prompt = [(i * 7919 + j) % 32000 for j in range(args.prompt_len)]
        scheduler.add_request(Request(str(i), prompt, params, max_tokens=3000))
    from pagellm.platforms import Platform
    runner = ModelRunner(_NullModel(), Platform(device.type, device), 16, 20,
                         max_num_reqs=args.num_requests, max_model_len=4096)
    batch = runner.batch
    # prefill everything first (not timed)
    while any(r.num_output_tokens == 0 for r in scheduler.requests.values()):
        sched = scheduler.schedule()
        batch.apply(sched)
        done = [r for r in sched.num_scheduled_tokens
                if scheduler.requests[r].num_computed_tokens == scheduler.requests[r].num_tokens]
        batch.append_sampled(np.array([batch.row_of[r] for r in done], dtype=np.int64), [1] * len(done))
        scheduler.update_from_output(sched, ModelRunnerOutput(done, [1] * len(done)))
    sched_us, prep_us, message_us = [], [], []
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    for step in range(args.steps):
        t0 = time.perf_counter()
        sched = scheduler.schedule()
        t1 = time.perf_counter()
        batch.apply(sched)
        inputs = batch.build_step_inputs(sched, device)
        rows = inputs.rows[inputs.sample_rows]
        ids = [inputs.request_ids[r] for r in inputs.sample_rows]
        runner._sampling_metadata(rows, ids)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        batch.append_sampled(rows, [2 + step] * len(ids))
        outputs = scheduler.update_from_output(sched, ModelRunnerOutput(ids, [2 + step] * len(ids)))
        t3 = time.perf_counter()
        message_us.append(_time_messages(sched, outputs))
        assert len(sched.num_scheduled_tokens) == args.num_requests
        sched_us.append((t1 - t0 + t3 - t2) * 1e6)
        prep_us.append((t2 - t1) * 1e6)
    if profiler is not None:
        profiler.disable()
        _print_profile(profiler, args.profile, args.steps)
    total = [a + b for a, b in zip(sched_us, prep_us)]
    result = {"num_requests": args.num_requests, "device": args.device,
              "scheduler_us_median": statistics.median(sched_us),
              "input_prep_us_median": statistics.median(prep_us),
              "total_us_median": statistics.median(total),
              "total_us_p90": sorted(total)[int(0.9 * len(total))],
              "messages_us_median": statistics.median(message_us)}
    print(json.dumps(result))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "w7.json"), "w") as f:
            json.dump(result, f)


def _time_messages(sched, outputs) -> float:
    """µs to encode and decode the step's two process-boundary messages."""
    from pagellm.distributed import worker_proc
    from pagellm.engine import messages

    start = time.perf_counter()
    worker_proc.call_decoder.decode(worker_proc.encoder.encode(worker_proc.ExecuteModel(sched)))
    messages.core_message_decoder.decode(messages.encoder.encode(outputs))
    return (time.perf_counter() - start) * 1e6


def _print_profile(profiler: cProfile.Profile, top: int, steps: int) -> None:
    """The ``top`` functions by cumulative time, in µs per step (tottime and cumtime)."""
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][3])[:top]
    print(f"{'cum us/step':>12} {'own us/step':>12} {'calls/step':>10}  function")
    for (path, line, name), (_, calls, tottime, cumtime, _) in rows:
        print(f"{cumtime / steps * 1e6:12.1f} {tottime / steps * 1e6:12.1f} "
              f"{calls / steps:10.1f}  {os.path.basename(path)}:{line}({name})")


if __name__ == "__main__":
    main()
