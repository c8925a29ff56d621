"""LoRA engine arguments (vLLM's names) and LoRARequest: accepted values, and every bad one a
ClientError naming the field."""

from __future__ import annotations

import pytest

from pagellm import ClientError, LoRARequest, NotSupportedError
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


def test_fully_sharded_loras_is_not_built():
    with pytest.raises(NotSupportedError, match="fully_sharded_loras"):
        create_engine_config(enable_lora=True, fully_sharded_loras=True)


@pytest.mark.parametrize("lora_int_id", [0, -1, "1", 1.0])
def test_lora_int_id_must_be_a_positive_integer(lora_int_id):
    with pytest.raises(ClientError, match="lora_int_id"):
        LoRARequest("a", lora_int_id, "/p")
