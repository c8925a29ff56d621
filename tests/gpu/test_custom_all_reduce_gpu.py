"""pagellm's Triton one-shot all-reduce on two GPUs (NCCL ranks, symmetric memory): plain and
fused with the residual add + RMSNorm, eager and replayed from CUDA graphs over a sequence of
message sizes, bit-equal to NCCL + the separate norm kernel (two ranks add the same two
numbers), and chosen by the start-up measurement for decode-sized messages. Its two other
modes, interleaved with the sums in one graph: the vocabulary-parallel embedding fused with its
all-reduce (equal to the masked lookup + NCCL) and the all-gather of the LM head's logits in
float32 (equal to NCCL's all-gather), taken by the layers' own code paths."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.gloo_ranks import run_on_gloo_ranks

pytestmark = pytest.mark.gpu

HIDDEN = 4096
ROWS = [1, 3, 64, 70, 1, 256, 2, 1]
"""A decode-like sequence: both parities of each program's slot, more rows than programs."""


def _equal(name: str, got: torch.Tensor, want: torch.Tensor, failures: list[str]) -> None:
    if not torch.equal(got, want):
        failures.append(f"{name}: max diff {(got.float() - want.float()).abs().max().item()}")


def _checks(rank: int, failures: list[str]) -> None:
    import torch.distributed as dist

    from pagellm.distributed import parallel_state as ps
    from pagellm.ops.triton.norm import fused_add_rms_norm_triton

    device = torch.device("cuda", rank)
    ps.init_custom_all_reduce(device, torch.bfloat16)
    tp = ps.get_tp_group()
    custom = tp.custom_all_reduce
    if custom is None or custom.fused_max_bytes < HIDDEN * 2:
        failures.append(f"fused path not chosen for a batch-1 message: "
                        f"{None if custom is None else custom.fused_timings}")
        return
    print(f"rank {rank}: plain {custom.plain_paths}; fused/separate µs {custom.fused_timings}")
    shared = torch.Generator(device).manual_seed(1)
    weight = torch.randn(HIDDEN, dtype=torch.bfloat16, device=device, generator=shared)
    own = torch.Generator(device).manual_seed(100 + rank)
    cases = []
    for rows in ROWS:
        x = torch.randn(rows, HIDDEN, dtype=torch.bfloat16, device=device, generator=own)
        residual = torch.randn(rows, HIDDEN, dtype=torch.bfloat16, device=device,
                               generator=shared)
        total = x.clone()
        dist.all_reduce(total, group=tp.device_group)
        cases.append((x, residual, total, fused_add_rms_norm_triton(total, residual, weight, 1e-5)))
    for i, (x, residual, total, (want_out, want_residual)) in enumerate(cases):
        out, new_residual = custom.fused_add_rms_norm(x, residual, weight, 1e-5)
        _equal(f"eager fused {i} out", out, want_out, failures)
        _equal(f"eager fused {i} residual", new_residual, want_residual, failures)
        _equal(f"eager plain {i}", custom.triton_all_reduce(x), total, failures)
    # the whole sequence captured in one graph and replayed twice: device-side epochs only
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        outs = [custom.fused_add_rms_norm(x, r, weight, 1e-5) for x, r, _, _ in cases]
        plains = [custom.triton_all_reduce(x) for x, _, _, _ in cases]
    torch.cuda.current_stream(device).wait_stream(stream)
    for replay in range(2):
        graph.replay()
        torch.cuda.synchronize(device)
        for i, ((out, new_residual), plain, (_, _, total, want)) in enumerate(
                zip(outs, plains, cases)):
            _equal(f"graph {replay} fused {i} out", out, want[0], failures)
            _equal(f"graph {replay} fused {i} residual", new_residual, want[1], failures)
            _equal(f"graph {replay} plain {i}", plain, total, failures)
    if custom.num_fused_calls != 2 * len(ROWS):     # eager + captured; replays not counted
        failures.append(f"fused calls {custom.num_fused_calls}")


def _embedding_and_gather_checks(rank: int, failures: list[str]) -> None:
    import torch.distributed as dist

    from pagellm.distributed import parallel_state as ps
    from pagellm.layers.vocab_parallel_embedding import (LogitsProcessor,
                                                         VocabParallelEmbedding)

    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    ps.init_custom_all_reduce(device, torch.bfloat16)
    tp = ps.get_tp_group()
    custom = tp.custom_all_reduce
    if custom is None or not custom.triton_ok:
        failures.append("no custom all-reduce with the Triton kernel")
        return
    vocab, dim = 1024, HIDDEN                   # 512 rows a rank: logits rows of 512+
    table = torch.randn(vocab, dim, dtype=torch.bfloat16, device=device,
                        generator=torch.Generator(device).manual_seed(7))
    with torch.device(device):
        embedding = VocabParallelEmbedding(vocab, dim, torch.bfloat16)
    embedding.weight_loader(embedding.weight, table)
    processor = LogitsProcessor(vocab)
    id_batches = [torch.tensor(ids, device=device) for ids in
                  ([3], [1023, 0, 512, 511], list(range(0, 1024, 7)) + [998], [501])]
    hidden = [torch.randn(len(ids), dim, dtype=torch.bfloat16, device=device,
                          generator=torch.Generator(device).manual_seed(len(ids)))
              for ids in id_batches]

    def run():
        return ([embedding(ids) for ids in id_batches],
                [processor(embedding, h) for h in hidden],
                [custom.triton_all_reduce(h) for h in hidden])

    looked_up, logits, sums = run()
    for i, ids in enumerate(id_batches):
        _equal(f"embedding {i}", looked_up[i], table[ids], failures)
        full = torch.empty(2, len(ids), 512, dtype=torch.bfloat16, device=device)
        part = embedding.quant_method.apply(embedding, hidden[i])
        dist.all_gather_into_tensor(full, part.contiguous(), group=tp.device_group)
        _equal(f"logits {i}", logits[i], full.movedim(0, 1).flatten(1).float(), failures)
    if custom.num_embedding_calls != 4 or custom.num_gather_calls != 4:
        failures.append(f"paths not taken: {custom.num_embedding_calls} embeddings, "
                        f"{custom.num_gather_calls} gathers")
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        graph_out = run()
    torch.cuda.current_stream(device).wait_stream(stream)
    for replay in range(2):
        graph.replay()
        torch.cuda.synchronize(device)
        for name, got, want in zip(("embedding", "logits", "sum"), graph_out,
                                   (looked_up, logits, sums)):
            for i, (g, w) in enumerate(zip(got, want)):
                _equal(f"graph {replay} {name} {i}", g, w, failures)


def test_embedding_and_logits_gather_one_shot_equal_nccl_on_two_gpus(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    run_on_gloo_ranks(_embedding_and_gather_checks, tmp_path, 2, backend="nccl",
                      timeout_s=300)


def test_triton_one_shot_all_reduce_equals_nccl_and_norm_on_two_gpus(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    run_on_gloo_ranks(_checks, tmp_path, 2, backend="nccl", timeout_s=300)
