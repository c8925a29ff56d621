"""LoRA engine arguments (vLLM's names) and LoRARequest: accepted values, and every bad one a
ClientError naming the field."""

from __future__ import annotations

import argparse

import pytest

from pagellm import ClientError, LoRARequest
from pagellm.config.cli_args import add_engine_args, engine_kwargs_from_args
from pagellm.config.engine_args import create_engine_config


def test_lora_engine_args_are_accepted():
    lora = create_engine_config(enable_lora=True, max_loras=4, max_lora_rank=64,
                                max_cpu_loras=8, lora_dtype="bfloat16").lora
    assert (lora.enable_lora, lora.max_loras, lora.max_lora_rank, lora.cpu_loras,
            lora.lora_dtype) == (True, 4, 64, 8, "bfloat16")
    assert create_engine_config(enable_lora=True, max_loras=3).lora.cpu_loras == 3


@pytest.mark.parametrize("args, field", [
    ({"max_loras": 0}, "max_loras"), ({"max_lora_rank": 12}, "max_lora_rank"),
    ({"max_loras": 4, "max_cpu_loras": 2}, "max_cpu_loras"), ({"lora_dtype": "int8"}, "lora_dtype"),
])
def test_bad_lora_engine_args(args, field):
    with pytest.raises(ClientError, match=field):
        create_engine_config(enable_lora=True, **args)


def test_fully_sharded_loras_is_accepted_when_the_rank_divides():
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    flags = ["--enable-lora", "--fully-sharded-loras", "--max-lora-rank", "8", "-tp", "2"]
    config = create_engine_config(**engine_kwargs_from_args(parser.parse_args(flags)))
    assert config.lora.fully_sharded_loras and config.parallel.tensor_parallel_size == 2
    # without tensor parallelism (or with the default sharding) any rank is fine
    assert create_engine_config(enable_lora=True, fully_sharded_loras=True,
                                max_lora_rank=1).lora.max_lora_rank == 1
    assert create_engine_config(enable_lora=True, max_lora_rank=1,
                                tensor_parallel_size=2).lora.max_lora_rank == 1


@pytest.mark.parametrize("rank, tp", [(1, 2), (16, 3)])
def test_fully_sharded_loras_needs_rank_divisible_by_tp(rank, tp):
    with pytest.raises(ClientError, match="max_lora_rank=.*tensor_parallel_size=.*not "
                                          "divisible; raise max_lora_rank") as info:
        create_engine_config(enable_lora=True, fully_sharded_loras=True, max_lora_rank=rank,
                             tensor_parallel_size=tp)
    assert info.value.param == "max_lora_rank"


@pytest.mark.parametrize("lora_int_id", [0, -1, "1", 1.0])
def test_lora_int_id_must_be_a_positive_integer(lora_int_id):
    with pytest.raises(ClientError, match="lora_int_id"):
        LoRARequest("a", lora_int_id, "/p")
