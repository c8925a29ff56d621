"""Fully sharded LoRA (``fully_sharded_loras``) in 2 spawned gloo processes: every rank's
slots hold exactly its share of the full A and B (shapes and values: column-parallel A by
rank rows of each piece, row-parallel B by output rows; half the default's memory for those
factors), and the layers' outputs with a batch mixing base tokens and two adapters equal the
unsharded math (base + x A^T B^T) on QKV (KV heads split and replicated), merged gate/up and
row-parallel layers; a max rank not divisible by tp is a ValueError naming max_lora_rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.helpers.gloo_ranks import check_close as _check
from tests.helpers.gloo_ranks import run_on_gloo_ranks

WORLD_SIZE = 2
HIDDEN = 16
MAX_RANK = 4


def _check_shape(name: str, tensor: torch.Tensor, shape: tuple, failures: list[str]) -> None:
    if tuple(tensor.shape) != shape:
        failures.append(f"{name}: shape {tuple(tensor.shape)}, expected {shape}")


def _mapping():
    """6 tokens: base, slot 1, slot 0, slot 1, base, slot 0."""
    from pagellm.lora.ops import make_mapping

    token_slots = torch.tensor([-1, 1, 0, 1, -1, 0])
    return make_mapping(token_slots.numpy(), 2, torch.device("cpu")), token_slots


def _adapters(g: torch.Generator, shapes: dict[str, tuple[int, int]], ranks: tuple[int, int],
              skip: str | None) -> list[dict]:
    """Two adapters (slots 0 and 1) of ranks ``ranks``; module -> (A [r, in], B [out, r]);
    the second lacks module ``skip``."""
    adapters = []
    for slot, r in enumerate(ranks):
        adapters.append({module: (torch.randn(r, n_in, generator=g),
                                  torch.randn(n_out, r, generator=g))
                         for module, (n_out, n_in) in shapes.items()
                         if not (slot == 1 and module == skip)})
    return adapters


def _full_outputs(x, weights: dict, adapters: list[dict], token_slots) -> dict:
    """module -> full [T, out] = x W^T + (adapter tokens) x A^T B^T."""
    outputs = {}
    for module, w in weights.items():
        out = F.linear(x, w)
        for slot, adapter in enumerate(adapters):
            if module in adapter:
                a, b = adapter[module]
                rows = token_slots == slot
                out[rows] += x[rows] @ a.t() @ b.t()
        outputs[module] = out
    return outputs


def _attach(layer, pieces, adapters, fully_sharded: bool):
    from pagellm.lora.layers import LoRAContext, LoRALayer

    context = LoRAContext()
    lora_layer = LoRALayer(layer, pieces, max_loras=2, max_rank=MAX_RANK, dtype=torch.float32,
                           device=torch.device("cpu"), context=context,
                           fully_sharded=fully_sharded)
    for slot, adapter in enumerate(adapters):
        lora_layer.set_slot(slot, adapter)
    context.mapping = _mapping()[0]
    return lora_layer


def _check_column_a(name, lora_layer, adapters, rank, failures) -> None:
    """Fully sharded column A: rank t holds rows [2t, 2t + 2) of each piece's R=4 block."""
    share = MAX_RANK // WORLD_SIZE
    num_pieces = len(lora_layer.pieces)
    for slot, adapter in enumerate(adapters):
        blocks = lora_layer.a_slots[slot].view(num_pieces, share, -1)
        for index, (module, _) in enumerate(lora_layer.pieces):
            padded = torch.zeros(MAX_RANK, HIDDEN)
            if module in adapter:
                padded[:adapter[module][0].shape[0]] = adapter[module][0]
            if not torch.equal(blocks[index], padded[rank * share:(rank + 1) * share]):
                failures.append(f"{name} slot {slot} A of {module}: wrong rank rows")


