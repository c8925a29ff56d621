"""``Worker.determine_num_blocks`` on CPU: the KV block count is the byte budget over the
bytes one block takes for the model's shapes, swap blocks likewise from ``swap_space``, and a
budget that cannot hold one ``max_model_len`` request is a ClientError naming the fix."""

from __future__ import annotations

import pytest
import torch

from pagellm.engine.llm_engine import resolve_config
from pagellm.errors import ClientError
from pagellm.platforms import current_platform
from pagellm.worker.worker import GiB, Worker

# The tiny llama: 2 layers, 2 KV heads of head_dim 64 / 4 = 16, float32, blocks of 16 tokens.
BYTES_PER_BLOCK = 2 * 2 * 16 * 2 * 16 * 4


def make_worker(model_dir, **engine_args) -> Worker:
    config, hf_config = resolve_config(model=str(model_dir), dtype="float32", device="cpu",
                                       block_size=16, **engine_args)
    return Worker(config, current_platform("cpu"), hf_config, torch.float32)


def test_blocks_from_the_byte_budget_and_model_shapes(tiny_model_dirs):
    worker = make_worker(tiny_model_dirs["llama"], kv_cache_memory_bytes=100 * BYTES_PER_BLOCK + 5,
                         max_model_len=512, preemption_mode="swap", swap_space=0.001)
    assert worker.spec.bytes_per_block == BYTES_PER_BLOCK
    assert worker.determine_num_blocks() == (100, int(0.001 * GiB) // BYTES_PER_BLOCK)


def test_a_budget_of_exactly_max_model_len_fits(tiny_model_dirs):
    worker = make_worker(tiny_model_dirs["llama"], kv_cache_memory_bytes=32 * BYTES_PER_BLOCK,
                         max_model_len=512, preemption_mode="swap", swap_space=0)
    assert worker.determine_num_blocks() == (32, 0)


def test_max_model_len_that_does_not_fit_is_a_client_error(tiny_model_dirs):
    worker = make_worker(tiny_model_dirs["llama"], kv_cache_memory_bytes=32 * BYTES_PER_BLOCK - 1,
                         max_model_len=512)
    with pytest.raises(ClientError, match=r"496 tokens .*max_model_len=512") as error:
        worker.determine_num_blocks()
    assert error.value.param == "max_model_len"
