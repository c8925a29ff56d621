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


def test_capture_sizes_follow_the_mode_and_the_token_budget():
    from pagellm.config.compilation import parse_compilation_config
    from pagellm.worker.cuda_graph import capture_sizes, default_mixed_capture_sizes

    assert default_mixed_capture_sizes(20) == [2, 4, 8, 16, 20]
    default = default_mixed_capture_sizes(512)
    assert default[:4] == [2, 4, 8, 16] and default[-3:] == [480, 496, 512] and len(default) == 50
    sizes = capture_sizes(parse_compilation_config(None), max_num_seqs=6,
                          max_num_batched_tokens=2048)
    assert sizes.decode == [1, 2, 4, 6] and sizes.mixed == default
    budget = capture_sizes(parse_compilation_config({}), 256, max_num_batched_tokens=100)
    assert budget.mixed[-2:] == [96, 100] and budget.decode[-1] == 256
    given = parse_compilation_config({"cudagraph_capture_sizes": [8, 1, 4, 64]})
    assert capture_sizes(given, 256, 32) == type(sizes)([1, 4, 8, 64], [4, 8])
    capped = parse_compilation_config({"max_cudagraph_capture_size": 16})
    assert capture_sizes(capped, 256, 2048) == type(sizes)([1, 2, 4, 8, 16], [2, 4, 8, 16])
    decode_only = parse_compilation_config({"cudagraph_mode": "FULL_DECODE_ONLY"})
    assert capture_sizes(decode_only, 8, 2048) == type(sizes)([1, 2, 4, 8], [])


def make_mixed_runner() -> CudaGraphRunner:
    return CudaGraphRunner(torch.nn.Identity(), [], [1, 2], max_model_len=10, block_size=4,
                           scratch_block=9, device=torch.device("cpu"), mixed_sizes=[4, 8, 16],
                           max_num_seqs=3)


def test_mixed_graphs_route_batches_by_tokens_and_request_slots():
    runner = make_mixed_runner()
    tables = [[0, 1, 2]] * 4
    assert runner.mixed.num_slots(4) == 4 and runner.mixed.num_slots(16) == 4
    assert runner.route(build_attn_metadata([1, 1], [3, 5], tables[:2], 4)) == ("decode", 2)
    assert runner.route(build_attn_metadata([1] * 3, [3] * 3, tables[:3], 4)) == ("mixed", 4)
    assert runner.route(build_attn_metadata([1, 4], [3, 9], tables[:2], 4)) == ("mixed", 8)
    assert runner.route(build_attn_metadata([4, 4, 4], [4, 9, 7], tables[:3], 4)) == ("mixed", 16)
    assert runner.route(build_attn_metadata([9, 8], [9, 10], tables[:2], 4)) is None  # 17 tokens
    assert runner.route(build_attn_metadata([1] * 4, [3] * 4, tables, 4)) is None      # 4 requests
    assert runner.num_mixed_replays == runner.num_uniform_replays == {4: 0, 8: 0, 16: 0}


def test_mixed_inputs_give_padding_rows_to_one_padding_request_on_the_scratch_block():
    """A step of 5 tokens (requests of 1 and 4) in the 8-token graph: slot 2 owns rows 5..7
    as its whole context on scratch block 9 (slots 9 * 4 + 0..2), slot 3 owns nothing."""
    runner = make_mixed_runner()
    mixed = runner.mixed
    assert mixed.block_tables.shape == (4, 4)            # ceil(16 tokens / 4) > ceil(10 / 4)
    metadata = build_attn_metadata([1, 4], [3, 9], [[5], [6, 7, 8]], 4)
    mixed.load(8, torch.tensor([11, 12, 13, 14, 15]), torch.tensor([2, 5, 6, 7, 8]), metadata)
    assert mixed.query_start_loc.tolist() == [0, 1, 5, 8, 8]
    assert mixed.seq_lens.tolist() == [3, 9, 3, 0]
    assert mixed.slot_mapping[:8].tolist() == [22, 29, 30, 31, 32, 36, 37, 38]
    assert mixed.block_tables[:3, :3].tolist() == [[5, 0, 0], [6, 7, 8], [9, 9, 9]]
    assert mixed.input_ids[:5].tolist() == [11, 12, 13, 14, 15]
    assert mixed.positions[:8].tolist() == [2, 5, 6, 7, 8, 0, 0, 0]
    # the graph bakes in views of these buffers, with the padded sizes as host bounds
    baked = runner._mixed_metadata(8)
    assert (baked.num_reqs, baked.num_tokens, baked.max_query_len) == (4, 8, 8)
    assert baked.query_start_loc.data_ptr() == mixed.query_start_loc.data_ptr()
    # a full step: the padding request owns no rows
    full = build_attn_metadata([4, 4], [4, 9], [[1], [6, 7, 8]], 4)
    mixed.load(8, torch.arange(8), torch.arange(8), full)
    assert mixed.query_start_loc.tolist() == [0, 4, 8, 8, 8]
    assert mixed.seq_lens.tolist() == [4, 9, 0, 0]
