"""Scenario presets (explicit arguments win, sources recorded, lengths capped), the CLI flag,
and the configuration linter's anti-patterns."""

from __future__ import annotations

import argparse

import pytest

from pagellm.config.cli_args import add_engine_args, engine_kwargs_from_args
from pagellm.config.engine_args import (create_engine_config, describe_sources,
                                        engine_arg_fields, finalize_lengths)
from pagellm.config.presets import SCENARIOS, apply_scenario
from pagellm.errors import ClientError
from pagellm.tuning.linter import lint_config


def test_every_preset_value_is_an_engine_argument_with_a_source():
    fields = engine_arg_fields()
    for preset in SCENARIOS.values():
        for value in preset.values:
            assert value.name in fields, value
            assert value.source.startswith("001_a001effc249e1005.txt §4.1")
        for value in preset.not_applied:
            assert value.note, value        # says why it is not applied


def test_guide_numbers_are_kept():
    def values(name):
        return {v.name: v.value for v in SCENARIOS[name].values}
    assert values("online_chat") == {"max_num_seqs": 64, "scheduler_delay_factor": 0.05,
                                     "max_model_len": 4096, "gpu_memory_utilization": 0.90,
                                     "enable_prefix_caching": True}
    assert values("batch_processing")["scheduler_delay_factor"] == 0.5
    assert values("mixed_workload")["swap_space"] == 8.0
    assert values("api_service")["gpu_memory_utilization"] == 0.92


def test_explicit_arguments_win_and_sources_are_recorded():
    config = create_engine_config(scenario="online_chat", max_num_seqs=8)
    assert config.scheduler.max_num_seqs == 8
    assert config.scheduler.scheduler_delay_factor == 0.05
    assert config.value_sources["max_num_seqs"] == "flag"
    assert config.value_sources["scheduler_delay_factor"] == "scenario"
    line = describe_sources(config)
    assert "max_num_seqs=8 (flag)" in line and "scheduler_delay_factor=0.05 (scenario)" in line
    assert "block_size=16 (default)" in line


def test_no_scenario_changes_nothing():
    config = create_engine_config()
    assert config.scheduler.scheduler_delay_factor == 0.0 and config.value_sources == {}
    assert apply_scenario({"max_num_seqs": 3}) == ({"max_num_seqs": 3}, {"max_num_seqs": "flag"})


def test_scenario_max_model_len_is_capped_but_an_explicit_one_is_not():
    capped = finalize_lengths(create_engine_config(scenario="batch_processing"), 2048, "cpu")
    assert capped.model.max_model_len == 2048
    with pytest.raises(ClientError, match="max_position_embeddings"):
        finalize_lengths(create_engine_config(scenario="batch_processing", max_model_len=4096),
                         2048, "cpu")


def test_unknown_scenario_is_a_clear_error():
    with pytest.raises(ClientError, match="scenario must be one of .*online_chat"):
        create_engine_config(scenario="chatbot")


def test_scenario_flag_on_the_command_line():
    parser = add_engine_args(argparse.ArgumentParser())
    args = parser.parse_args(["--scenario", "api_service", "--max-num-seqs", "32"])
    config = create_engine_config(**engine_kwargs_from_args(args))
    assert (config.scenario.scenario, config.scheduler.max_num_seqs,
            config.cache.swap_space) == ("api_service", 32, 4.0)


def _rules(**kwargs) -> dict:
    return {f.rule: f for f in lint_config(create_engine_config(**kwargs))}


def test_lint_anti_patterns_cite_their_seed():
    rules = _rules(scenario="online_chat", max_model_len=32768, max_num_seqs=1024,
                   scheduler_delay_factor=0.5, preemption_mode="swap", swap_space=0,
                   enable_prefix_caching=False)
    assert set(rules) == {"max_model_len_for_chat", "max_num_seqs_too_large",
                          "swap_space_too_small", "batch_settings_on_online_scenario",
                          "chat_without_prefix_caching"}
    assert all(f.severity == "warning" for f in rules.values())
    assert rules["max_num_seqs_too_large"].source == \
        "001_a001effc249e1005.txt §4.2 常见反模式(Anti-Patterns)"


def test_lint_delay_factor_zero_warns_only_when_chosen():
    assert _rules(scheduler_delay_factor=0.0)["delay_factor_zero"].severity == "warning"
    assert _rules()["delay_factor_zero"].severity == "info"
    assert "delay_factor_zero" not in _rules(scenario="api_service")


def test_presets_are_lint_clean():
    for name in SCENARIOS:
        config = finalize_lengths(create_engine_config(scenario=name), 8192, "cuda")
        assert [f.rule for f in lint_config(config) if f.severity == "warning"] == [], name
