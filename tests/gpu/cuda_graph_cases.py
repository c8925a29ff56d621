"""A CUDA-graph runner's padded forward against the model's unpadded eager forward, for any
device: real graphs on CUDA (tests/gpu/test_cuda_graph_mixed_gpu.py), ``eager_replay`` on CPU
under TRITON_INTERPRET=1 (tests/unit/worker/test_cuda_graph_replay.py).

Each case is a batch of requests given by (query_lens, seq_lens): request i's query_lens[i]
new tokens are the last of its seq_lens[i] context tokens, on random disjoint blocks of the
engine's KV cache. The check runs the model eagerly on the batch, restores the cache, runs the
graph runner, and compares the real rows' hidden states and the writes into real cache blocks.
"""

from __future__ import annotations

import torch

from tests.gpu.kernel_cases import relative_error
from tests.helpers.paged import build_attn_metadata, positions_for, random_block_tables

MIXED_CASES = {
    "mixed": ([1, 7, 1, 3], [9, 20, 5, 3]),          # decodes, a chunk on a prefix, a prefill
    "verify": ([4, 4, 4], [12, 30, 7]),              # uniform 1 + k rows (k = 3)
    "no padding rows": ([1, 1, 4, 10], [5, 6, 10, 40]),   # exactly 16 tokens
    "all slots": ([2, 2, 2, 2, 2, 1], [3, 8, 2, 17, 9, 4]),   # max_num_seqs requests
}
DECODE_CASE = ([1, 1, 1], [7, 33, 2])


def random_step(model, kv_cache, query_lens: list[int], seq_lens: list[int], seed: int):
    """(input_ids [N], positions [N], metadata) on the cache's device."""
    gen = torch.Generator().manual_seed(seed)
    tables = random_block_tables(seq_lens, kv_cache.spec.block_size, kv_cache.num_blocks, gen)
    device = kv_cache.device
    metadata = build_attn_metadata(query_lens, seq_lens, tables, kv_cache.spec.block_size, device)
    input_ids = torch.randint(0, model.vocab_size, (metadata.num_tokens,), generator=gen)
    return input_ids.to(device), positions_for(query_lens, seq_lens).to(device), metadata


@torch.inference_mode()
def check_padded_forward(model, kv_cache, graphs, query_lens: list[int], seq_lens: list[int],
                         seed: int = 0) -> tuple[float, float]:
    """Relative errors vs the eager forward of (the runner's rows, what it wrote into the
    cache's real blocks: a padding row writing outside the scratch block shows up here).
    The runner must accept the batch (``graphs.can_run``); AssertionError otherwise."""
    input_ids, positions, metadata = random_step(model, kv_cache, query_lens, seq_lens, seed)
    assert graphs.can_run(metadata), (query_lens, seq_lens)
    torch.manual_seed(seed)
    for layer in kv_cache.layers:                     # earlier context: random, finite
        layer.normal_()
    before = [layer.clone() for layer in kv_cache.layers]
    expected = model(input_ids, positions, kv_cache.layers, metadata).clone()
    after_eager = [layer.clone() for layer in kv_cache.layers]
    for layer, saved in zip(kv_cache.layers, before):
        layer.copy_(saved)
    got = graphs.run(input_ids, positions, metadata).clone()
    real = slice(0, kv_cache.num_blocks)              # the scratch block is the last one
    # what the runner wrote into real blocks vs what the eager forward wrote there
    cache_error = max(relative_error(layer[:, real] - old[:, real], eager[:, real] - old[:, real])
                      for layer, eager, old in zip(kv_cache.layers, after_eager, before))
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return relative_error(got, expected), cache_error


def tokens_with_forced_drafts(llm, prompts: list[list[int]], params,
                              num_drafts: int) -> list[list[int]]:
    """Outputs when every decoding request verifies ``num_drafts`` drafts (token 0) each step:
    once all prompts are in, every step is a uniform verify of 1 + num_drafts rows per
    request. Needs async_scheduling off (drafts are set on the scheduler's requests)."""
    engine = llm.llm_engine
    ids = [engine.add_request({"prompt_token_ids": p}, params) for p in prompts]
    outputs = {}
    while engine.has_unfinished_requests():
        for request in engine.engine_core.scheduler.running:
            if request.num_computed_tokens >= request.num_prompt_tokens:
                request.spec_token_ids, request.spec_base = [0] * num_drafts, request.num_tokens
        for output in engine.step():
            if output.finished:
                outputs[output.request_id] = output.outputs[0].token_ids
    return [outputs[request_id] for request_id in ids]
