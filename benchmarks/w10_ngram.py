"""W10 (CPU part): the default model at batch 1 on copy-heavy prompts, n-gram speculation
(k=4) vs none: output tokens/s, outputs identical (greedy), acceptance rate and mean
acceptance length; plus a free-form prompt where drafts are mostly wrong (speculation costs
time there unless adaptive k turns it off). Each prompt runs without speculation, with
speculation (adaptive k off, the default; ``--adaptive on`` or ``both`` for it). The CPU
is shared: each setting runs ``--repeats`` times, best kept. ``PAGELLM_BATCH_INVARIANT=1``
in the environment runs every engine in batch-invariant mode (same outputs expected).

    PYTHONPATH=. python benchmarks/w10_ngram.py --max-tokens 256 --repeats 2
    PYTHONPATH=. python benchmarks/w10_ngram.py --max-tokens 96 --repeats 1 --adaptive both
    PYTHONPATH=. python benchmarks/w10_ngram.py --max-tokens 128 --k 8 --prompt-lookup-min 1 \
        --stop-at-eos --prompts quote_summary,rewrite_code
    PYTHONPATH=. python benchmarks/w10_ngram.py --max-tokens 256 --repeats 2 --chat --stop-at-eos \
        --prompts rewrite_code,quote_summary,rewrite_code_long,quote_summary_long

``--chat`` sends each task as one user message through the default model's chat template (an
instruct model: what a chat client sends); RESULTS.md, session 9, has why W10 is read that way.
``PAGELLM_GGUF_CPU_MULTI_ROWS=0`` turns the multi-row GGUF kernel off (verify rows then go
through torch's int4 kernel, 4 rows per pass): the before/after of RESULTS.md, session 7.
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
LONG_CODE = CODE + '''

def running_max(values):
    result = []
    best = None
    for value in values:
        if best is None or value > best:
            best = value
        result.append(best)
    return result


def normalize(values):
    low = min(values)
    high = max(values)
    if high == low:
        return [0.0 for _ in values]
    return [(value - low) / (high - low) for value in values]
'''
TEXT = ("The river rose three feet overnight. The bridge on Mill Street was closed at dawn. "
        "Volunteers filled sandbags near the school. The mayor asked residents to stay home "
        "until noon.")
LONG_TEXT = (TEXT + " Buses were rerouted along the ridge road. The hospital moved its "
             "ambulances to the north lot. Power failed in the lower town for two hours. A "
             "shelter opened in the church hall with cots and hot soup. By evening the water had "
             "begun to fall, and the bridge reopened the next morning.")
REWRITE = ("Rewrite this Python {} with one change: rename `values` to `xs`. "
           "Output only the code.\n\n")
QUOTE = "Summarize the text by quoting its sentences verbatim.\n\nText: "
PROMPTS = {
    "rewrite_code": REWRITE.format("function") + CODE + "\nRewritten:\n",
    "quote_summary": QUOTE + TEXT + "\n\nQuoted summary: The river rose three feet overnight.",
    "creative_free": ("Write a short, vivid story about a lighthouse keeper who finds a "
                      "strange glowing shell on the beach one stormy night. Use fresh "
                      "imagery and never repeat a sentence.\n\nStory:"),
    "varied_list": ("Name a different animal after each \"a big\", never the same one twice: "
                    "a big cat, a big dog, a big horse, a big"),
}
CHAT_PROMPTS = {
    "rewrite_code": REWRITE.format("function") + CODE,
    "quote_summary": QUOTE + TEXT,
    "rewrite_code_long": REWRITE.format("code") + LONG_CODE,
    "quote_summary_long": QUOTE + LONG_TEXT,
    "creative_free": PROMPTS["creative_free"].removesuffix("\n\nStory:"),
    "varied_list": PROMPTS["varied_list"],
}
"""``--chat``: the same tasks as one user message through the default model's chat template
(it is an instruct model; a chat client sends this), without the completion scaffolding."""


def run(llm: LLM, prompt: str, max_tokens: int, repeats: int, ignore_eos: bool = True,
        chat: bool = False):
    """(best wall-clock tokens/s, best tokens per CPU-second of this process, token ids).
    The CPU-time rate is the steadier one on a shared machine (other processes' load slows
    the wall clock, not this process's CPU time). ``chat``: ``prompt`` is one user message
    sent through the chat template."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
    best, best_cpu, tokens = 0.0, 0.0, None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        if chat:
            output = llm.chat([{"role": "user", "content": prompt}], params,
                              use_tqdm=False)[0].outputs[0]
        else:
            output = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
        best = max(best, len(output.token_ids) / (time.perf_counter() - start))
        best_cpu = max(best_cpu, len(output.token_ids) / (time.process_time() - start_cpu))
        tokens = list(output.token_ids)
    return best, best_cpu, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=256, help="output tokens at most")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, best kept")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--dtype", default="float32", help="activation dtype")
    parser.add_argument("--adaptive", choices=["on", "off", "both"], default="off",
                        help="adaptive k for the speculating engine")
    parser.add_argument("--prompts", default="rewrite_code,quote_summary,creative_free,"
                        "varied_list", help="comma-separated, from: " + ", ".join(CHAT_PROMPTS)
                        + " (the *_long ones with --chat only)")
    parser.add_argument("--prompt-lookup-min", type=int, default=2, help="shortest n-gram")
    parser.add_argument("--prompt-lookup-max", type=int, default=4, help="longest n-gram")
    parser.add_argument("--stop-at-eos", action="store_true",
                        help="end at EOS (the copy task's own end) instead of ignoring it")
    parser.add_argument("--chat", action="store_true",
                        help="send each task as a user message through the chat template")
    args = parser.parse_args()
    prompts = CHAT_PROMPTS if args.chat else PROMPTS
    unknown = [name for name in args.prompts.split(",") if name not in prompts]
    if unknown:
        parser.error(f"unknown prompt(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(prompts)}{'' if args.chat else ' (or add --chat)'}")
    common = dict(kv_cache_memory_bytes=256 * 2**20, max_model_len=2048, dtype=args.dtype)
    plain = LLM("default", **common)
    ngram = {"method": "ngram", "num_speculative_tokens": args.k,
             "prompt_lookup_max": args.prompt_lookup_max, "prompt_lookup_min": args.prompt_lookup_min}
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.adaptive]
    specs = {adaptive: LLM("default", speculative_config=dict(ngram, adaptive=adaptive),
                           **common) for adaptive in modes}
    # First-call costs out of the timings: a prompt of >= 16 tokens, so a prefill makes the
    # GGUF layers' dense bf16 copies (made on first use at >= 16 rows) before any timed run.
    for llm in (plain, *specs.values()):
        llm.generate([PROMPTS["creative_free"]], SamplingParams(temperature=0.0, max_tokens=8),
                     use_tqdm=False)
    for name in args.prompts.split(","):
        ignore_eos = not args.stop_at_eos
        base_tps, base_cpu, base_tokens = run(plain, prompts[name], args.max_tokens, args.repeats,
                                              ignore_eos, args.chat)
        for adaptive, spec in specs.items():
            stats = spec.llm_engine.engine_core.scheduler.spec_stats
            before = (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens)
            spec_tps, spec_cpu, spec_tokens = run(spec, prompts[name], args.max_tokens,
                                                  args.repeats, ignore_eos, args.chat)
            drafts, draft_tokens, accepted = (now - then for now, then in zip(
                (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens), before))
            print(f"{name}: no spec {base_tps:.1f} tok/s, ngram k={args.k} adaptive="
                  f"{adaptive} {spec_tps:.1f} tok/s ({len(spec_tokens)} tokens), ratio {spec_tps / base_tps:.2f}x (per CPU-second "
                  f"{base_cpu:.1f} vs {spec_cpu:.1f}: {spec_cpu / base_cpu:.2f}x), same "
                  f"output {base_tokens == spec_tokens}, drafts {drafts}, acceptance rate "
                  f"{accepted / max(draft_tokens, 1):.1%}, mean acceptance length "
                  f"{1 + accepted / max(drafts, 1):.2f}", flush=True)


if __name__ == "__main__":
    main()
