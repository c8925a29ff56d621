"""fp8 KV cache (``kv_cache_dtype="fp8" | "fp8_e4m3" | "fp8_e5m2"``) on the torch path: the
write stores K / k_scale saturated in fp8, the readers dequantize exactly like attention over
the dequantized cache, swap copies keep the bytes, the block count follows the element size,
and checkpoint scales reach the attention layers."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from pagellm.config.cache import CacheConfig, kv_cache_torch_dtype
from pagellm.errors import ClientError
from pagellm.layers.attention import TorchAttentionBackend
from pagellm.models.hf_config import load_hf_config
from pagellm.models.loader import load_model
from pagellm.ops.attention import (dequantize_kv_cache, gather_context, paged_attention_torch,
                                   quantize_fp8, write_kv_cache)
from pagellm.platforms import current_platform
from pagellm.worker.kv_cache import KVCache, KVCacheSpec
from tests.helpers.paged import build_attn_metadata, random_block_tables
from tests.unit.test_ops_attention import dense_causal_reference
from tests.unit.worker.test_worker_kv_sizing import BYTES_PER_BLOCK, make_worker

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
# Relative spacing of the fp8 grid: 3 mantissa bits (e4m3), 2 (e5m2); rounding is half that.
RELATIVE_STEP = {torch.float8_e4m3fn: 2 ** -3, torch.float8_e5m2: 2 ** -2}
HEADS, KV_HEADS, HEAD_DIM = 6, 2, 16


def test_config_accepts_vllm_names_and_maps_fp8_to_e4m3():
    for name, dtype in [("fp8", torch.float8_e4m3fn), ("fp8_e4m3", torch.float8_e4m3fn),
                        ("fp8_e5m2", torch.float8_e5m2), ("auto", torch.bfloat16)]:
        assert CacheConfig(kv_cache_dtype=name).kv_cache_dtype == name
        assert kv_cache_torch_dtype(name, torch.bfloat16) == dtype
    with pytest.raises(ClientError, match="kv_cache_dtype") as error:
        CacheConfig(kv_cache_dtype="int8")
    assert error.value.param == "kv_cache_dtype"


@pytest.mark.parametrize("dtype", FP8)
def test_write_stores_scaled_saturated_fp8_at_the_slots(dtype):
    gen = torch.Generator().manual_seed(0)
    cache = torch.zeros(2, 5, 4, KV_HEADS, HEAD_DIM).to(dtype)
    key = torch.randn(7, KV_HEADS, HEAD_DIM, generator=gen) * 3
    value = torch.randn(7, KV_HEADS, HEAD_DIM, generator=gen)
    key[0, 0, 0] = 1e9                                   # beyond any fp8 range: saturates
    slots = torch.tensor([19, 0, 3, 4, 11, 12, 7])
    write_kv_cache(key, value, cache, slots, k_scale=0.5, v_scale=0.25)
    stored_k = cache[0].view(-1, KV_HEADS, HEAD_DIM)[slots]        # [7, KV_HEADS, HEAD_DIM]
    stored_v = cache[1].view(-1, KV_HEADS, HEAD_DIM)[slots]
    assert torch.equal(stored_k.view(torch.uint8), quantize_fp8(key, 0.5, dtype).view(torch.uint8))
    assert stored_k[0, 0, 0].float() == torch.finfo(dtype).max
    step = RELATIVE_STEP[dtype]
    dequantized = stored_k.float() * 0.5
    normal = key.abs() > 0.1                             # clear of the subnormal range
    normal[0, 0, 0] = False
    assert ((dequantized - key).abs() <= key.abs() * step / 2)[normal].all()
    assert (((stored_v.float() * 0.25 - value).abs()) <= value.abs() * step / 2 + 1e-3).all()
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[slots] = False
    assert not cache[0].view(-1, KV_HEADS * HEAD_DIM)[untouched].float().any()


@pytest.mark.parametrize("dtype", FP8)
@pytest.mark.parametrize("query_lens,seq_lens", [([1, 1, 1], [3, 17, 40]),           # decode
                                                 ([5, 1, 9, 2], [5, 30, 20, 2])])   # mixed
def test_reads_equal_attention_over_the_dequantized_cache(dtype, query_lens, seq_lens):
    """The fp8 readers (decode SDPA and per-request prefill) fold the scales correctly: same
    output as the float32 path over ``dequantize_kv_cache``, and close to exact attention."""
    gen = torch.Generator().manual_seed(1)
    block_size, num_blocks = 4, 40
    tables = random_block_tables(seq_lens, block_size, num_blocks, gen)
    meta = build_attn_metadata(seq_lens, seq_lens, tables, block_size)
    full_k = torch.randn(sum(seq_lens), KV_HEADS, HEAD_DIM, generator=gen) * 2
    full_v = torch.randn(sum(seq_lens), KV_HEADS, HEAD_DIM, generator=gen)
    cache = torch.zeros(2, num_blocks, block_size, KV_HEADS, HEAD_DIM).to(dtype)
    write_kv_cache(full_k, full_v, cache, meta.slot_mapping, k_scale=0.3, v_scale=0.2)
    meta = build_attn_metadata(query_lens, seq_lens, tables, block_size)
    query = torch.randn(sum(query_lens), HEADS, HEAD_DIM, generator=gen)
    args = (meta.block_tables, meta.seq_lens, meta.query_start_loc_cpu, meta.seq_lens_cpu,
            HEAD_DIM ** -0.5)
    out = paged_attention_torch(query, cache, *args, k_scale=0.3, v_scale=0.2)
    reference = paged_attention_torch(query, dequantize_kv_cache(cache, torch.float32, 0.3, 0.2),
                                      *args)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    starts = [0]
    for n in seq_lens:
        starts.append(starts[-1] + n)
    for i, (q_len, seq_len) in enumerate(zip(query_lens, seq_lens)):
        rows = slice(meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1])
        exact = dense_causal_reference(query[rows], full_k[starts[i]:starts[i + 1]],
                                       full_v[starts[i]:starts[i + 1]], HEAD_DIM ** -0.5)
        assert (out[rows] - exact).abs().max() < 8 * RELATIVE_STEP[dtype]


def test_backend_uses_the_layer_scales():
    """The backend writes with k_scale/v_scale and reads back with them: K/V of magnitude
    ~1000 fit e4m3 (max 448) after / 10, saturate at scale 1 and underflow at scale 1e7."""
    gen = torch.Generator().manual_seed(2)
    meta = build_attn_metadata([6], [6], [[2, 0]], 4)
    query = torch.randn(6, HEADS, HEAD_DIM, generator=gen)
    key = torch.randn(6, KV_HEADS, HEAD_DIM, generator=gen) * 1000
    value = torch.randn(6, KV_HEADS, HEAD_DIM, generator=gen) * 1000
    outputs = {}
    for k_scale in (1.0, 10.0, 1e7):
        cache = torch.zeros(2, 3, 4, KV_HEADS, HEAD_DIM).to(torch.float8_e4m3fn)
        outputs[k_scale] = TorchAttentionBackend().forward(query, key, value, cache, meta,
                                                           1e-4, k_scale, k_scale)
    exact = dense_causal_reference(query, key, value, 1e-4)
    error = {k: ((out - exact).norm() / exact.norm()).item() for k, out in outputs.items()}
    assert error[10.0] < 0.05 and error[1.0] > 0.2 and error[1e7] > 0.2, error


def test_swap_keeps_fp8_bytes():
    spec = KVCacheSpec(2, 4, 2, 3, torch.float8_e5m2)
    cache = KVCache(spec, 6, 4, torch.device("cpu"), pin_memory=False)
    for layer in cache.layers:
        layer.view(torch.uint8).copy_(torch.randint(0, 120, layer.shape, dtype=torch.uint8))
    original = [layer.view(torch.uint8).clone() for layer in cache.layers]
    cache.swap_out([(2, 0), (5, 3)])
    for layer in cache.layers:
        layer[:, [2, 5]] = torch.zeros((), dtype=torch.float8_e5m2)
    cache.swap_in([(0, 5), (3, 2)])          # back to swapped places
    for layer, before in zip(cache.layers, original):
        assert torch.equal(layer.view(torch.uint8)[:, 5], before[:, 2])
        assert torch.equal(layer.view(torch.uint8)[:, 2], before[:, 5])
        assert torch.equal(layer.view(torch.uint8)[:, [0, 1, 3, 4]], before[:, [0, 1, 3, 4]])


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e5m2"])
def test_fp8_buys_four_times_the_float32_blocks(tiny_model_dirs, kv_cache_dtype, caplog):
    budget = 100 * BYTES_PER_BLOCK + 5
    auto = make_worker(tiny_model_dirs["llama"], kv_cache_memory_bytes=budget, max_model_len=512)
    fp8 = make_worker(tiny_model_dirs["llama"], kv_cache_memory_bytes=budget, max_model_len=512,
                      kv_cache_dtype=kv_cache_dtype)
    assert fp8.spec.bytes_per_block * 4 == auto.spec.bytes_per_block
    with caplog.at_level(logging.INFO, logger="pagellm"):
        assert fp8.determine_num_blocks()[0] == 4 * auto.determine_num_blocks()[0] == 400
    assert "4.0x the blocks" in caplog.text


def test_checkpoint_kv_scales_reach_the_attention_layers(tiny_model_dirs, tmp_path):
    """vLLM's names: ``self_attn.k_scale``/``v_scale``, and compressed-tensors'
    ``k_proj.output_scale``; absent scales stay 1.0."""
    import shutil
    model_dir = tmp_path / "scaled"
    shutil.copytree(tiny_model_dirs["llama"], model_dir)
    weights = load_file(model_dir / "model.safetensors")
    weights["model.layers.0.self_attn.k_scale"] = torch.tensor(0.25)
    weights["model.layers.0.self_attn.v_scale"] = torch.tensor(0.5)
    weights["model.layers.1.self_attn.v_proj.output_scale"] = torch.tensor([3.0])
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    model = load_model(str(model_dir), load_hf_config(str(model_dir)), "auto", torch.float32,
                       current_platform("cpu").device)
    attns = [layer.self_attn.attn for layer in model.model.layers]
    assert [(a.k_scale, a.v_scale) for a in attns] == [(0.25, 0.5), (1.0, 3.0)]


def test_gather_of_an_fp8_cache_keeps_its_dtype():
    cache = torch.zeros(3, 4, KV_HEADS, HEAD_DIM).to(torch.float8_e4m3fn)
    assert gather_context(cache, torch.tensor([2, 0]), 6).dtype == torch.float8_e4m3fn
