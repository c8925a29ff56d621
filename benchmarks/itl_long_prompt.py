"""Inter-token latency of running decodes when a long prompt arrives, per
``long_prefill_token_threshold`` (decode-first prompt chunks), on the default model.

``--decodes`` requests decode (greedy, ignore_eos) from a short prompt; after ``--warm-steps``
steps one ``--prompt-len``-token prompt arrives. Every step that carries a decode token is one
inter-token interval of every decoding stream, so the step wall times are the ITLs. Prints,
per threshold: median and max ITL over the steps while the long prompt prefills, its TTFT
(steps and seconds from arrival to its first token), and the decode-only median.

    PYTHONPATH=. python benchmarks/itl_long_prompt.py --thresholds 0 64 --prompt-len 1024
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from pagellm.engine.llm_engine import LLMEngine
from pagellm.sampling_params import SamplingParams


def run(threshold: int, args) -> str:
    engine = LLMEngine.from_engine_args(model=args.model, long_prefill_token_threshold=threshold,
                                        enable_prefix_caching=False, device="cpu")
    rng = random.Random(0)
    decode_params = SamplingParams(max_tokens=2000, ignore_eos=True, temperature=0.0)
    for _ in range(args.decodes):
        engine.add_request([rng.randrange(100, 40000) for _ in range(16)], decode_params)
    decode_only = []
    for _ in range(args.warm_steps):
        start = time.perf_counter()
        engine.step()
        decode_only.append(time.perf_counter() - start)
    engine.add_request([rng.randrange(100, 40000) for _ in range(args.prompt_len)],
                       SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0),
                       request_id="long")
    arrival, during, first_token = time.perf_counter(), [], None
    while first_token is None:
        start = time.perf_counter()
        outputs = engine.step()
        during.append(time.perf_counter() - start)
        if any(o.request_id == "long" and o.finished for o in outputs):
            first_token = time.perf_counter() - arrival
    engine.engine_core.shutdown()
    return (f"threshold {threshold:5d}: decode-only ITL median {statistics.median(decode_only[2:]) * 1e3:7.1f} ms"
            f"; while the {args.prompt_len}-token prompt prefills ITL median "
            f"{statistics.median(during) * 1e3:7.1f} ms, max {max(during) * 1e3:7.1f} ms; its TTFT "
            f"{len(during)} steps, {first_token:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--decodes", type=int, default=8)
    parser.add_argument("--warm-steps", type=int, default=6)
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--thresholds", type=int, nargs="+", default=[0, 64])
    args = parser.parse_args()
    for threshold in args.thresholds:
        print(run(threshold, args), flush=True)


if __name__ == "__main__":
    main()
