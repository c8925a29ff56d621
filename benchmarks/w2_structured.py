"""The cost of structured outputs: W2-like offline throughput with half the requests under a
JSON schema vs none constrained (target: <= 10% slower), and the compile time of a large
schema (runs on CPU too).

GPU (one H200, Qwen3-0.6B as W2; any local model directory works):
    PYTHONPATH=. python benchmarks/w2_structured.py --model /models/Qwen3-0.6B --num-prompts 256
Without a hub: Qwen3-0.6B shapes with random weights and another tokenizer (the vocabulary is
only what the grammar compiles against; the bitmask still covers all 151,936 logits):
    PYTHONPATH=. python benchmarks/w2_structured.py --model qwen3-0.6b --load-format dummy \
        --tokenizer DIR_WITH_tokenizer.json
CPU, a tiny random model (the overhead of constraint at batch 64, async scheduling on):
    PYTHONPATH=. python benchmarks/w2_structured.py --model TINY_DIR --num-prompts 64 \
        --input-len 16,64 --output-len 100,300 --max-model-len 512 --async-scheduling
Compile time only (CPU is fine; the default model's tokenizer):
    PYTHONPATH=. python benchmarks/w2_structured.py --compile-only

W2: 256 requests, input and output lengths uniform in [100, 1024] (seed 0). Constrained
requests ask for the JSON schema below with ignore_eos off; its array's ``minItems`` is at
least max_tokens, so the grammar cannot end early and max_tokens ends every request
("length"): both runs decode the same tokens (checked: the run fails otherwise) and the
difference is the cost of constraint.
"""

from __future__ import annotations

import argparse
import json
import random
import time

MAX_OUTPUT_LEN = 1024
"""W2's longest output (max_tokens is uniform in [100, MAX_OUTPUT_LEN])."""


def schema_for(min_items: int) -> dict:
    """W2's JSON schema: an array of objects with at least ``min_items`` entries. Each entry
    takes more than one token, so with ``min_items`` >= max_tokens the grammar cannot end
    before max_tokens (xgrammar enforces minItems: the closing bracket is masked until then)
    and a constrained request decodes exactly max_tokens tokens, like an ignore_eos one."""
    return {"type": "object", "properties": {
        "items": {"type": "array", "minItems": min_items, "items": {
            "type": "object", "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 100000},
                "label": {"type": "string", "pattern": "^[a-z ]{1,40}$"},
                "score": {"type": "number"},
                "kind": {"enum": ["alpha", "beta", "gamma"]}},
            "required": ["id", "label", "score", "kind"]}}},
        "required": ["items"]}


SCHEMA = schema_for(MAX_OUTPUT_LEN)


def large_schema(num_properties: int = 300) -> dict:
    """An object with ``num_properties`` typed, required properties (nested every tenth)."""
    kinds = [{"type": "integer", "minimum": -5, "maximum": 500}, {"type": "string"},
             {"enum": ["a", "b", "c", "d"]}, {"type": "array", "items": {"type": "number"}},
             {"type": "boolean"}]
    properties = {}
    for index in range(num_properties):
        schema = kinds[index % len(kinds)]
        if index % 10 == 9:
            schema = {"type": "object", "properties": {"x": kinds[0], "y": kinds[1]},
                      "required": ["x", "y"]}
        properties[f"field_{index}"] = schema
    return {"type": "object", "properties": properties, "required": list(properties)}


def compile_time(model: str) -> None:
    """Seconds to validate (API side) and compile (engine side, with the tokenizer) the
    large schema, cold and cached."""
    from pagellm.engine.llm_engine import resolve_config
    from pagellm.engine.tokenizer import load_tokenizer
    from pagellm.sampling_params import StructuredOutputsParams
    from pagellm.structured_output.xgrammar_backend import XgrammarBackend

    config, hf_config = resolve_config(model=model)
    tokenizer = load_tokenizer(config.model.tokenizer)
    backend = XgrammarBackend(lambda: tokenizer, hf_config.vocab_size)
    backend.compile(StructuredOutputsParams(regex="warm"))      # TokenizerInfo once
    params = StructuredOutputsParams(json=large_schema())
    start = time.perf_counter()
    backend.validate(params)
    validate_s = time.perf_counter() - start
    start = time.perf_counter()
    backend.compile(params)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    backend.compile(params)
    cached_s = time.perf_counter() - start
    print(json.dumps({"schema_bytes": len(json.dumps(params.json)), "validate_s": validate_s,
                      "compile_cold_s": cold_s, "compile_cached_s": cached_s}))


