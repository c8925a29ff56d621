"""Speculative decoding pieces without a model: speculative_config (vLLM keys, deprecated
aliases, errors), the n-gram proposer, draft verification, async scheduling kept on, and
the spec-decode metrics and stats line."""

from __future__ import annotations

import numpy as np
import pytest

from pagellm.config.engine_args import create_engine_config, finalize_lengths
from pagellm.config.speculative import SpeculativeConfig
from pagellm.core.stats import EngineStats
from pagellm.errors import ClientError
from pagellm.metrics.prometheus import PrometheusMetrics
from pagellm.metrics.stats_logger import format_stats_line
from pagellm.worker.model_runner import _accept_drafts
from pagellm.worker.ngram_proposer import NgramProposer


def test_vllm_keys_and_defaults():
    config = SpeculativeConfig({"method": "ngram", "num_speculative_tokens": 4,
                                "prompt_lookup_max": 3, "prompt_lookup_min": 2})
    assert config.enabled and config.num_spec_tokens == 4 and config.lookup_range == (2, 3)
    assert SpeculativeConfig({"method": "ngram", "num_speculative_tokens": 2}).lookup_range == (5, 5)
    assert SpeculativeConfig({"method": "ngram", "num_speculative_tokens": 2,
                              "prompt_lookup_max": 4}).lookup_range == (4, 4)
    assert not SpeculativeConfig().enabled and SpeculativeConfig().num_spec_tokens == 0


def test_deprecated_aliases_warn_and_map(caplog):
    config = SpeculativeConfig(speculative_model="[ngram]", num_speculative_tokens=3,
                               ngram_prompt_lookup_max=4, ngram_prompt_lookup_min=1)
    assert (config.method, config.num_spec_tokens, config.lookup_range) == ("ngram", 3, (1, 4))
    assert "speculative_model is deprecated" in caplog.text
    with pytest.raises(ClientError, match="contradicts"):
        SpeculativeConfig({"method": "ngram", "num_speculative_tokens": 2},
                          num_speculative_tokens=3)


def test_model_methods_resolve():
    draft = SpeculativeConfig({"model": "/m/draft", "num_speculative_tokens": 3})
    assert (draft.method, draft.model, draft.num_spec_tokens) == ("draft_model", "/m/draft", 3)
    assert draft.uses_model and draft.num_lookahead_tokens == 3
    for method in ("eagle", "eagle3", "draft_model"):
        config = SpeculativeConfig({"method": method, "model": "/h", "num_speculative_tokens": 2})
        assert (config.method, config.model, config.num_lookahead_tokens) == (method, "/h", 2)
    ngram = SpeculativeConfig({"method": "ngram", "num_speculative_tokens": 2})
    assert not ngram.uses_model and ngram.num_lookahead_tokens == 0 and ngram.model is None


@pytest.mark.parametrize("spec, error, match", [
    ({"model": "org/draft", "num_speculative_tokens": 0}, ClientError, ">= 1 for method \"draft_model\""),
    ({"method": "eagle", "model": "h"}, ClientError, "num_speculative_tokens must be"),
    ({"method": "eagle3", "model": "h", "num_speculative_tokens": -1}, ClientError, ">= 1"),
    ({"method": "eagle", "num_speculative_tokens": 2}, ClientError, "needs \"model\""),
    ({"method": "eagle", "model": "h", "num_speculative_tokens": 2, "prompt_lookup_max": 2},
     ClientError, "only apply to method"),
    ({"method": "ngram", "model": "m", "num_speculative_tokens": 2}, ClientError, "takes no"),
    ({"method": "ngram"}, ClientError, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4,
      "prompt_lookup_max": 2}, ClientError, "exceeds"),
    ({"method": "ngram", "num_speculative_tokens": 2, "lookahead": 1}, ClientError, "unknown"),
    ({"method": "medusa", "num_speculative_tokens": 2}, ClientError, "method"),
    ("ngram", ClientError, "speculative_config must be a dict"),
])
def test_errors(spec, error, match):
    with pytest.raises(error, match=match):
        SpeculativeConfig(spec)


def test_async_scheduling_kept_and_pp_refused():
    spec = {"method": "ngram", "num_speculative_tokens": 2}
    config = finalize_lengths(create_engine_config(speculative_config=spec), 1024, "cuda")
    assert config.scheduler.async_scheduling is True
    cpu = finalize_lengths(create_engine_config(speculative_config=spec), 1024, "cpu")
    assert cpu.scheduler.async_scheduling is False
    forced = finalize_lengths(create_engine_config(speculative_config=spec,
                                                   async_scheduling=True), 1024, "cpu")
    assert forced.scheduler.async_scheduling is True
    with pytest.raises(ClientError, match="pipeline_parallel_size"):
        finalize_lengths(create_engine_config(speculative_config=spec,
                                              pipeline_parallel_size=2), 1024, "cuda")


def test_ngram_proposer_last_match_longest_n_first():
    proposer = NgramProposer(num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=3)
    tokens = np.array([[1, 2, 3, 4, 1, 2, 3, 0, 0],     # [1 2 3] seen at 0 -> 4 1 2
                       [5, 6, 7, 8, 9, 1, 2, 3, 4],     # no earlier occurrence of any suffix
                       [9, 7, 1, 2, 8, 1, 2, 0, 0],     # n=3 misses, n=2 [1 2] at 2 -> 8 1 2
                       [1, 2, 1, 2, 1, 2, 0, 0, 0]])    # last earlier [2 1 2] at 1 -> 1 2 (end)
    assert proposer.propose(tokens, np.array([7, 9, 7, 6])) == [[4, 1, 2], [], [8, 1, 2], [1, 2]]
    short = NgramProposer(2, 2, 2)
    assert short.propose(tokens[:1], np.array([2])) == [[]]     # context too short


def test_accept_drafts():
    # request 1: drafts [5 6 7], target says 5 6 9 (+bonus 1): 2 accepted then 9
    # request 2: no drafts; request 3: drafts [4], target 4 then bonus 8
    sampled = [5, 6, 9, 1, 3, 4, 8]
    new, kept = _accept_drafts(sampled, [[5, 6, 7], [], [4]])
    assert new == [[5, 6, 9], [3], [4, 8]] and kept == [0, 1, 2, 4, 5, 6]


def test_metrics_and_stats_line():
    metrics = PrometheusMetrics("m")
    before = metrics.snapshot()
    metrics.update_from_stats(EngineStats(1, 0, 0.1, 0, 0, 0, 5, spec_decode_num_drafts=4,
                                          spec_decode_num_draft_tokens=12,
                                          spec_decode_num_accepted_tokens=6,
                                          spec_decode_num_accepted_tokens_per_pos=[3, 2, 1]))
    text = metrics.render().decode()
    assert 'vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 4.0' in text
    assert 'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 12.0' in text
    assert 'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 6.0' in text
    assert ('vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",'
            'position="1"} 2.0') in text
    line = format_stats_line(before, metrics.snapshot(), 1.0)
    assert line.endswith("Spec decode draft acceptance rate: 50.0%, Mean acceptance length: 2.50")
    assert "Spec decode" not in format_stats_line(before, before, 1.0)
