"""Speculative decoding with a draft model and with EAGLE / EAGLE-3 heads, end to end on tiny
random models (CPU): greedy output token-for-token equal to no speculation with prefix caching
and forced preemption; every proposal equal to a cache-less reference run of the proposer (so
its own KV cache is right after rejections, prefix hits, recompute and abort); a draft model
that is the target accepts every draft; seeded sampling reproducible and distributed as
without speculation (chi-square); bad configs refused before anything loads; the
vllm:spec_decode_* metrics count."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from pagellm import LLM, SamplingParams
from pagellm.errors import ClientError
from pagellm.metrics.prometheus import PrometheusMetrics
from tests.helpers.eagle_heads import make_eagle_head_dir
from tests.helpers.paged import build_attn_metadata
from tests.helpers.tiny_gguf import write_tiny_gguf
from tests.helpers.tiny_models import make_tiny_model_dir, tiny_config
from tests.integration.test_spec_decode import _chi_square_critical, _two_sample_chi_square

NUM_LAYERS = 7          # EAGLE-3's default auxiliary layers (2, 3, 4) are then distinct
BLOCK_SIZE = 4
SHARED = [5, 6, 7, 8] * 6
PROMPTS = [SHARED + list(range(10, 10 + n)) for n in (1, 4, 9)] + [[9, 8] * 10, [40] * 3]
GREEDY = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)


def _block_bytes(num_layers: int) -> int:
    """KV bytes of one block of ``num_layers`` tiny-llama layers (K,V x 2 heads x 16, fp32)."""
    return num_layers * 2 * BLOCK_SIZE * 2 * 16 * 4


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("spec_models")
    target = make_tiny_model_dir(root, "llama", num_hidden_layers=NUM_LAYERS)
    config = tiny_config("llama", num_hidden_layers=NUM_LAYERS)
    qwen2 = make_tiny_model_dir(root, "qwen2", seed=3)
    return {"target": str(target),
            "gguf_draft": str(write_tiny_gguf(qwen2, tiny_config("qwen2"), "qwen2",
                                              root / "draft-qwen2.gguf")),
            "eagle": str(make_eagle_head_dir(root, "eagle", config)),
            "eagle3": str(make_eagle_head_dir(root, "eagle3", config, draft_vocab_size=200)),
            "root": root}


@pytest.fixture(scope="module")
def expected(models) -> dict:
    """Greedy outputs of the target without speculation, by prompt index."""
    llm = LLM(models["target"], kv_cache_memory_bytes=8 * 2**20, dtype="float32",
              block_size=BLOCK_SIZE)
    return {str(i): list(out.outputs[0].token_ids)
            for i, out in enumerate(llm.generate(PROMPTS, GREEDY, use_tqdm=False))}


def _tiny_llm(models, method: str, path: str, proposer_layers: int, **kwargs) -> LLM:
    """20 blocks (target + proposer K/V) for ~60 of demand: preemption is certain."""
    args = dict(kv_cache_memory_bytes=20 * _block_bytes(NUM_LAYERS + proposer_layers),
                dtype="float32", block_size=BLOCK_SIZE, max_model_len=64,
                speculative_config={"method": method, "model": path, "num_speculative_tokens": 3})
    return LLM(models["target"], **{**args, **kwargs})


def _cacheless(num_tokens: int):
    """Metadata of one request's whole context run without a KV cache."""
    return build_attn_metadata([num_tokens], [num_tokens], [[0] * -(-num_tokens // BLOCK_SIZE)],
                               BLOCK_SIZE)


def _draft_reference(draft):
    """Greedy continuation of the draft model, recomputed from scratch without a cache."""
    def reference(tokens: list[int], num_drafts: int) -> list[int]:
        sequence = list(tokens)
        for _ in range(num_drafts):
            n = len(sequence)
            hidden = draft(torch.tensor(sequence), torch.arange(n), [], _cacheless(n))
            sequence.append(int(draft.compute_logits(hidden[-1:]).argmax(-1)))
        return sequence[len(tokens):]
    return reference


def _eagle_reference(target, head):
    """The head's drafts recomputed from scratch without caches: target hidden states of the
    whole context, head position p fed token p + 1, then its own hidden states."""
    num_layers = len(head.attention_layers())

    def reference(tokens: list[int], num_drafts: int) -> list[int]:
        n = len(tokens)
        hidden = target(torch.tensor(tokens), torch.arange(n), [], _cacheless(n))
        aux = [state[:n - 1] for state in getattr(target.model, "aux_hidden_states", [])]
        head_in = head.combine_hidden_states(hidden[:n - 1], aux)          # [n - 1, hidden]
        inputs, drafts = list(tokens[1:]), []
        for _ in range(num_drafts):
            m = len(inputs)
            logits_hidden, next_hidden = head(torch.tensor(inputs), torch.arange(m), head_in,
                                              [None] * num_layers, _cacheless(m))
            drafts.append(int(head.greedy_token_ids(logits_hidden[-1:])[0]))
            inputs.append(drafts[-1])
            head_in = torch.cat([head_in, next_hidden[-1:]])
        return drafts
    return reference


def _run_checking_drafts(llm: LLM, reference, abort_at_step: int = 4) -> tuple[dict, int]:
    """Step the engine over PROMPTS (aborting the last one at ``abort_at_step``); after every
    step each running request's drafts must equal ``reference``. Returns (finished outputs by
    request id, number of draft lists checked)."""
    engine = llm.llm_engine
    scheduler = engine.engine_core.scheduler
    ids = [engine.add_request(prompt, GREEDY, request_id=str(i)) for i, prompt in enumerate(PROMPTS)]
    finished, checked, step = {}, 0, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = list(out.outputs[0].token_ids)
        step += 1
        if step == abort_at_step:
            engine.abort_request(ids[-1])
        with torch.inference_mode():
            for request in scheduler.running:
                if request.spec_token_ids:
                    assert request.spec_token_ids == reference(
                        request.all_token_ids, len(request.spec_token_ids)), request.request_id
                    checked += 1
    return finished, checked


@pytest.mark.parametrize("method", ["draft_model", "eagle", "eagle3"])
def test_greedy_identical_and_drafts_match_reference(method, models, expected):
    """Prefix caching on, preemption forced, one request aborted mid-way."""
    path = models["gguf_draft"] if method == "draft_model" else models[method]
    llm = _tiny_llm(models, method, path, 2 if method == "draft_model" else 1)
    runner = llm.llm_engine.engine_core.executor.worker.runner
    proposer = runner.proposer
    reference = (_draft_reference(proposer.model) if method == "draft_model"
                 else _eagle_reference(runner.model, proposer.model))
    finished, checked = _run_checking_drafts(llm, reference)
    assert finished == {key: value for key, value in expected.items() if key != "4"}
    assert checked > 20 and proposer.num_forwards > checked
    stats = llm.llm_engine.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert stats.spec_decode_num_draft_tokens > 0 and stats.kv_cache_usage == 0.0


def test_draft_model_that_is_the_target_accepts_every_draft(models, expected):
    llm = _tiny_llm(models, "draft_model", models["target"], NUM_LAYERS)
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert {str(i): list(o.outputs[0].token_ids) for i, o in enumerate(outputs)} == expected
    stats = llm.llm_engine.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert stats.spec_decode_num_draft_tokens > 50
    assert stats.spec_decode_num_accepted_tokens == stats.spec_decode_num_draft_tokens  # rate 1.0
    assert stats.spec_decode_num_accepted_tokens_per_pos[0] == stats.spec_decode_num_drafts
    metrics = PrometheusMetrics("m")
    metrics.update_from_stats(stats)
    text = metrics.render().decode()
    accepted = float(stats.spec_decode_num_accepted_tokens)
    assert f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="m"}} {accepted}' in text
    assert f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="m"}} {accepted}' in text


