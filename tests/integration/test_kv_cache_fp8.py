"""fp8 KV cache end to end: greedy output agrees with the auto (model dtype) cache on >= 90%
of tokens over the shared prompt set, the logprob error is reported and bounded, and the same
byte budget buys exactly (model element size) x the blocks: 4x for float32, 2x for bfloat16.

Agreement is counted under teacher forcing: on the auto cache's greedy sequences, the share of
positions where the fp8 engine's top-1 token is the auto token. Free-running agreement
(position by position) is printed too; it is lower because one near-tie flipped early changes
every later position (the default model measured 0.79 free-running vs >0.9 forced)."""

from __future__ import annotations

import pytest

from pagellm import LLM, SamplingParams
from tests.integration.conftest import PROMPTS

MAX_TOKENS = 24
KV_BYTES = 256 * 2**20


def num_blocks(llm: LLM) -> int:
    return llm.llm_engine.engine_core.num_blocks


def compare_with_auto(auto: LLM, fp8: LLM, prompts, label: str) -> tuple[float, float]:
    """Prints and returns (teacher-forced greedy agreement, mean |logprob difference|) of the
    auto run's greedy tokens as scored by the fp8 engine on the very same sequences."""
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=0)
    reference = auto.generate(prompts, greedy, use_tqdm=False)
    free = fp8.generate(prompts, greedy, use_tqdm=False)
    pairs = [(a, b) for r, o in zip(reference, free)
             for a, b in zip(r.outputs[0].token_ids, o.outputs[0].token_ids)]
    sequences = [r.prompt_token_ids + r.outputs[0].token_ids for r in reference]
    score = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    scored = fp8.generate(sequences, score, use_tqdm=False)
    agree, errors = [], []
    for output, forced in zip(reference, scored):
        start = len(output.prompt_token_ids)
        completion = output.outputs[0]
        for index, (token, position) in enumerate(zip(completion.token_ids, completion.logprobs)):
            ours = forced.prompt_logprobs[start + index][token]
            agree.append(ours.rank == 1)
            errors.append(abs(ours.logprob - position[token].logprob))
    agreement, mean_error = sum(agree) / len(agree), sum(errors) / len(errors)
    print(f"{label}: greedy agreement {agreement:.3f} teacher-forced, "
          f"{sum(a == b for a, b in pairs) / len(pairs):.3f} free-running; logprob error mean "
          f"{mean_error:.4f} max {max(errors):.4f} over {len(errors)} tokens")
    return agreement, mean_error


def test_default_model_fp8_cache_agrees_with_auto(default_llm):
    fp8 = LLM("default", kv_cache_memory_bytes=KV_BYTES, max_model_len=2048, dtype="float32",
              kv_cache_dtype="fp8")
    assert num_blocks(fp8) == 4 * num_blocks(default_llm)      # same bytes, 1 vs 4 per element
    agreement, mean_error = compare_with_auto(default_llm, fp8, PROMPTS, "default model, fp8")
    assert agreement >= 0.9 and mean_error < 0.05


# (kv_cache_dtype, minimum agreement, maximum mean logprob error). A random tiny model's
# next-token distributions are nearly flat, so near-ties flip far more often than on a trained
# model; measured: e4m3 0.875 / 0.106, e5m2 (2 mantissa bits) 0.725 / 0.260.
TINY_BOUNDS = [("fp8_e4m3", 0.75, 0.25), ("fp8_e5m2", 0.6, 0.5)]


@pytest.mark.parametrize("kv_cache_dtype,min_agreement,max_error", TINY_BOUNDS)
def test_tiny_model_bf16_fp8_cache_doubles_blocks_and_agrees(tiny_model_dirs, kv_cache_dtype,
                                                             min_agreement, max_error):
    model = str(tiny_model_dirs["llama"])
    args = dict(kv_cache_memory_bytes=4 * 2**20, dtype="bfloat16", block_size=4)
    auto, fp8 = LLM(model, **args), LLM(model, kv_cache_dtype=kv_cache_dtype, **args)
    assert num_blocks(fp8) == 2 * num_blocks(auto)
    prompts = [list(range(3, 3 + n)) for n in (1, 5, 8, 13, 30)]
    agreement, mean_error = compare_with_auto(auto, fp8, prompts, f"tiny llama bf16, {kv_cache_dtype}")
    assert agreement >= min_agreement and mean_error < max_error
