"""The host-side logic of ``CudaGraphRunner`` (capture and replay need CUDA and are tested in
tests/gpu/test_engine_gpu.py): capture sizes, padding, which batches may replay, the static
buffers' padding state, and replay counters that start at zero for every captured size."""

from __future__ import annotations

import torch

from pagellm.worker.cuda_graph import CudaGraphRunner, default_capture_sizes
from tests.helpers.paged import build_attn_metadata


def make_runner(sizes=(4, 1, 2, 4)) -> CudaGraphRunner:
    return CudaGraphRunner(torch.nn.Identity(), [], list(sizes), max_model_len=10, block_size=4,
                           scratch_block=9, device=torch.device("cpu"))


def test_default_capture_sizes():
    assert default_capture_sizes(1) == [1]
    assert default_capture_sizes(6) == [1, 2, 4, 6]
    assert default_capture_sizes(8) == [1, 2, 4, 8]
    assert default_capture_sizes(30) == [1, 2, 4, 8, 16, 24, 30]
    assert default_capture_sizes(1000)[-3:] == [496, 504, 512]


def test_padded_size_is_the_smallest_captured_size_that_fits():
    runner = make_runner()
    assert runner.capture_sizes == [1, 2, 4] and runner.max_batch == 4
    assert [runner.padded_size(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, None]


def test_only_all_decode_batches_up_to_the_largest_size_replay():
    runner = make_runner()
    tables = [[0, 1, 2]] * 5
    decode = build_attn_metadata([1] * 4, [3, 5, 7, 9], tables[:4], 4)
    assert runner.can_run(decode)
    assert not runner.can_run(build_attn_metadata([1] * 5, [3] * 5, tables, 4))     # too many
    assert not runner.can_run(build_attn_metadata([1, 2], [3, 5], tables[:2], 4))  # a prefill


def test_padding_rows_start_on_the_scratch_block_and_counters_at_zero():
    runner = make_runner()
    assert runner.num_replays == {1: 0, 2: 0, 4: 0}
    assert runner.slot_mapping.tolist() == [36] * 4               # scratch block 9 x 4 tokens
    assert runner.block_tables.tolist() == [[9, 9, 9]] * 4        # ceil(10 / 4) blocks a row
    assert runner.seq_lens.tolist() == [1] * 4
    assert runner.query_start_loc.tolist() == [0, 1, 2, 3, 4]


def test_lora_graphs_need_the_triton_kernels():
    """Graph capture with LoRA bakes in the Triton kernels reading ``token_slots``; without
    them (CPU here, or PAGELLM_TRITON_KERNELS=0) the runner refuses with the fix named."""
    from pagellm.lora.layers import LoRAContext

    try:
        CudaGraphRunner(torch.nn.Identity(), [], [1, 2], max_model_len=10, block_size=4,
                        scratch_block=9, device=torch.device("cpu"), lora_context=LoRAContext())
    except ValueError as error:
        assert "enforce_eager=True" in str(error)
    else:
        raise AssertionError("a LoRA graph runner without Triton kernels was built")
    runner = make_runner()
    assert runner.num_lora_replays == {1: 0, 2: 0, 4: 0}
    assert runner.token_slots.tolist() == [-1] * 4                 # every row starts as base
