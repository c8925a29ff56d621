"""Tensor-parallel layers in 2 spawned gloo processes against the unsharded math: every rank
loads its shard from the full tensors through the weight loaders, runs the layer, and must
get the TP=1 result (column/merged/QKV/row linear, vocab-parallel embedding, LM head, and
quantized GPTQ / fp8 linears: packed, grouped and act-order parameters shard correctly).

One spawn runs every check (starting processes is the slow part); each rank writes its
failures to a file that the test reads back, so a wrong shard fails with the layer's name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.helpers.gloo_ranks import check_close as _check
from tests.helpers.gloo_ranks import run_on_gloo_ranks

WORLD_SIZE = 2
HIDDEN = 16


def _column_and_row_checks(rank: int, failures: list[str]) -> None:
    from pagellm.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear,
                                       ReplicatedLinear, RowParallelLinear)

    g = torch.Generator().manual_seed(0)      # same tensors on both ranks
    x = torch.randn(5, HIDDEN, generator=g)
    w, b = torch.randn(12, HIDDEN, generator=g), torch.randn(12, generator=g)
    for gather in (False, True):
        layer = ColumnParallelLinear(HIDDEN, 12, bias=True, gather_output=gather)
        layer.weight_loader(layer.weight, w)
        layer.weight_loader(layer.bias, b)
        expected = F.linear(x, w, b)
        _check(f"column gather={gather}", layer(x),
               expected if gather else expected[:, rank * 6:(rank + 1) * 6], failures)
    gate, up = torch.randn(8, HIDDEN, generator=g), torch.randn(8, HIDDEN, generator=g)
    merged = MergedColumnParallelLinear(HIDDEN, [8, 8], bias=False)
    merged.weight_loader(merged.weight, gate, 0)
    merged.weight_loader(merged.weight, up, 1)
    out = merged(x)                                           # [5, 4 (gate_r) + 4 (up_r)]
    _check("merged gate", out[:, :4], F.linear(x, gate)[:, rank * 4:(rank + 1) * 4], failures)
    _check("merged up", out[:, 4:], F.linear(x, up)[:, rank * 4:(rank + 1) * 4], failures)
    w_row, b_row = torch.randn(10, 12, generator=g), torch.randn(10, generator=g)
    x_full = torch.randn(5, 12, generator=g)
    for input_is_parallel in (True, False):
        row = RowParallelLinear(12, 10, bias=True, input_is_parallel=input_is_parallel)
        row.weight_loader(row.weight, w_row)
        row.weight_loader(row.bias, b_row)
        x_in = x_full[:, rank * 6:(rank + 1) * 6] if input_is_parallel else x_full
        _check(f"row input_is_parallel={input_is_parallel}", row(x_in),
               F.linear(x_full, w_row, b_row), failures)
    replicated = ReplicatedLinear(HIDDEN, 12, bias=True)
    replicated.weight_loader(replicated.weight, w)
    replicated.weight_loader(replicated.bias, b)
    _check("replicated", replicated(x), F.linear(x, w, b), failures)


def _qkv_checks(rank: int, failures: list[str]) -> None:
    from pagellm.layers.linear import QKVParallelLinear

    head_dim = 4
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, HIDDEN, generator=g)
    for num_kv_heads in (2, 1):         # KV heads split, then one KV head replicated on both
        q = torch.randn(4 * head_dim, HIDDEN, generator=g)
        k = torch.randn(num_kv_heads * head_dim, HIDDEN, generator=g)
        v = torch.randn(num_kv_heads * head_dim, HIDDEN, generator=g)
        layer = QKVParallelLinear(HIDDEN, head_dim, 4, num_kv_heads, bias=False)
        for shard_id, tensor in (("q", q), ("k", k), ("v", v)):
            layer.weight_loader(layer.weight, tensor, shard_id)
        if (layer.num_heads, layer.num_kv_heads) != (2, 1):
            failures.append(f"qkv kv={num_kv_heads}: heads per rank {layer.num_heads}, "
                            f"{layer.num_kv_heads}")
        out_q, out_k, out_v = layer(x).split([8, 4, 4], dim=-1)
        kv_rank = rank if num_kv_heads == 2 else 0
        _check(f"qkv kv={num_kv_heads} q", out_q, F.linear(x, q)[:, rank * 8:(rank + 1) * 8],
               failures)
        _check(f"qkv kv={num_kv_heads} k", out_k,
               F.linear(x, k)[:, kv_rank * 4:(kv_rank + 1) * 4], failures)
        _check(f"qkv kv={num_kv_heads} v", out_v,
               F.linear(x, v)[:, kv_rank * 4:(kv_rank + 1) * 4], failures)


def _vocab_checks(rank: int, failures: list[str]) -> None:
    from pagellm.layers.vocab_parallel_embedding import (LogitsProcessor, ParallelLMHead,
                                                         VocabParallelEmbedding)

    vocab = 11                          # odd: rank 1 holds 5 real rows and 1 padding row
    g = torch.Generator().manual_seed(2)
    table = torch.randn(vocab, HIDDEN, generator=g)
    embedding = VocabParallelEmbedding(vocab, HIDDEN)
    embedding.weight_loader(embedding.weight, table)
    if rank == 1 and not torch.all(embedding.weight[5] == 0):
        failures.append("vocab padding row is not zero")
    ids = torch.tensor([0, 5, 6, 10, 3, 10])
    _check("vocab embedding", embedding(ids), F.embedding(ids, table), failures)
    head = ParallelLMHead(vocab, HIDDEN)
    head.weight_loader(head.weight, table)
    hidden = torch.randn(4, HIDDEN, generator=g)
    logits = LogitsProcessor(vocab)(head, hidden)
    if logits.shape != (4, vocab) or logits.dtype != torch.float32:
        failures.append(f"logits shape {tuple(logits.shape)} dtype {logits.dtype}")
    _check("lm head logits", logits, F.linear(hidden, table), failures)


def _gptq_tensors(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor,
                  g_idx: torch.Tensor, bits: int) -> dict:
    """GPTQ v1 checkpoint tensors of a module from its ints q [K, N], zeros [G, N] (both
    unsigned), scales [G, N] and g_idx [K]."""
    from tests.helpers.quantized_models import _gptq_pack
    return {"qweight": _gptq_pack(q, bits, 0), "qzeros": _gptq_pack((zeros - 1) & 15, bits, 1)
            if bits == 4 else _gptq_pack((zeros - 1) & 255, bits, 1),
            "scales": scales, "g_idx": g_idx.to(torch.int32)}


def _random_int_weight(g, K: int, N: int, bits: int, group: int, act_order: bool):
    """(q [K, N], zeros [G, N], scales [G, N], g_idx [K], dense weight [N, K])."""
    num_groups = K // group
    q = torch.randint(0, 1 << bits, (K, N), generator=g)
    zeros = torch.randint(0, 1 << bits, (num_groups, N), generator=g)
    scales = torch.rand(num_groups, N, generator=g) * 0.1 + 0.01
    g_idx = torch.arange(K) // group
    if act_order:
        g_idx = g_idx[torch.randperm(K, generator=g)]
    dense = ((q - zeros[g_idx]).float() * scales[g_idx]).t()
    return q, zeros, scales, g_idx, dense


def _load_all(layer, tensors_by_shard: dict) -> None:
    params = dict(layer.named_parameters())
    for shard_id, tensors in tensors_by_shard.items():
        for name, tensor in tensors.items():
            if name not in params:          # g_idx without act-order: ignored, as the loader does
                continue
            param = params[name]
            param.weight_loader(param, tensor, *(() if shard_id is None else (shard_id,)))
    layer.quant_method.process_weights_after_loading(layer)


def _quantized_checks(rank: int, failures: list[str]) -> None:
    """GPTQ (act-order: g_idx sharded with the input rows, every group kept; plain: groups
    sharded) and compressed-tensors fp8 per-tensor scales on merged/row-parallel layers."""
    from pagellm.layers.linear import MergedColumnParallelLinear, RowParallelLinear
    from pagellm.layers.quantization.compressed_tensors import CompressedTensorsConfig
    from pagellm.layers.quantization.gptq import GPTQConfig

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 64, generator=g)
    for bits, act_order in ((4, True), (8, False)):
        config = GPTQConfig(bits, 32, desc_act=act_order, sym=False)
        row = RowParallelLinear(64, 32, bias=False, quant_config=config, prefix="m.down_proj")
        q, zeros, scales, g_idx, dense = _random_int_weight(g, 64, 32, bits, 32, act_order)
        _load_all(row, {None: _gptq_tensors(q, zeros, scales, g_idx, bits)})
        _check(f"gptq row bits={bits} act_order={act_order}",
               row(x[:, rank * 32:(rank + 1) * 32]), F.linear(x, dense), failures)
        merged = MergedColumnParallelLinear(64, [32, 32], bias=False, quant_config=config,
                                            prefix="m.gate_up_proj")
        pieces = [_random_int_weight(g, 64, 32, bits, 32, False) for _ in range(2)]
        if act_order:      # the fused pieces share one act-order g_idx
            pieces = [p[:3] + (pieces[0][3],) + (((p[0] - p[1][pieces[0][3]]).float()
                      * p[2][pieces[0][3]]).t(),) for p in pieces]
        _load_all(merged, {i: _gptq_tensors(*p[:4], bits) for i, p in enumerate(pieces)})
        out = merged(x)
        for i, piece in enumerate(pieces):
            _check(f"gptq merged bits={bits} piece {i}", out[:, i * 16:(i + 1) * 16],
                   F.linear(x, piece[4])[:, rank * 16:(rank + 1) * 16], failures)
    fp8 = CompressedTensorsConfig.from_config({"config_groups": {"group_0": {
        "targets": ["Linear"], "format": "float-quantized",
        "weights": {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True},
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "tensor",
                              "dynamic": False, "symmetric": True}}}})
    merged = MergedColumnParallelLinear(64, [32, 32], bias=False, quant_config=fp8,
                                        prefix="m.gate_up_proj")
    weights = [torch.randn(32, 64, generator=g).to(torch.float8_e4m3fn) for _ in range(2)]
    weight_scales, input_scales = [torch.tensor([0.01]), torch.tensor([0.03])], \
        [torch.tensor([0.05]), torch.tensor([0.02])]
    _load_all(merged, {i: {"weight": weights[i], "weight_scale": weight_scales[i],
                           "input_scale": input_scales[i]} for i in range(2)})
    x_q = (x / 0.05).clamp(-448, 448).to(torch.float8_e4m3fn).float() * 0.05   # max input scale
    out = merged(x)
    for i in range(2):
        _check(f"fp8 per-tensor merged piece {i}", out[:, i * 16:(i + 1) * 16],
               F.linear(x_q, weights[i].float() * weight_scales[i])[:, rank * 16:(rank + 1) * 16],
               failures)


def _fused_norm_checks(rank: int, failures: list[str]) -> None:
    """The all-reduce moved into the norm: same result as all-reduce then norm, and a TP=2
    Llama model's layers leave o_proj / down_proj un-reduced for it."""
    from pagellm.distributed import parallel_state as ps
    from pagellm.layers.norm import RMSNorm
    from pagellm.models.llama import LlamaForCausalLM
    from tests.helpers.tiny_models import tiny_config

    g = torch.Generator().manual_seed(7)
    partial = [torch.randn(3, HIDDEN, generator=g) for _ in range(WORLD_SIZE)]
    residual = torch.randn(3, HIDDEN, generator=g)
    norm = RMSNorm(HIDDEN, 1e-6)
    norm.weight.data = torch.randn(HIDDEN, generator=g)
    normed, new_residual = ps.get_tp_group().all_reduce_add_rms_norm(partial[rank].clone(),
                                                                     residual, norm)
    want_normed, want_residual = norm(partial[0] + partial[1], residual)
    _check("all_reduce_add_rms_norm normed", normed, want_normed, failures)
    _check("all_reduce_add_rms_norm residual", new_residual, want_residual, failures)
    model = LlamaForCausalLM(tiny_config("llama"))
    for i, layer in enumerate(model.model.layers):
        if not (layer.reduce_in_norm and not layer.self_attn.o_proj.reduce_results
                and not layer.mlp.down_proj.reduce_results):
            failures.append(f"layer {i} keeps its row-parallel all-reduces at TP=2")


def _all_checks(rank: int, failures: list[str]) -> None:
    from pagellm.distributed import parallel_state as ps

    if (ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()) != \
            (rank, WORLD_SIZE):
        failures.append("wrong tp rank / world size")
    gathered = ps.tensor_model_parallel_all_gather(torch.full((2, 3), float(rank)), dim=0)
    _check("all_gather dim 0", gathered, torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2),
           failures)
    _column_and_row_checks(rank, failures)
    _qkv_checks(rank, failures)
    _vocab_checks(rank, failures)
    _quantized_checks(rank, failures)
    _fused_norm_checks(rank, failures)


def test_parallel_layers_match_unsharded_math_on_two_gloo_ranks(tmp_path):
    run_on_gloo_ranks(_all_checks, tmp_path, WORLD_SIZE)


def test_single_process_collectives_are_identity():
    from pagellm.distributed import parallel_state as ps

    assert not ps.model_parallel_is_initialized()
    x = torch.randn(3, 4)
    assert ps.tensor_model_parallel_all_reduce(x) is x
    assert ps.tensor_model_parallel_all_gather(x) is x
    assert (ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()) == (0, 1)