def test_draft_model_sampling_seeded_and_distribution_unchanged(models):
    """The draft model is the target: its argmax drafts are accepted often and rejected often
    under sampling. Seeded runs repeat exactly; output positions 1..3 over 600 seeded samples
    are distributed as without speculation (chi-square, p > 0.001)."""
    prompt = [5, 6, 7, 8] * 4 + [5, 6]
    args = dict(kv_cache_memory_bytes=16 * 2**20, dtype="float32", max_num_seqs=256)
    samples = [SamplingParams(temperature=0.35, max_tokens=4, seed=i, ignore_eos=True)
               for i in range(600)]
    base = LLM(models["target"], **args)
    base_ids = [list(o.outputs[0].token_ids)
                for o in base.generate([prompt] * len(samples), samples, use_tqdm=False)]
    llm = LLM(models["target"], speculative_config={"model": models["target"],
                                                    "num_speculative_tokens": 3}, **args)
    spec_ids = [list(o.outputs[0].token_ids)
                for o in llm.generate([prompt] * len(samples), samples, use_tqdm=False)]
    again = [list(o.outputs[0].token_ids)
             for o in llm.generate([prompt] * 40, samples[:40], use_tqdm=False)]
    assert again == spec_ids[:40]
    stats = llm.llm_engine.stats()
    rejected = stats.spec_decode_num_draft_tokens - stats.spec_decode_num_accepted_tokens
    assert stats.spec_decode_num_accepted_tokens > 500 and rejected > 300
    for position in (1, 2, 3):
        counts = [Counter(ids[position] for ids in outputs) for outputs in (base_ids, spec_ids)]
        stat, df = _two_sample_chi_square(*counts)
        assert df >= 2
        assert stat < _chi_square_critical(df), (position, stat, df, counts)


def test_bad_proposer_configs_refused_before_load(models):
    root = models["root"]
    empty_head = root / "empty-head"
    empty_head.mkdir()
    (empty_head / "config.json").write_text((root / "eagle-head" / "config.json").read_text())
    other_vocab = make_tiny_model_dir(root / "other", "llama", vocab_size=300)
    cases = [({"method": "eagle", "model": str(empty_head)}, "has no weights"),
             ({"method": "eagle3", "model": str(root / "absent")}, "does not exist"),
             ({"method": "eagle", "model": models["target"] + "/missing-dir"}, "does not exist"),
             ({"model": str(other_vocab)}, "vocab_size 300"),
             ({"method": "eagle", "model": models["gguf_draft"]}, "no config.json")]
    for spec, match in cases:
        with pytest.raises(ClientError, match=match):
            LLM(models["target"], dtype="float32", kv_cache_memory_bytes=2**20,
                speculative_config={**spec, "num_speculative_tokens": 2})


def test_eagle3_auxiliary_layers_default_and_override():
    from types import SimpleNamespace

    from pagellm.models.spec_models import eagle3_aux_layer_ids

    assert eagle3_aux_layer_ids(SimpleNamespace(), 32) == (2, 16, 29)     # vLLM's default
    override = SimpleNamespace(eagle_config={"eagle_aux_hidden_state_layer_ids": [1, 5, 9]})
    assert eagle3_aux_layer_ids(override, 32) == (1, 5, 9)
