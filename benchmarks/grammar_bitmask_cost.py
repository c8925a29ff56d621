"""Host cost of one step's grammar bitmask: ``StructuredOutputManager.grammar_bitmask`` for a
batch of constrained requests (W2's JSON schema, each matcher advanced a random number of
valid tokens), with a tokenizer whose vocabulary is padded to the model's logits width.

CPU is enough (the bitmask is built on the host):
    PYTHONPATH=. python benchmarks/grammar_bitmask_cost.py --tokenizer .whl/w2model \
        --vocab-size 151936 --batch-size 128
Prints one JSON line: milliseconds per step (median of ``--repeats``) of the manager's fill
(xgrammar's BatchGrammarMatcher) and of a per-request loop (the fill before), and the
microseconds per request.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import numpy as np


def advanced_requests(manager, batch_size: int, max_prefix: int, seed: int) -> list:
    """``batch_size`` core Requests under W2's schema, each matcher advanced over 0..max_prefix
    tokens drawn uniformly from the tokens its grammar allows."""
    from benchmarks.w2_structured import schema_for
    from pagellm.core.request import Request
    from pagellm.sampling_params import SamplingParams, StructuredOutputsParams

    rng = random.Random(seed)
    params = SamplingParams(max_tokens=1024,
                            structured_outputs=StructuredOutputsParams(json=schema_for(1024)))
    row = np.zeros((1, manager.num_words), dtype=np.int32)
    requests = []
    for index in range(batch_size):
        request = Request(f"r{index}", [1, 2, 3], params, max_tokens=1024)
        request.structured_output = manager.grammar_init(params)
        request.structured_output.future.result()
        assert request.structured_output.is_ready() and request.structured_output.error is None
        grammar = request.structured_output.grammar
        for _ in range(rng.randint(0, max_prefix)):
            grammar.fill_bitmask(row, 0)
            allowed = np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little"))
            assert grammar.accept_tokens([int(rng.choice(allowed))])
        requests.append(request)
    return requests


def per_request_fill(manager, requests) -> np.ndarray:
    """The bitmask filled one matcher at a time (before the batch fill): the baseline."""
    bitmask = np.full((len(requests), manager.num_words), -1, dtype=np.int32)
    for row, request in enumerate(requests):
        request.structured_output.grammar.fill_bitmask(bitmask, row)
    return bitmask


def median_ms(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=".whl/w2model")
    parser.add_argument("--vocab-size", type=int, default=151936)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-prefix", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    from pagellm.engine.tokenizer import load_tokenizer
    from pagellm.structured_output.manager import StructuredOutputManager
    from pagellm.structured_output.xgrammar_backend import XgrammarBackend

    tokenizer = load_tokenizer(args.tokenizer)
    manager = StructuredOutputManager(XgrammarBackend(lambda: tokenizer, args.vocab_size),
                                      args.vocab_size)
    requests = advanced_requests(manager, args.batch_size, args.max_prefix, seed=0)
    manager.grammar_bitmask(requests)                           # warm up
    batch_ms = median_ms(lambda: manager.grammar_bitmask(requests), args.repeats)
    loop_ms = median_ms(lambda: per_request_fill(manager, requests), args.repeats)
    print(json.dumps({"batch_size": args.batch_size, "vocab_size": args.vocab_size,
                      "bitmask_ms": round(batch_ms, 3), "per_request_loop_ms": round(loop_ms, 3),
                      "per_request_us": round(batch_ms * 1e3 / args.batch_size, 1)}))
    manager.shutdown()


if __name__ == "__main__":
    main()
