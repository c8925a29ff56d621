"""W10 (CPU part): the default model at batch 1 on copy-heavy prompts, n-gram speculation
(k=4) vs none: output tokens/s, outputs identical (greedy), acceptance rate and mean
acceptance length. The CPU is shared: each setting runs ``--repeats`` times, best kept.

    PYTHONPATH=. python benchmarks/w10_ngram.py --max-tokens 256 --repeats 2
"""

from __future__ import annotations

import argparse
import time

from pagellm import LLM, SamplingParams

CODE = '''def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    result = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        if index >= window - 1:
            result.append(total / window)
    return result
'''
PROMPTS = {
    "rewrite_code": ("Rewrite this Python function with one change: rename `values` to `xs`. "
                     "Output only the code.\n\n" + CODE + "\nRewritten:\n"),
    "quote_summary": ("Summarize the text by quoting its sentences verbatim.\n\nText: The river "
                      "rose three feet overnight. The bridge on Mill Street was closed at dawn. "
                      "Volunteers filled sandbags near the school. The mayor asked residents to "
                      "stay home until noon.\n\nQuoted summary: The river rose three feet "
                      "overnight."),
}


def run(llm: LLM, prompt: str, max_tokens: int, repeats: int):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    best, tokens = 0.0, None
    for _ in range(repeats):
        start = time.perf_counter()
        output = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
        best = max(best, len(output.token_ids) / (time.perf_counter() - start))
        tokens = list(output.token_ids)
    return best, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    common = dict(kv_cache_memory_bytes=256 * 2**20, max_model_len=2048, dtype=args.dtype)
    plain = LLM("default", **common)
    spec = LLM("default", speculative_config={"method": "ngram", "num_speculative_tokens": args.k,
                                              "prompt_lookup_max": 4, "prompt_lookup_min": 2},
               **common)
    for name, prompt in PROMPTS.items():
        base_tps, base_tokens = run(plain, prompt, args.max_tokens, args.repeats)
        stats = spec.llm_engine.engine_core.scheduler.spec_stats
        before = (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens)
        spec_tps, spec_tokens = run(spec, prompt, args.max_tokens, args.repeats)
        drafts, draft_tokens, accepted = (now - then for now, then in zip(
            (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens), before))
        print(f"{name}: no spec {base_tps:.1f} tok/s, ngram k={args.k} {spec_tps:.1f} tok/s, "
              f"ratio {spec_tps / base_tps:.2f}x, same output {base_tokens == spec_tokens}, "
              f"acceptance rate {accepted / max(draft_tokens, 1):.1%}, "
              f"mean acceptance length {1 + accepted / max(drafts, 1):.2f}")


if __name__ == "__main__":
    main()
