"""Batch invariance: a speculative verify forward over 1 + k positions gives bit-identical
logits (torch.equal) to 1 + k single decode steps: with PAGELLM_BATCH_INVARIANT=1 on a tiny
fp32 model and the default model (dequantized by the tests' PAGELLM_GGUF_DEQUANTIZE=1: dense
fp32 GEMMs), and without it on the default model kept quantized (int4 GEMMs, the default
path); the strict mode's ops agree row for row."""

from __future__ import annotations

import pytest
import torch

from pagellm import LLM, SamplingParams
from pagellm.models.gguf_quantized import GGUF_DEQUANTIZE_ENV
from pagellm.ops.attention import paged_attention_torch
from pagellm.ops.batch_invariant import BATCH_INVARIANT_ENV, invariant_linear

K = 4


def _capture_logits(llm) -> list[torch.Tensor]:
    """Every compute_logits result of the engine's runner, in call order."""
    model = llm.llm_engine.engine_core.executor.worker.runner.model
    calls, compute = [], model.compute_logits

    def capturing(hidden):
        logits = compute(hidden)
        calls.append(logits.clone())
        return logits
    model.compute_logits = capturing
    return calls


def _step_with_drafts(llm, drafts: list[int] | None) -> None:
    """One engine step; the request's drafts set to ``drafts`` (None: none) first."""
    engine = llm.llm_engine
    (request,) = engine.engine_core.scheduler.running or engine.engine_core.scheduler.waiting
    request.spec_token_ids, request.spec_base = list(drafts or []), request.num_tokens
    engine.step()


def _verify_vs_decode(llm, prompt: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(logits of the prefill and K + 1 single decode steps, logits of one verify forward
    of the same K + 1 positions fed the right drafts)."""
    calls = _capture_logits(llm)
    params = SamplingParams(temperature=0.0, max_tokens=K + 2, ignore_eos=True)
    llm.llm_engine.add_request({"prompt_token_ids": prompt}, params, request_id="decode")
    for _ in range(K + 2):
        _step_with_drafts(llm, None)            # prefill, then one token per step
    decode = list(calls)
    assert [c.shape[0] for c in decode] == [1] * (K + 2)
    tokens = [int(c[0].argmax()) for c in decode]
    calls.clear()
    llm.llm_engine.add_request({"prompt_token_ids": prompt}, params, request_id="verify")
    _step_with_drafts(llm, None)                # prefill
    _step_with_drafts(llm, tokens[1:K + 1])     # the right drafts: all K accepted + bonus
    stats = llm.llm_engine.engine_core.scheduler.spec_stats
    assert stats.num_accepted_tokens_per_pos[:K] == [1] * K
    assert calls[1].shape[0] == K + 1
    return decode, calls[1]


@pytest.fixture
def batch_invariant_mode(monkeypatch):
    monkeypatch.setenv(BATCH_INVARIANT_ENV, "1")


def test_tiny_model_verify_equals_decode(batch_invariant_mode, tiny_model_dirs):
    llm = LLM(str(tiny_model_dirs["llama"]), kv_cache_memory_bytes=4 * 2**20, dtype="float32",
              speculative_config={"method": "ngram", "num_speculative_tokens": K})
    decode, verify = _verify_vs_decode(llm, [5, 9, 14, 3, 27, 8, 41, 2, 19, 33, 7])
    for position in range(K + 1):
        assert torch.equal(verify[position], decode[position + 1][0]), position


def test_default_model_verify_equals_decode(batch_invariant_mode, default_model_path):
    llm = LLM(default_model_path, kv_cache_memory_bytes=32 * 2**20, max_model_len=256,
              dtype="float32", speculative_config={"method": "ngram", "num_speculative_tokens": K})
    prompt = llm.get_tokenizer().encode("The capital of France is Paris. The capital of")
    decode, verify = _verify_vs_decode(llm, prompt)
    for position in range(K + 1):
        assert torch.equal(verify[position], decode[position + 1][0]), position


def test_invariant_ops_row_for_row(batch_invariant_mode):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 48, generator=generator)                    # [out, in]
    bias = torch.randn(96, generator=generator)
    x = torch.randn(13, 48, generator=generator)                          # [M, in]
    full = invariant_linear(x, weight, bias)
    for rows in (1, 3, 5, 9):
        assert torch.equal(invariant_linear(x[:rows], weight, bias), full[:rows])
    # attention: two requests' 3 and 2 query tokens vs each token alone as a decode
    block_size, kv_heads, heads, dim = 4, 2, 4, 16
    cache = torch.randn(2, 8, block_size, kv_heads, dim, generator=generator)
    tables = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    query = torch.randn(5, heads, dim, generator=generator)
    seq_lens = [11, 7]
    full = paged_attention_torch(query, cache, tables, torch.tensor(seq_lens), [0, 3, 5],
                                 seq_lens, 0.25)
    for row, (request, length) in enumerate([(0, 9), (0, 10), (0, 11), (1, 6), (1, 7)]):
        alone = paged_attention_torch(query[row:row + 1], cache, tables[request:request + 1],
                                      torch.tensor([length]), [0, 1], [length], 0.25)
        assert torch.equal(alone[0], full[row]), row


def test_default_model_verify_equals_decode_without_the_strict_mode(default_model_path,
                                                                     monkeypatch):
    """Default path: int4 GEMMs are row-invariant and a verify attends token by token (the
    model kept quantized, as outside the tests)."""
    monkeypatch.delenv(BATCH_INVARIANT_ENV, raising=False)
    monkeypatch.setenv(GGUF_DEQUANTIZE_ENV, "0")
    # no prefix caching: the second run's prefill would compute only the prompt's last 5
    # tokens (token by token) where the first ran all 21 in one causal call
    llm = LLM(default_model_path, kv_cache_memory_bytes=32 * 2**20, max_model_len=256,
              dtype="float32", enable_prefix_caching=False,
              speculative_config={"method": "ngram", "num_speculative_tokens": K})
    prompt = llm.get_tokenizer().encode("def add(a, b):\n    return a + b\n\ndef sub(a, b):")
    decode, verify = _verify_vs_decode(llm, prompt)
    for position in range(K + 1):
        assert torch.equal(verify[position], decode[position + 1][0]), position