def throughput(model: str, num_prompts: int, fraction: float, engine_args: dict,
               input_len: tuple[int, int] = (100, 1024),
               output_len: tuple[int, int] = (100, MAX_OUTPUT_LEN)) -> dict:
    """Generate W2 with ``fraction`` of the requests constrained (prompt and output lengths
    uniform in ``input_len`` and ``output_len``); the run's numbers."""
    from pagellm import LLM, SamplingParams
    from pagellm.sampling_params import StructuredOutputsParams

    rng = random.Random(0)
    llm = LLM(model, **engine_args)
    schema = schema_for(output_len[1])
    vocab = llm.get_tokenizer().vocab_size
    prompts, params = [], []
    for index in range(num_prompts):
        prompts.append({"prompt_token_ids": [rng.randrange(100, vocab - 1)
                                             for _ in range(rng.randint(*input_len))]})
        constrained = index < num_prompts * fraction
        params.append(SamplingParams(
            temperature=1.0, seed=index, max_tokens=rng.randint(*output_len),
            ignore_eos=not constrained,
            structured_outputs=StructuredOutputsParams(json=schema) if constrained else None))
    # warm-up (both runs alike): the grammar compiles here, not while the timed run's
    # constrained requests wait for it (compile time is measured apart, compile_time)
    llm.generate(prompts[:1], [SamplingParams(
        max_tokens=2, structured_outputs=params[0].structured_outputs)], use_tqdm=False)
    steps_before = llm.llm_engine.engine_core.num_steps
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    expected = sum(p.max_tokens for p in params)
    reasons = sorted({o.outputs[0].finish_reason for o in outputs})
    core = llm.llm_engine.engine_core
    result = {"constrained_fraction": fraction, "output_tokens": tokens,
              "expected_tokens": expected, "finish_reasons": reasons, "seconds": elapsed,
              "output_tokens_per_s": tokens / elapsed, "engine_steps": core.num_steps - steps_before}
    print(json.dumps(result))
    if tokens != expected:
        raise SystemExit(f"unequal work: {tokens} tokens decoded, {expected} asked for "
                         f"(finish reasons {reasons})")
    del llm
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--input-len", default="100,1024", help="MIN,MAX prompt tokens")
    parser.add_argument("--output-len", default=f"100,{MAX_OUTPUT_LEN}",
                        help="MIN,MAX output tokens (max_tokens)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--async-scheduling", action="store_true",
                        help="force async scheduling on (default: the engine's, on for CUDA)")
    args = parser.parse_args()
    compile_time(args.tokenizer or args.model)
    if args.compile_only:
        return
    from pagellm.bench.common import resolve_bench_model
    model = resolve_bench_model(args.model)
    engine_args = {"load_format": args.load_format, "max_model_len": args.max_model_len}
    if args.tokenizer:
        engine_args["tokenizer"] = args.tokenizer
    if args.async_scheduling:
        engine_args["async_scheduling"] = True
    lengths = {"input_len": _range(args.input_len), "output_len": _range(args.output_len)}
    free = throughput(model, args.num_prompts, 0.0, engine_args, **lengths)
    half = throughput(model, args.num_prompts, 0.5, engine_args, **lengths)
    print(json.dumps({"slowdown": 1 - half["output_tokens_per_s"] / free["output_tokens_per_s"],
                      "equal_tokens": free["output_tokens"] == half["output_tokens"]}))


def _range(text: str) -> tuple[int, int]:
    low, high = (int(part) for part in text.split(","))
    return low, high


if __name__ == "__main__":
    main()
