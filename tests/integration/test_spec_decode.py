"""Speculative decoding (n-gram) end to end: greedy output token-for-token equal to no
speculation (default model and tiny models, batched, prefix caching, forced preemption),
seeded sampling reproducible, and the sampled token distribution unchanged (chi-square)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from pagellm import LLM, SamplingParams
from tests.integration.conftest import PROMPTS

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
         "prompt_lookup_min": 1}
COPY_PROMPT = ("Repeat the list exactly: apple, banana, cherry, apple, banana, cherry, apple, "
               "banana, cherry, apple, banana,")
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def _token_ids(outputs) -> list[list[int]]:
    return [list(output.outputs[0].token_ids) for output in outputs]


def _spec_stats(llm):
    return llm.llm_engine.engine_core.scheduler.spec_stats


@pytest.mark.parametrize("variant", ["plain", "preempt_recompute"])
def test_default_model_greedy_identical(variant, default_llm, default_model_path):
    prompts = PROMPTS + [COPY_PROMPT]
    expected = _token_ids(default_llm.generate(prompts, GREEDY, use_tqdm=False))
    args = dict(kv_cache_memory_bytes=256 * 2**20, max_model_len=512, dtype="float32",
                speculative_config=NGRAM)
    if variant == "preempt_recompute":   # 20 blocks of 16 tokens for ~28 blocks of demand
        args.update(kv_cache_memory_bytes=20 * 737280, max_model_len=256)
    llm = LLM(default_model_path, **args)
    assert _token_ids(llm.generate(prompts, GREEDY, use_tqdm=False)) == expected
    stats = _spec_stats(llm)
    assert stats.num_draft_tokens > 0 and stats.num_accepted_tokens > 0
    assert llm.llm_engine.stats().kv_cache_usage == 0.0
    if variant == "preempt_recompute":
        assert llm.llm_engine.stats().num_preemptions > 0


def test_default_model_kept_quantized_k4_verify_greedy_identical(default_model_path,
                                                                 monkeypatch):
    """The default model kept in Q4_1 (as served; the suite dequantizes GGUF by default),
    batch 1, k = 4: each verify's 5 rows go through the multi-row GGUF kernel
    (pagellm.ops.gguf_cpu, bit-identical per row to the decode step's torch kernel)."""
    from pagellm.ops import gguf_cpu

    monkeypatch.delenv("PAGELLM_GGUF_DEQUANTIZE", raising=False)
    args = dict(kv_cache_memory_bytes=64 * 2**20, max_model_len=512, dtype="float32")
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    plain = LLM(default_model_path, **args)
    before = gguf_cpu.calls
    expected = _token_ids(plain.generate([COPY_PROMPT], params, use_tqdm=False))
    assert gguf_cpu.calls == before                   # batch-1 decode: torch's kernel
    spec = LLM(default_model_path, speculative_config=dict(NGRAM, num_speculative_tokens=4),
               **args)
    assert _token_ids(spec.generate([COPY_PROMPT], params, use_tqdm=False)) == expected
    assert gguf_cpu.calls > before                    # the verifies took the new kernel
    assert _spec_stats(spec).num_accepted_tokens > 0


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tiny_models_greedy_identical_with_prefix_caching_and_preemption(arch, tiny_model_dirs):
    model_dir = str(tiny_model_dirs[arch])
    shared = [5, 6, 7, 8] * 6
    prompts = [shared + list(range(10, 10 + n)) for n in (1, 4, 9)] + [[9, 8] * 10, [40] * 3]
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    base = LLM(model_dir, kv_cache_memory_bytes=8 * 2**20, dtype="float32", block_size=4)
    expected = _token_ids(base.generate(prompts, params, use_tqdm=False))
    # 20 blocks of 4 tokens (2 layers x K,V x 2 heads x head_dim fp32) for ~60 of demand
    head_dim = {"llama": 16, "qwen3": 32}[arch]
    spec = LLM(model_dir, kv_cache_memory_bytes=20 * 4 * 2 * 2 * 2 * head_dim * 4,
               dtype="float32", block_size=4, max_model_len=64, speculative_config=NGRAM)
    assert _token_ids(spec.generate(prompts, params, use_tqdm=False)) == expected
    stats = spec.llm_engine.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert _spec_stats(spec).num_accepted_tokens > 0
    assert stats.kv_cache_usage == 0.0


def test_seeded_sampling_reproducible_and_logprobs_per_token(tiny_model_dirs):
    llm = LLM(str(tiny_model_dirs["llama"]), kv_cache_memory_bytes=8 * 2**20, dtype="float32",
              speculative_config=NGRAM)
    params = SamplingParams(temperature=0.2, max_tokens=30, seed=1234, logprobs=2,
                            ignore_eos=True)
    prompts = [[5, 6, 7, 8] * 5, [9, 8] * 8]
    first = llm.generate(prompts, params, use_tqdm=False)
    second = llm.generate(prompts, params, use_tqdm=False)
    assert _token_ids(first) == _token_ids(second)
    assert _spec_stats(llm).num_draft_tokens > 0      # drafts were verified under sampling
    for output in first:
        completion = output.outputs[0]
        assert len(completion.logprobs) == len(completion.token_ids) == 30
        assert all(token in entry for token, entry in zip(completion.token_ids, completion.logprobs))


def _chi_square_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.1% quantile of chi-square(df), Wilson-Hilferty approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _two_sample_chi_square(a: Counter, b: Counter) -> tuple[float, int]:
    """Chi-square statistic and degrees of freedom of a 2 x m contingency table (tokens with
    fewer than 10 draws in both samples pooled)."""
    keys = [t for t in set(a) | set(b) if a[t] + b[t] >= 10]
    rows = [[a[t] for t in keys] + [sum(a.values()) - sum(a[t] for t in keys)],
            [b[t] for t in keys] + [sum(b.values()) - sum(b[t] for t in keys)]]
    cols = [c for c in range(len(rows[0])) if rows[0][c] + rows[1][c] > 0]
    total = sum(map(sum, rows))
    stat = 0.0
    for row in rows:
        for c in cols:
            expected = sum(row) * (rows[0][c] + rows[1][c]) / total
            stat += (row[c] - expected) ** 2 / expected
    return stat, len(cols) - 1


class _ModeProposer:
    """Drafts the most common baseline token of each coming output position: the random tiny
    model does not copy its context, so n-gram drafts are rarely accepted under sampling;
    these are accepted often and rejected often, which is what the test needs (the verifier
    must keep the target distribution for any draft)."""

    def __init__(self, prompt_len: int, modes: list[int], k: int):
        self.prompt_len, self.modes, self.k = prompt_len, modes, k

    def propose(self, token_ids, lengths) -> list[list[int]]:
        return [self.modes[int(n) - self.prompt_len:int(n) - self.prompt_len + self.k]
                for n in lengths]


def test_sampled_distribution_unchanged_chi_square(tiny_model_dirs):
    """The tokens at output positions 1, 2 and 3 (covered by drafts) over 600 seeded samples,
    with and without speculation: same distribution at each position (p > 0.001)."""
    prompt = [5, 6, 7, 8] * 4 + [5, 6]
    args = dict(kv_cache_memory_bytes=16 * 2**20, dtype="float32", max_num_seqs=256)
    samples = [SamplingParams(temperature=0.35, max_tokens=4, seed=i, ignore_eos=True)
               for i in range(600)]
    base = LLM(str(tiny_model_dirs["llama"]), **args)
    base_ids = _token_ids(base.generate([prompt] * len(samples), samples, use_tqdm=False))
    modes = [Counter(ids[i] for ids in base_ids).most_common(1)[0][0] for i in range(4)]
    llm = LLM(str(tiny_model_dirs["llama"]), speculative_config=NGRAM, **args)
    llm.llm_engine.engine_core.executor.worker.runner.proposer = _ModeProposer(
        len(prompt), modes, 3)
    spec_ids = _token_ids(llm.generate([prompt] * len(samples), samples, use_tqdm=False))
    stats = _spec_stats(llm)
    assert stats.num_accepted_tokens > 300
    assert stats.num_draft_tokens - stats.num_accepted_tokens > 300     # many rejections too
    for position in (1, 2, 3):
        counts = [Counter(ids[position] for ids in outputs) for outputs in (base_ids, spec_ids)]
        stat, df = _two_sample_chi_square(*counts)
        assert df >= 2
        assert stat < _chi_square_critical(df), (position, stat, df, counts)
