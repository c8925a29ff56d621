"""The per-platform default step budget (SchedulerConfig.max_num_batched_tokens)."""

from __future__ import annotations

import pytest

from pagellm.config.engine_args import create_engine_config, finalize_lengths
from pagellm.errors import ClientError


@pytest.mark.parametrize("device_type, chunked, expected", [
    ("cpu", True, 256), ("cuda", True, 8192),
    ("cpu", False, 16384), ("cuda", False, 16384)])     # unchunked: a whole prompt fits
def test_default_budget_per_platform(device_type, chunked, expected):
    config = create_engine_config(enable_chunked_prefill=chunked)
    final = finalize_lengths(config, 16384, device_type)
    assert final.scheduler.max_num_batched_tokens == expected
    assert final.model.max_model_len == 16384


def test_budget_below_max_model_len_needs_chunked_prefill():
    chunked = finalize_lengths(create_engine_config(max_num_batched_tokens=256), 4096, "cpu")
    assert chunked.scheduler.max_num_batched_tokens == 256      # prompts run in chunks
    with pytest.raises(ClientError, match="with chunked prefill off"):
        finalize_lengths(create_engine_config(max_num_batched_tokens=256,
                                              enable_chunked_prefill=False), 4096, "cpu")


def test_explicit_budget_wins_on_cpu():
    config = create_engine_config(max_num_batched_tokens=1024)
    assert finalize_lengths(config, 2048, "cpu").scheduler.max_num_batched_tokens == 1024