def _qkv_checks(rank: int, failures: list[str]) -> None:
    from pagellm.layers.linear import QKVParallelLinear

    head_dim = 4
    g = torch.Generator().manual_seed(1)          # same tensors on both ranks
    x = torch.randn(6, HIDDEN, generator=g)
    token_slots = _mapping()[1]
    pieces = [("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")]
    for num_kv_heads in (2, 1):     # KV heads split, then one KV head replicated on both
        sizes = {"q_proj": 4 * head_dim, "k_proj": num_kv_heads * head_dim,
                 "v_proj": num_kv_heads * head_dim}
        weights = {m: torch.randn(n, HIDDEN, generator=g) for m, n in sizes.items()}
        adapters = _adapters(g, {m: (n, HIDDEN) for m, n in sizes.items()}, (4, 2), "k_proj")
        layer = QKVParallelLinear(HIDDEN, head_dim, 4, num_kv_heads, bias=False)
        for (module, shard_id) in pieces:
            layer.weight_loader(layer.weight, weights[module], shard_id)
        lora_layer = _attach(layer, pieces, adapters, fully_sharded=True)
        name = f"qkv kv={num_kv_heads}"
        _check_shape(f"{name} a_slots", lora_layer.a_slots, (2, 3 * MAX_RANK // 2, HIDDEN),
                     failures)
        _check_shape(f"{name} b_slots", lora_layer.b_slots, (2, 8 + 2 * 4, 3 * MAX_RANK),
                     failures)
        _check_column_a(name, lora_layer, adapters, rank, failures)
        kv_rank = rank if num_kv_heads == 2 else 0
        full = _full_outputs(x, weights, adapters, token_slots)
        out_q, out_k, out_v = layer(x).split([8, 4, 4], dim=-1)
        _check(f"{name} q", out_q, full["q_proj"][:, rank * 8:(rank + 1) * 8], failures)
        _check(f"{name} k", out_k, full["k_proj"][:, kv_rank * 4:(kv_rank + 1) * 4], failures)
        _check(f"{name} v", out_v, full["v_proj"][:, kv_rank * 4:(kv_rank + 1) * 4], failures)
        b_q = lora_layer.b_slots[0][:8, :MAX_RANK]          # slot 0's q piece: rank 4 = R
        if not torch.equal(b_q, adapters[0]["q_proj"][1][rank * 8:(rank + 1) * 8]):
            failures.append(f"{name} B of q: not this rank's output rows")


def _merged_checks(rank: int, failures: list[str]) -> None:
    from pagellm.layers.linear import MergedColumnParallelLinear

    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, HIDDEN, generator=g)
    shapes = {"gate_proj": (8, HIDDEN), "up_proj": (8, HIDDEN)}
    weights = {m: torch.randn(*shape, generator=g) for m, shape in shapes.items()}
    adapters = _adapters(g, shapes, (2, 4), "up_proj")
    layer = MergedColumnParallelLinear(HIDDEN, [8, 8], bias=False)
    for index, module in enumerate(shapes):
        layer.weight_loader(layer.weight, weights[module], index)
    default = _attach(MergedColumnParallelLinear(HIDDEN, [8, 8], bias=False),
                      [("gate_proj", 0), ("up_proj", 1)], adapters, fully_sharded=False)
    lora_layer = _attach(layer, [("gate_proj", 0), ("up_proj", 1)], adapters, True)
    _check_shape("merged a_slots", lora_layer.a_slots, (2, 2 * MAX_RANK // 2, HIDDEN), failures)
    _check_shape("merged b_slots", lora_layer.b_slots, (2, 8, 2 * MAX_RANK), failures)
    if lora_layer.a_slots.numel() * 2 != default.a_slots.numel():
        failures.append("merged: fully sharded A is not half the default's")
    if not torch.equal(lora_layer.b_slots, default.b_slots):
        failures.append("merged: B differs from the default sharding (output rows)")
    _check_column_a("merged", lora_layer, adapters, rank, failures)
    full = _full_outputs(x, weights, adapters, _mapping()[1])
    out = layer(x)                                             # [6, 4 (gate_r) + 4 (up_r)]
    _check("merged gate", out[:, :4], full["gate_proj"][:, rank * 4:(rank + 1) * 4], failures)
    _check("merged up", out[:, 4:], full["up_proj"][:, rank * 4:(rank + 1) * 4], failures)


def _row_checks(rank: int, failures: list[str]) -> None:
    from pagellm.layers.linear import RowParallelLinear

    g = torch.Generator().manual_seed(3)
    x_full = torch.randn(6, 12, generator=g)
    weights = {"o_proj": torch.randn(10, 12, generator=g)}
    bias = torch.randn(10, generator=g)
    adapters = _adapters(g, {"o_proj": (10, 12)}, (3, 4), None)
    layers = {}
    for fully_sharded in (False, True):
        layer = RowParallelLinear(12, 10, bias=True)
        layer.weight_loader(layer.weight, weights["o_proj"])
        layer.weight_loader(layer.bias, bias)
        layers[fully_sharded] = (layer, _attach(layer, [("o_proj", None)], adapters,
                                                fully_sharded))
    layer, lora_layer = layers[True]
    _check_shape("row a_slots", lora_layer.a_slots, (2, MAX_RANK, 6), failures)
    _check_shape("row b_slots", lora_layer.b_slots, (2, 5, MAX_RANK), failures)
    _check_shape("row default b_slots", layers[False][1].b_slots, (2, 10, MAX_RANK), failures)
    for slot, (a, b) in enumerate(adapter["o_proj"] for adapter in adapters):
        r = a.shape[0]
        if not (torch.equal(lora_layer.a_slots[slot][:r], a[:, rank * 6:(rank + 1) * 6])
                and torch.equal(lora_layer.b_slots[slot][:, :r], b[rank * 5:(rank + 1) * 5])
                and not lora_layer.a_slots[slot][r:].any()
                and not lora_layer.b_slots[slot][:, r:].any()):
            failures.append(f"row slot {slot}: A columns / B rows are not this rank's")
    expected = _full_outputs(x_full, weights, adapters, _mapping()[1])["o_proj"] + bias
    x_local = x_full[:, rank * 6:(rank + 1) * 6]
    _check("row fully sharded", layer(x_local), expected, failures)
    _check("row default", layers[False][0](x_local), expected, failures)


def _rank_not_divisible(failures: list[str]) -> None:
    from pagellm.layers.linear import ColumnParallelLinear
    from pagellm.lora.layers import LoRAContext, LoRALayer

    try:
        LoRALayer(ColumnParallelLinear(HIDDEN, 8, bias=False), [("q_proj", None)], 1, 1,
                  torch.float32, torch.device("cpu"), LoRAContext(), fully_sharded=True)
        failures.append("max rank 1 at tp=2 did not raise")
    except ValueError as error:
        if "max_lora_rank 1 is not divisible by tensor_parallel_size 2" not in str(error):
            failures.append(f"wrong error: {error}")


def _all_checks(rank: int, failures: list[str]) -> None:
    _qkv_checks(rank, failures)
    _merged_checks(rank, failures)
    _row_checks(rank, failures)
    _rank_not_divisible(failures)


def test_fully_sharded_lora_slots_and_outputs_on_two_gloo_ranks(tmp_path):
    run_on_gloo_ranks(_all_checks, tmp_path, WORLD_SIZE)
