"""The engine-argument flags are generated from the config dataclasses, one per field."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from pagellm.config.engine_args import create_engine_config, engine_arg_fields
from pagellm.config.cli_args import (add_engine_args, engine_kwargs_from_args,
                                                        flag_name)


def _parser() -> argparse.ArgumentParser:
    return add_engine_args(argparse.ArgumentParser(exit_on_error=False))


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_engine_field_has_a_flag_with_its_docstring():
    parser = _parser()
    flags = _flags(parser)
    for name in engine_arg_fields():
        assert flag_name(name) in flags
    help_text = parser.format_help()
    assert "--gpu-memory-utilization" in help_text and "Fraction of GPU memory" in help_text
    assert "--enable-chunked-prefill, --no-enable-chunked-prefill" in help_text


@pytest.mark.parametrize("flag", [
    "--gpu-memory-utilization", "--max-model-len", "--max-num-seqs", "--max-num-batched-tokens",
    "--enable-chunked-prefill", "--no-enable-chunked-prefill", "--enable-prefix-caching",
    "--no-enable-prefix-caching", "--swap-space", "--preemption-mode",
    "--scheduler-delay-factor", "--enforce-eager", "--dtype", "--block-size", "--seed",
    "--load-format", "--kv-cache-memory-bytes", "--skip-tokenizer-init",
    "--speculative-config", "--compilation-config"])
def test_vllm_flag_names_exist(flag):
    assert flag in _flags(_parser())


def test_nothing_given_passes_nothing():
    assert engine_kwargs_from_args(_parser().parse_args([])) == {}


def test_only_given_flags_are_passed_with_their_types():
    args = _parser().parse_args([
        "--max-num-seqs", "8", "--gpu-memory-utilization", "0.5", "--dtype", "bfloat16",
        "--no-enable-prefix-caching", "--enforce-eager", "--max-model-len", "4096"])
    assert engine_kwargs_from_args(args) == {
        "max_num_seqs": 8, "gpu_memory_utilization": 0.5, "dtype": "bfloat16",
        "enable_prefix_caching": False, "enforce_eager": True, "max_model_len": 4096}


def test_bool_negation():
    parser = _parser()
    assert engine_kwargs_from_args(parser.parse_args(["--no-enable-chunked-prefill"])) == {
        "enable_chunked_prefill": False}
    assert engine_kwargs_from_args(parser.parse_args(["--enable-chunked-prefill"])) == {
        "enable_chunked_prefill": True}


def test_dict_fields_parse_json():
    args = _parser().parse_args(["--compilation-config", '{"cudagraph_capture_sizes": [1, 2]}'])
    assert engine_kwargs_from_args(args) == {
        "compilation_config": {"cudagraph_capture_sizes": [1, 2]}}


@pytest.mark.parametrize("value", ["{not json", "[1, 2]"])
def test_dict_fields_reject_bad_json(value):
    with pytest.raises(argparse.ArgumentError, match="compilation-config"):
        _parser().parse_args(["--compilation-config", value])


def test_bad_int_is_rejected():
    with pytest.raises(argparse.ArgumentError, match="max-num-seqs"):
        _parser().parse_args(["--max-num-seqs", "many"])


def test_kwargs_build_the_engine_config():
    args = _parser().parse_args(["--block-size", "32", "--preemption-mode", "swap",
                                 "--swap-space", "1.5", "--max-num-batched-tokens", "2048"])
    config = create_engine_config(**engine_kwargs_from_args(args))
    assert (config.cache.block_size, config.cache.swap_space) == (32, 1.5)
    assert config.scheduler.preemption_mode == "swap"
    assert config.scheduler.max_num_batched_tokens == 2048


def test_exclude_leaves_a_name_to_the_caller():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=7)
    add_engine_args(parser, exclude={"seed"})
    assert parser.parse_args([]).seed == 7


@dataclasses.dataclass(frozen=True)
class OddConfig:
    sizes: list[int] | None = None
    """Not a supported type."""


def test_field_without_a_command_line_form_is_a_type_error(monkeypatch):
    import pagellm.config.cli_args as module
    monkeypatch.setattr(module, "CONFIG_CLASSES", (OddConfig,))
    with pytest.raises(TypeError, match="sizes"):
        add_engine_args(argparse.ArgumentParser())


def test_vllm_short_parallel_flags():
    args = _parser().parse_args(["-tp", "2", "--distributed-executor-backend", "mp"])
    assert engine_kwargs_from_args(args) == {"tensor_parallel_size": 2,
                                             "distributed_executor_backend": "mp"}
    config = create_engine_config(**engine_kwargs_from_args(args))
    assert (config.parallel.world_size, config.parallel.executor_backend) == (2, "mp")
    assert create_engine_config(tensor_parallel_size=2).parallel.executor_backend == "mp"
    assert create_engine_config().parallel.executor_backend == "uni"
